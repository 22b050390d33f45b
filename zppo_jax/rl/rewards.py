r"""Verifiable rewards: the final `\boxed{}` answer of a response against the gold answer.

A response is graded in steps, cheapest first: its answer region (after the last `</think>`;
a response still inside `<think>` gets nothing), the final answer there (the last complete
`\boxed{}`, or the last run of boxes written as one list: `\boxed{1}, \boxed{2}`), then
`answers.match` under the run's conventions. Those steps take time linear in the response.
The pairs that only sympy can decide go to worker processes, each pair killed after
`timeout_s` (it is then graded wrong), so no input stalls a run. Equal pairs are graded
once per batch, and symbolic verdicts are remembered across batches.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import threading
import time
from typing import Sequence

import numpy as np

from zppo_jax import timeboxed
from zppo_jax.data.boxed import boxes
from zppo_jax.data.tokenizer import THINK_CLOSE, THINK_OPEN
from zppo_jax.rl import answers


# What may stand between two boxes of one list answer: `\boxed{1}, \boxed{2} and \boxed{3}`.
_BETWEEN_BOXES = re.compile(r"(?:\s|[,;$]|\\[,;:! ]|\\q?quad|and|or|\\text\{\s*(?:and|or)?\s*\})*")
MAX_BETWEEN_BOXES = 40


def final_answer(region: str, join_boxes: bool = True) -> str | None:
  r"""The answer a response gives: its last box, or with `join_boxes` the last run of boxes
  separated only by commas, "and"/"or" and spacing, joined as a list (`1, 2`); repeated
  identical boxes count once. None when there is no complete box."""
  found = boxes(region)
  if not found:
    return None
  run = [found[-1]]
  for prev in reversed(found[:-1] if join_boxes else []):
    between = region[prev[1]:run[0][0]]
    if len(between) > MAX_BETWEEN_BOXES or not _BETWEEN_BOXES.fullmatch(between):
      break
    run.insert(0, prev)
  contents = [c for _, _, c in run]
  return contents[0] if len(set(contents)) == 1 else ", ".join(contents)


def answer_region(response: str) -> str | None:
  """The part of a response that may hold the final answer: after the last `</think>`.
  None when a `<think>` is never closed (the response ran out inside its reasoning)."""
  if THINK_CLOSE in response:
    return response.rsplit(THINK_CLOSE, 1)[1]
  if THINK_OPEN in response:
    return None
  return response


def well_formed(response: str) -> bool:
  r"""The format the prompts ask for: reasoning closed by `</think>`, then a `\boxed{}`."""
  region = answer_region(response)
  return THINK_CLOSE in response and region is not None and bool(boxes(region))


# ------------------------------------------------------------------------------ grading

@dataclasses.dataclass(frozen=True)
class Grader:
  """Grades batches of (response, gold answer); `from_config(config.reward)` in runs."""
  conventions: answers.Conventions = answers.Conventions()
  join_boxes: bool = True     # a run of boxes `\boxed{1}, \boxed{2}` is one list answer
  format_weight: float = 0.0  # reward bonus for a well-formed response
  timeout_s: float = 2.0      # symbolic check of one pair, then graded wrong
  workers: int = 0            # symbolic-check processes; 0 = half the CPUs (1 to 8)

  @classmethod
  def from_config(cls, cfg) -> "Grader":
    """From the `config.reward` slice; a bad field is named."""
    cfg = dict(cfg.items())
    fields = {f.name for f in dataclasses.fields(answers.Conventions)}
    known = fields | {f.name for f in dataclasses.fields(cls)} - {"conventions"}
    unknown = sorted(set(cfg) - known)
    if unknown:
      raise ValueError(f"config.reward: unknown field(s) {unknown}; fields are {sorted(known)}")
    checks = {"timeout_s": cfg.get("timeout_s", 1) > 0, "workers": cfg.get("workers", 0) >= 0,
              "rel_tol": 0 <= cfg.get("rel_tol", 0) < 1}
    for name, ok in checks.items():
      if not ok:
        raise ValueError(f"config.reward.{name}: out of range, got {cfg[name]!r}")
    return cls(answers.Conventions(**{k: v for k, v in cfg.items() if k in fields}),
               **{k: v for k, v in cfg.items() if k not in fields})

  def correct(self, responses: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """[n] bool: whether each response's final answer equals its gold answer."""
    if len(responses) != len(golds):
      raise ValueError(f"{len(responses)} responses for {len(golds)} gold answers")
    start = time.perf_counter()
    preds = [None if (r := answer_region(text)) is None else final_answer(r, self.join_boxes)
             for text in responses]
    pairs = sorted({(p, g) for p, g in zip(preds, golds) if p is not None})
    verdicts = {pair: answers.match(*pair, self.conventions) for pair in pairs}
    undecided = [pair for pair, v in verdicts.items() if v is None]
    verdicts.update(zip(undecided, self._symbolic(undecided)))
    TALLY.add(seconds=time.perf_counter() - start, symbolic=len(undecided))
    return np.asarray([p is not None and bool(verdicts[p, g]) for p, g in zip(preds, golds)])

  def rewards(self, responses: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """[n] float32: 1 for a correct answer, else 0; plus `format_weight` if well formed."""
    score = self.correct(responses, golds).astype(np.float32)
    if self.format_weight:
      score += self.format_weight * np.asarray([well_formed(r) for r in responses], np.float32)
    return score

  def _symbolic(self, pairs: list[tuple[str, str]]) -> list[bool]:
    """Symbolic verdicts of (pred, gold) pairs: remembered ones, the rest in the worker
    pool, each cut off after `timeout_s` (a pair cut off, or whose worker died, is wrong)."""
    known = {p: _VERDICTS.get((self.conventions, *p)) for p in pairs}
    todo = [p for p, v in known.items() if v is None]
    if todo:
      workers = self.workers or max(1, min(8, (os.cpu_count() or 2) // 2))
      conventions = dataclasses.asdict(self.conventions)
      pool = timeboxed.pool("zppo_jax.rl.answers:symbolic_match", workers, ["math_verify"])
      killed = pool.killed
      verdicts = pool.map([(pred, gold, conventions) for pred, gold in todo], self.timeout_s,
                          default=False)
      TALLY.add(timeouts=pool.killed - killed)
      for pair, verdict in zip(todo, verdicts):
        known[pair] = bool(verdict)
        _VERDICTS.put((self.conventions, *pair), known[pair])
    return [known[p] for p in pairs]


class _Memo:
  """A bounded, thread-safe map that forgets its oldest entries."""

  def __init__(self, capacity: int):
    self.capacity, self._data, self._lock = capacity, collections.OrderedDict(), threading.Lock()

  def get(self, key):
    with self._lock:
      return self._data.get(key)

  def put(self, key, value):
    with self._lock:
      self._data[key] = value
      while len(self._data) > self.capacity:
        self._data.popitem(last=False)


_VERDICTS = _Memo(1 << 16)


class Tally:
  """Running totals of this process's grading, for per-step metrics (`snapshot()` deltas):
  seconds spent, answer pairs sent to the symbolic check, and checks cut off at their
  deadline."""

  def __init__(self):
    self._lock, self._totals = threading.Lock(), dict.fromkeys(
        ("seconds", "symbolic", "timeouts"), 0)

  def add(self, **amounts):
    with self._lock:
      for k, v in amounts.items():
        self._totals[k] += v

  def snapshot(self) -> dict:
    with self._lock:
      return dict(self._totals)


TALLY = Tally()


def is_correct(response: str, gold: str, grader: Grader = Grader()) -> bool:
  r"""Whether the response's final `\boxed{}` answer (after `</think>`) equals `gold`."""
  return bool(grader.correct([response], [gold])[0])


def reward(response: str, gold: str, grader: Grader = Grader()) -> float:
  """1 for a correct answer, else 0; plus `grader.format_weight` when well formed."""
  return float(grader.rewards([response], [gold])[0])
