"""Where a run's numbers go: `metrics.jsonl` (one object per step), TensorBoard events and
record files such as `samples.jsonl` (rollouts to read) and `reformulations.jsonl` (each
BCQ/NCQ group's accuracy next to its original question's), all in the workdir, written by
process 0 only.

The files are only ever appended to. A run that starts (or resumes from step k) first
appends a marker line `{"step": k, "resume": true}`; `read` drops the lines of steps >= k
written before a marker (steps that are being redone), so the file reads as if the run had
never stopped. A torn last line (a crash mid-write) is closed with a newline and skipped.
"""

from __future__ import annotations

import json
import math
import os
import re

from absl import logging

RESUME = "resume"


def read(path: str) -> list[dict]:
  """The lines of a metrics or record file as the run stands: lines superseded by a resume
  marker dropped, torn or unparseable lines skipped (with a warning), markers left out."""
  if not os.path.exists(path):
    return []
  out, bad = [], 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        step = row["step"]
      except (ValueError, KeyError, TypeError):
        bad += 1
        continue
      if row.get(RESUME):
        out = [r for r in out if r["step"] < step]
      else:
        out.append(row)
  if bad:
    logging.warning("%s: skipped %d unreadable line(s) (a torn write?)", path, bad)
  return out


def _append_marker(path: str, step: int):
  """Closes a torn last line, then appends the resume marker for `step`."""
  with open(path, "a+b") as f:
    f.seek(0, os.SEEK_END)
    torn = False
    if f.tell():
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b"\n"
    f.write((b"\n" if torn else b"") + json.dumps({"step": step, RESUME: True}).encode() + b"\n")


RECORDS = ("samples", "reformulations")


def tensorboard_tag(name: str) -> str:
  """A metric name as a tag TensorBoard accepts ([A-Za-z0-9_./-]): `eval/x/avg@4` ->
  `eval/x/avg_at_4` (metrics.jsonl keeps the name)."""
  return re.sub(r"[^A-Za-z0-9_./-]", "_", name.replace("@", "_at_"))


class MetricWriter:

  def __init__(self, workdir: str, *, tensorboard: bool = True, start_step: int = 0):
    import jax  # here: readers of the files (zppo_jax.compare) need no JAX
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    for path in [self.metrics_path] + [self._path(name) for name in RECORDS]:
      _append_marker(path, start_step)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step)

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
          self.tb.add_scalar(tensorboard_tag(name), value, step)

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
