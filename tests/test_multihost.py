"""Several processes, one run: jax.distributed on CPU (gloo collectives, a localhost
coordinator) running configs/tiny.py, against one process with the same global batch."""

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from zppo_jax import metric_writer, multihost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
OVERRIDES = [f"--config.total_steps={STEPS}", "--config.checkpoint.every=1",
             "--config.log.progress=False", "--config.log.tensorboard=False",
             "--config.rollout.max_new_tokens=64", "--config.teacher.max_new_tokens=64",
             "--config.questions_per_step=2", "--config.buffer.replay_per_step=2",
             "--config.mesh.shape=(4,1,1)", "--config.eval.every=2", "--config.eval.k=2",
             "--config.eval.benchmarks=('heldout=synthetic:heldout;limit=4',)"]
# Global devices are 4 either way, so both runs use the same (4, 1, 1) mesh and programs.
DEVICES = 4
# Rollouts, rewards, buffer events and every count must be identical; float train metrics
# may differ in the last bits (gloo's cross-process sums are ordered differently from
# XLA's in-process ones), so they are compared to this relative tolerance.
RTOL = 1e-4


# ---------------------------------------------------------------------------- unit checks

def test_cluster_detection_and_flag_errors():
  none = lambda path: False  # noqa: E731
  assert not multihost.cluster_in_env({}, none)
  assert multihost.cluster_in_env({}, lambda path: path == "/dev/accel0")  # a TPU VM
  assert multihost.cluster_in_env({"SLURM_NTASKS": "16", "SLURM_STEP_ID": "0"}, none)
  assert not multihost.cluster_in_env({"SLURM_NTASKS": "16"}, none)  # sbatch, not srun
  assert not multihost.cluster_in_env({"OMPI_COMM_WORLD_SIZE": "1"}, none)
  assert multihost.cluster_in_env({"TPU_WORKER_HOSTNAMES": "a,b"}, none)
  assert multihost.initialize("off") is False
  with pytest.raises(ValueError, match="give all of --coordinator_address"):
    multihost.initialize("auto", "localhost:1234", None, None)
  with pytest.raises(ValueError, match=r"--process_id=2 is not in \[0, --num_processes=2\)"):
    multihost.initialize("on", "localhost:1234", 2, 2)
  with pytest.raises(ValueError, match="--distributed=off contradicts"):
    multihost.initialize("off", "localhost:1234", 2, 0)
  with pytest.raises(ValueError, match="--distributed must be one of"):
    multihost.initialize("yes")


def test_host_slices_partition_the_items():
  for n in range(0, 23):
    for count in (1, 2, 3, 8):
      parts = [list(range(n))[multihost.host_slice(n, i, count)] for i in range(count)]
      assert sum(parts, []) == list(range(n))
      assert max(map(len, parts)) - min(map(len, parts)) <= 1
  assert multihost.map_shared(lambda xs: [x * x for x in xs], [1, 2, 3]) == [1, 4, 9]
  assert multihost.allgather({"a": [1]}) == [{"a": [1]}]


def test_sigterm_is_a_request_to_stop_after_the_step():
  before = signal.getsignal(signal.SIGTERM)
  sync = multihost.StepSync()
  try:
    assert sync.check(0, "x") is False
    os.kill(os.getpid(), signal.SIGTERM)  # handled: the process lives on
    assert sync.check(1, "x") is True
  finally:
    sync.close()
  assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------- whole runs

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, processes: int) -> list[tuple[subprocess.Popen, str]]:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES // processes}"}
  # --verbosity=0: the INFO lines, which hold each host's state fingerprint, are read below
  cmd = [sys.executable, "-m", "zppo_jax.train", "--config",
         os.path.join(REPO, "configs", "tiny.py"), "--workdir", workdir, "--verbosity=0",
         *OVERRIDES]
  port = _free_port()
  started = []
  for i in range(processes):
    flags = ([] if processes == 1 else
             [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
              f"--process_id={i}"])
    log = os.path.join(workdir, f"log.{len(os.listdir(workdir))}.{i}.txt")
    with open(log, "w") as f:
      started.append((subprocess.Popen(cmd + flags, stdout=f, stderr=subprocess.STDOUT,
                                       env=env, cwd=REPO), log))
  return started


def _wait(started, timeout=600) -> list[int]:
  try:
    return [p.wait(timeout=timeout) for p, _ in started]
  finally:
    for p, _ in started:
      p.kill()


def _when(predicate, started, timeout=600):
  """Polls until `predicate()` (failing if a process ends first)."""
  deadline = time.time() + timeout
  while not predicate():
    for p, log in started:
      if p.poll() is not None:
        _wait(started)
        raise AssertionError(f"{log} ended with {p.returncode}:\n{_read(log)[-3000:]}")
    assert time.time() < deadline, "timed out"
    time.sleep(0.2)


def _read(path) -> str:
  with open(path) as f:
    return f.read()


def _checkpoints(workdir) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _fingerprints(started) -> list[str]:
  out = []
  for _, log in started:
    found = re.findall(rf"host state fingerprint (\w+) at step {STEPS}", _read(log))
    assert found, log
    out.append(found[-1])
  return out


def _metrics(workdir):
  return [{k: v for k, v in line.items()
           if not k.startswith(("time/", "throughput", "grade/", "compile/"))}
          for line in metric_writer.read(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("one"))
  started = _start(workdir, 1)
  assert _wait(started) == [0]
  return workdir, _fingerprints(started)[0]


def test_two_processes_match_one_and_survive_sigterm_and_kill(one_process, tmp_path):
  """2 processes x 2 devices = the one-process run on 4 devices, through a SIGTERM to one
  process (both stop after the same step, checkpointed, exit 0) and a SIGKILL of both
  (mid-step: the run resumes from the last checkpoint)."""
  want_dir, want_print = one_process
  workdir = str(tmp_path)

  # Checkpoint k holds the state after k steps; metrics lines are numbered from step 0, and the
  # held-out evaluation after the last step has a line of its own (step STEPS).
  run = _start(workdir, 2)                        # 1. SIGTERM to process 1 only
  _when(lambda: 1 in _checkpoints(workdir), run)
  run[1][0].send_signal(signal.SIGTERM)
  assert _wait(run) == [0, 0]
  stopped = _checkpoints(workdir)[-1]
  assert 1 < stopped < STEPS  # both stopped early, after the same step, checkpointed
  assert [m["step"] for m in _metrics(workdir)] == list(range(stopped))

  run = _start(workdir, 2)                        # 2. resume, then SIGKILL both in the step
  _when(lambda: "resumed from" in _read(run[0][1]), run)
  for p, _ in run:
    p.send_signal(signal.SIGKILL)
  _wait(run)
  assert _checkpoints(workdir)[-1] == stopped

  run = _start(workdir, 2)                        # 3. resume to the end
  assert _wait(run) == [0, 0]
  prints = _fingerprints(run)
  assert prints[0] == prints[1] == want_print     # the same replay buffer on every host

  got, want = _metrics(workdir), _metrics(want_dir)
  assert [m["step"] for m in got] == list(range(STEPS + 1))
  assert all("eval/heldout/avg@2" in got[step] for step in (0, 2, STEPS))
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for key in w:
      # float sums over the sampler's or the train step's numbers round differently when
      # split over other devices; everything else (rewards, buffer, counts) is exact
      if key.startswith(("train/", "rollout/")) and w[key] is not None:
        assert math.isclose(g[key], w[key], rel_tol=RTOL, abs_tol=1e-6), (g["step"], key)
      else:
        assert g[key] == w[key], (g["step"], key)
  got_params = load_file(os.path.join(workdir, "export", "model.safetensors"))
  want_params = load_file(os.path.join(want_dir, "export", "model.safetensors"))
  assert got_params.keys() == want_params.keys()
  for key in want_params:
    np.testing.assert_allclose(got_params[key], want_params[key], rtol=RTOL, atol=1e-5)
