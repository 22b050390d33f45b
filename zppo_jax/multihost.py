"""Several hosts, one run: JAX's multi-controller runtime (one process per host).

Every process runs the same loop on the same *global* view of each step: the questions of
all hosts, every rollout (the sampler's outputs are replicated) and every reward, so the
host-side state (the replay buffer, BCQ/NCQ prompts, the train batch) is computed
identically everywhere and never has to be sent around. What is split is the work that
scales with the data: each host reads its shard of the question batch and grades its share
of the rollouts, and the pieces are gathered (`allgather`, `map_shared`). Once a step, the
hosts compare a fingerprint of that state and agree on whether to stop (`StepSync`), so a
divergence is an error at the step it happens and a preemption signal on any host stops
all of them at the same step.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

DISTRIBUTED = ("auto", "on", "off")


def cluster_in_env(environ=os.environ, exists=os.path.exists) -> bool:
  """Whether this process runs where JAX finds its peers on its own: a Cloud TPU VM (one
  process per worker), SLURM `srun` or Open MPI `mpirun` with several tasks, a GKE JobSet."""
  if exists("/dev/accel0") or exists("/dev/vfio/0"):  # TPU chips: a Cloud TPU VM
    return True
  if environ.get("TPU_WORKER_HOSTNAMES") or environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  if int(environ.get("OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return True
  # SLURM: several tasks, and this is one of them (inside `srun`, not the sbatch script)
  return int(environ.get("SLURM_NTASKS") or 1) > 1 and "SLURM_STEP_ID" in environ


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               cpu_collectives: str = "gloo") -> bool:
  """Starts `jax.distributed` when this run spans several processes; True if it did.

  "on" always starts it, "off" never; "auto" starts it when the explicit flags are given or
  `cluster_in_env()`. Unset flags are left to JAX's own cluster detection (on Cloud TPU VMs
  and under SLURM nothing needs to be given). Must run before anything touches a device.
  """
  if mode not in DISTRIBUTED:
    raise ValueError(f"--distributed must be one of {DISTRIBUTED}, got {mode!r}")
  explicit = (coordinator_address, num_processes, process_id)
  if mode == "off":
    if any(x is not None for x in explicit):
      raise ValueError("--distributed=off contradicts --coordinator_address/--num_processes/"
                       "--process_id")
    return False
  if mode == "auto" and all(x is None for x in explicit) and not cluster_in_env():
    return False
  if any(x is not None for x in explicit) and any(x is None for x in explicit):
    raise ValueError("give all of --coordinator_address, --num_processes and --process_id, "
                     "or none of them (automatic on Cloud TPU VMs and SLURM)")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
  # CPU devices of several processes talk through gloo (the tests' two-process runs); TPU
  # and GPU backends bring their own collectives and ignore this.
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def allgather(obj: Any) -> list:
  """Every process's `obj` (anything JSON can hold), in process order, on every process."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int64))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [json.loads(row[:int(n)].tobytes()) for row, n in zip(gathered, sizes.ravel())]


def host_slice(n: int, index: int | None = None, count: int | None = None) -> slice:
  """This host's contiguous share of n items (the first n % count hosts take one more)."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  per, extra = divmod(n, count)
  start = index * per + min(index, extra)
  return slice(start, start + per + (index < extra))


def map_shared(fn: Callable[[Sequence], Sequence], items: Sequence) -> list:
  """fn(items) with each host computing fn of its `host_slice` (one result per item,
  JSON-able), the whole list on every host: the hosts split work whose inputs they all hold."""
  mine = list(fn(items[host_slice(len(items))]))
  return [y for part in allgather(mine) for y in part]


def fingerprint(obj: Any) -> str:
  """A short digest of a JSON-able object, to compare host-side state across hosts."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class StepSync:
  """Preemption and consistency, checked once a step on every host.

  SIGTERM (Cloud TPU maintenance, spot preemption, `scancel`) only sets a flag; at the next
  `check` the hosts exchange their flags and fingerprints, so if any host was signalled all
  of them stop after the same step (and checkpoint it), and hosts whose host-side state
  differs raise instead of training on different batches.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self.requested = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():  # where Python takes signals
      self._previous = {s: signal.signal(s, self._on_signal) for s in signals}

  def _on_signal(self, signum, frame):
    del frame
    logging.warning("received %s: stopping after this step with a checkpoint",
                    signal.Signals(signum).name)
    self.requested = True

  def check(self, step: int, state_fingerprint: str) -> bool:
    """True when the run should stop after `step` (some host was signalled)."""
    views = allgather([bool(self.requested), state_fingerprint])
    prints = {p for _, p in views}
    if len(prints) > 1:
      raise RuntimeError(f"host-side state diverged across processes after step {step}: "
                         f"fingerprints {[p for _, p in views]} (process order)")
    return any(flag for flag, _ in views)

  def close(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
