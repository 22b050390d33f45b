"""Where a run's numbers go: `metrics.jsonl` (one object per step), TensorBoard events and
record files such as `samples.jsonl` (rollouts to read) and `reformulations.jsonl` (each
BCQ/NCQ group's accuracy next to its original question's), all in the workdir, written by
process 0 only.

On resume from step k, lines of steps after k (written after the last checkpoint) are
dropped first, so the file reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import os

import jax


def _rewind(path: str, step: int):
  """Drops lines of `path` whose "step" is greater than `step` (atomic replace)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(lines)
  os.replace(tmp, path)


RECORDS = ("samples", "reformulations")


class MetricWriter:

  def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    for path in [self.metrics_path] + [self._path(name) for name in RECORDS]:
      _rewind(path, resume_step)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, metrics: dict):
    """One line of metrics.jsonl and the scalars to TensorBoard (non-finite values as null
    in JSON, so the file stays valid JSON lines)."""
    if not self.active:
      return
    clean = {k: (float(v) if math.isfinite(float(v)) else None) if not isinstance(v, str) else v
             for k, v in metrics.items()}
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps({"step": step, **clean}, sort_keys=True) + "\n")
    if self.tb is not None:
      for name, value in clean.items():
        if isinstance(value, float):
          self.tb.add_scalar(name, value, step)

  def _path(self, name: str) -> str:
    return os.path.join(self.workdir, f"{name}.jsonl")

  def records(self, name: str, step: int, rows: list[dict]):
    """Appends rows (dicts) of `step` to `<name>.jsonl`, `name` one of RECORDS."""
    if name not in RECORDS:
      raise ValueError(f"unknown record file {name!r}; one of {RECORDS}")
    if not self.active or not rows:
      return
    with open(self._path(name), "a") as f:
      for row in rows:
        f.write(json.dumps({"step": step, **row}) + "\n")

  def close(self):
    if self.tb is not None:
      self.tb.close()
