"""Calls that cannot outlive their deadline: a pool of worker processes, each call killed
with its worker when it passes `timeout_s` (the worker is replaced).

Workers are plain subprocesses running `python -m zppo_jax.timeboxed module:function`, not
forks: they import only that function's module (never the caller's JAX or its threads), and
a worker's start-up time is never charged to a call. Arguments and results travel as JSON
lines, so a worker reads nothing but data.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

_READY = "ready"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Pool:
  """`workers` processes serving `function` ("module:name"), started on first use; each
  imports the `preload` modules before it takes calls, so imports are not charged to them."""

  def __init__(self, function: str, workers: int, preload: Sequence[str] = (),
               startup_timeout_s: float = 120.0):
    if workers < 1:
      raise ValueError(f"workers must be >= 1, got {workers}")
    self.function, self.workers, self.preload = function, workers, tuple(preload)
    self.startup_timeout_s = startup_timeout_s
    self._procs: list[subprocess.Popen] = []
    self._ready: list[bool] = []
    self.killed = 0  # calls killed at their deadline, in all
    self._lock = threading.Lock()

  def map(self, calls: Sequence[Sequence[Any]], timeout_s: float, default: Any) -> list:
    """[function(*args) for args in calls], run in the workers; a call that passes
    `timeout_s` seconds, raises, or whose worker dies gives `default`."""
    results = [default] * len(calls)
    with self._lock:
      while len(self._procs) < min(self.workers, len(calls)):
        self._procs.append(self._start())
        self._ready.append(False)
      pending = list(range(len(calls)))[::-1]
      busy: dict[int, tuple[int, float]] = {}  # worker slot -> (call index, deadline)
      starting = {i: time.monotonic() + self.startup_timeout_s
                  for i, ready in enumerate(self._ready) if not ready}
      idle = [i for i in range(len(self._procs)) if i not in starting]
      with selectors.DefaultSelector() as sel:
        for i, p in enumerate(self._procs):
          sel.register(p.stdout, selectors.EVENT_READ, i)
        while pending or busy:
          while idle and pending:
            slot, call = idle.pop(), pending.pop()
            try:
              self._procs[slot].stdin.write(
                  json.dumps({"args": list(calls[call]), "timeout_s": timeout_s}) + "\n")
              self._procs[slot].stdin.flush()
              busy[slot] = (call, time.monotonic() + timeout_s)
            except OSError:  # the worker died while idle: replace it, retry the call
              pending.append(call)
              starting[slot] = self._replace(sel, slot)
          if not busy and not starting:
            raise RuntimeError(f"timeboxed: no worker of {self.function} could start")
          deadlines = [d for _, d in busy.values()] + list(starting.values())
          wait = max(0.0, min(deadlines) - time.monotonic())
          for key, _ in sel.select(wait):
            slot = key.data
            line = self._procs[slot].stdout.readline()
            if slot in starting:
              if line.strip() == _READY:
                self._ready[slot] = True
                del starting[slot]
                idle.append(slot)
              else:  # exited before it was ready
                raise RuntimeError(f"timeboxed: a worker of {self.function} failed to start")
              continue
            call, _ = busy.pop(slot)
            try:
              reply = json.loads(line)
              results[call] = reply["result"] if "result" in reply else default
              idle.append(slot)
            except (ValueError, TypeError, KeyError):  # EOF: the worker died mid-call
              starting[slot] = self._replace(sel, slot)
          now = time.monotonic()
          for slot, (call, deadline) in list(busy.items()):
            if now >= deadline:
              del busy[slot]
              self.killed += 1
              starting[slot] = self._replace(sel, slot)
          for slot, deadline in starting.items():
            if now >= deadline:
              raise RuntimeError(f"timeboxed: a worker of {self.function} did not start in "
                                 f"{self.startup_timeout_s} s")
    return results

  def _start(self) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.Popen([sys.executable, "-m", "zppo_jax.timeboxed", self.function,
                             *self.preload],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            bufsize=1, env=env)

  def _replace(self, sel, slot: int) -> float:
    """Kills the worker in `slot` and starts another; returns its start-up deadline."""
    old = self._procs[slot]
    sel.unregister(old.stdout)
    _kill(old)
    self._procs[slot], self._ready[slot] = self._start(), False
    sel.register(self._procs[slot].stdout, selectors.EVENT_READ, slot)
    return time.monotonic() + self.startup_timeout_s

  def close(self):
    with self._lock:
      for p in self._procs:
        _kill(p)
      self._procs, self._ready = [], []


def _kill(p: subprocess.Popen):
  p.kill()
  p.wait()
  for f in (p.stdin, p.stdout):
    try:
      f.close()
    except OSError:
      pass


_POOLS: dict[tuple, Pool] = {}
_POOLS_LOCK = threading.Lock()


def pool(function: str, workers: int, preload: Sequence[str] = ()) -> Pool:
  """The process's shared pool for (function, workers, preload)."""
  key = (function, workers, tuple(preload))
  with _POOLS_LOCK:
    if key not in _POOLS:
      _POOLS[key] = Pool(function, workers, preload)
    return _POOLS[key]


@atexit.register
def _close_all():
  for p in _POOLS.values():
    p.close()


def _serve(function: str, preload: Sequence[str]):
  """A worker's loop: {"args": [...], "timeout_s": t} lines in, {"result": ...} or
  {"error": ...} lines out. Each call also arms SIGALRM (whose default action ends the
  process) a second past its deadline, so a worker whose caller died cannot run on."""
  for module in preload:
    importlib.import_module(module)
  module, name = function.split(":")
  fn = getattr(importlib.import_module(module), name)
  print(_READY, flush=True)
  for line in sys.stdin:
    call = json.loads(line)
    signal.setitimer(signal.ITIMER_REAL, call["timeout_s"] + 1.0)
    try:
      reply = {"result": fn(*call["args"])}
    except Exception as e:  # noqa: BLE001 - the caller gets its default
      reply = {"error": repr(e)[:500]}
    signal.setitimer(signal.ITIMER_REAL, 0)
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
  _serve(sys.argv[1], sys.argv[2:])
