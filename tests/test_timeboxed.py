"""Worker processes whose calls cannot outlive their deadline."""

import json
import signal
import subprocess
import sys
import time

import pytest

from zppo_jax import timeboxed


def test_results_come_back_in_order():
  pool = timeboxed.Pool("math:gcd", workers=2)
  try:
    assert pool.map([(12, 18), (7, 5), (100, 75)], timeout_s=5, default=-1) == [6, 1, 25]
    assert pool.map([], timeout_s=5, default=-1) == []
  finally:
    pool.close()


def test_a_call_past_its_deadline_is_killed_and_its_worker_replaced():
  pool = timeboxed.Pool("time:sleep", workers=1)
  try:
    pool.map([(0,)], timeout_s=5, default="late")  # the worker is up
    start = time.perf_counter()
    assert pool.map([(30,), (0,)], timeout_s=0.5, default="late") == ["late", None]
    assert time.perf_counter() - start < 10  # one deadline and one restart, not 30 s
    assert pool.map([(0,)], timeout_s=5, default="late") == [None]
  finally:
    pool.close()


def test_a_raising_call_or_a_dying_worker_gives_the_default():
  pool = timeboxed.Pool("math:factorial", workers=1)
  try:
    assert pool.map([(-1,), (5,)], timeout_s=5, default=0) == [0, 120]
  finally:
    pool.close()
  pool = timeboxed.Pool("os:_exit", workers=1)
  try:
    assert pool.map([(3,), (4,)], timeout_s=5, default="dead") == ["dead", "dead"]
  finally:
    pool.close()


def test_a_worker_that_cannot_start_is_an_error():
  pool = timeboxed.Pool("no_such_module_here:f", workers=1, startup_timeout_s=30)
  with pytest.raises(RuntimeError, match="failed to start"):
    pool.map([(1,)], timeout_s=1, default=None)
  pool.close()
  with pytest.raises(ValueError, match="workers must be >= 1"):
    timeboxed.Pool("math:gcd", workers=0)


def test_a_worker_whose_caller_is_gone_ends_itself():
  """A worker ends itself a second past the deadline of its call, even if nobody kills it."""
  worker = subprocess.Popen([sys.executable, "-m", "zppo_jax.timeboxed", "time:sleep"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert worker.stdout.readline().strip() == "ready"
  worker.stdin.write(json.dumps({"args": [60], "timeout_s": 0.5}) + "\n")
  worker.stdin.flush()
  assert worker.wait(timeout=20) == -signal.SIGALRM
