"""XLA compilation: the persistent cache (a second run of the same config compiles nothing)
and running counts of compilations, from `jax.monitoring` events, for `compile/*` metrics.
"""

from __future__ import annotations

import os
import threading

import jax
from jax import monitoring

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/zppo_jax/xla (~/.cache/zppo_jax/xla)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "zppo_jax", "xla")


def enable_cache(directory: str) -> str | None:
  """Turns on JAX's persistent compilation cache in `directory` ("default": see
  `default_cache_dir`; "": off) for every program, however quick to compile (unless the
  environment sets those thresholds). A directory set by the environment
  (JAX_COMPILATION_CACHE_DIR) wins over `directory`. Returns the directory used."""
  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory
  if not directory:
    return None
  directory = default_cache_dir() if directory == "default" else os.path.expanduser(directory)
  jax.config.update("jax_compilation_cache_dir", directory)
  for option, env in (("jax_persistent_cache_min_compile_time_secs",
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"),
                      ("jax_persistent_cache_min_entry_size_bytes",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")):
    if env not in os.environ:
      jax.config.update(option, 0)
  return directory


class Counts:
  """Programs of this process so far: those XLA compiled, those the persistent cache held
  (loaded, not compiled), and the seconds of both."""

  def __init__(self):
    self._lock = threading.Lock()
    self.programs, self.seconds, self.cache_hits = 0, 0.0, 0
    self.by_name: dict[str, list] = {}  # jitted function -> [programs, seconds]

  def _on_duration(self, event: str, duration: float, fun_name: str = "?", **_):
    if event == _COMPILE_EVENT:  # fired for cache hits too
      with self._lock:
        self.programs += 1
        self.seconds += duration
        entry = self.by_name.setdefault(fun_name, [0, 0.0])
        entry[0] += 1
        entry[1] += duration

  def _on_event(self, event: str, **_):
    if event == _CACHE_HIT_EVENT:
      with self._lock:
        self.cache_hits += 1

  def metrics(self) -> dict[str, float]:
    with self._lock:
      return {"compile/count": self.programs - self.cache_hits,
              "compile/cache_hits": self.cache_hits, "compile/seconds": self.seconds}


COUNTS = Counts()
monitoring.register_event_duration_secs_listener(COUNTS._on_duration)  # noqa: SLF001
monitoring.register_event_listener(COUNTS._on_event)  # noqa: SLF001
