"""Synthetic verifiable questions: integer arithmetic with a difficulty knob.

Row i is a pure function of (seed, i), so any host can generate any shard. Level k uses
k-digit operands; `+` and `-` at a level are easier than `*`. A spread of levels gives a
small student easy, hard-but-learnable and (for it) unsolvable questions, which is what
the replay buffer needs to show anything. Every row also carries one worked solution in the
Qwen3.5 thinking format, which serves as the precomputed teacher response of the offline
tiny default.

Held-out evaluation: a fixed tenth of all possible questions (by a hash of the text) is
never drawn by `split="train"`, and `split="heldout"` draws only from it, so held-out
accuracy measures unseen questions of the trained families. `TransferSource` holds task
families the training set never contains.
"""

from __future__ import annotations

import zlib

import numpy as np

OPS = ("+", "-", "*")
SPLITS = ("train", "heldout", "all")
HELDOUT_MODULUS = 10  # one question in ten is held out


def is_heldout(question: str) -> bool:
  """Whether a question text belongs to the held-out tenth (stable across runs and hosts)."""
  return zlib.crc32(question.encode()) % HELDOUT_MODULUS == 0


def _columns(a: int, op: str, b: int) -> list[str]:
  """Column-by-column addition (with carries) or subtraction of a >= b (with borrows)."""
  width = max(len(str(a)), len(str(b)))
  da, db = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
  steps, carry = [], 0
  for place in range(width):
    x, y = int(da[place]), int(db[place])
    if op == "+":
      total = x + y + carry
      steps.append(f"column {place + 1}: {x} + {y} + carry {carry} = {total}, write {total % 10}, "
                   f"carry {total // 10}")
      carry = total // 10
    else:
      diff = x - y - carry
      borrow = int(diff < 0)
      steps.append(f"column {place + 1}: {x} - {y} - borrow {carry} = {diff}"
                   + (f", borrow 1, write {diff + 10}" if borrow else f", write {diff}"))
      carry = borrow
  if op == "+" and carry:
    steps.append(f"final carry {carry}")
  steps.append(f"{a} {op} {b} = {a + b if op == '+' else a - b}")
  return steps


def _worked(a: int, op: str, b: int) -> str:
  """Step-by-step solution: column by column for + and -, partial products for *."""
  if op == "*":
    steps = []
    partials = []
    for place, digit in enumerate(reversed(str(b))):
      partial = a * int(digit) * 10 ** place
      partials.append(partial)
      steps.append(f"{a} * {digit} * {10 ** place} = {partial}")
    steps.append(" + ".join(map(str, partials)) + f" = {a * b}")
    result = a * b
  elif op == "-" and a < b:
    result = a - b
    steps = [f"{a} - {b} = -({b} - {a})", f"{b} - {a} = {b - a}", f"{a} - {b} = {result}"]
  else:
    result = a + b if op == "+" else a - b
    steps = _columns(a, op, b)
  return "<think>\n" + "\n".join(steps) + f"\n</think>\nThe answer is $\\boxed{{{result}}}$."


def _weights(level_weights) -> np.ndarray:
  weights = np.asarray(level_weights, np.float64)
  if weights.ndim != 1 or not len(weights) or (weights < 0).any() or weights.sum() <= 0:
    raise ValueError(f"level_weights must be non-negative with a positive sum, got "
                     f"{level_weights}")
  return weights / weights.sum()


class _Rows:
  """Random access to rows that are pure functions of (seed, index)."""
  kind = ""
  # Every row parses and its id holds its index: the pipeline need not scan these sources.
  valid_by_construction = True

  def __init__(self, size: int, seed: int):
    if size < 1:
      raise ValueError(f"synthetic {self.kind} dataset size must be >= 1, got {size}")
    self.size, self.seed = size, seed

  def __len__(self):
    return self.size

  def row(self, index: int) -> dict:
    raise NotImplementedError

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.size:
      raise IndexError(f"synthetic {self.kind} row {index} out of range [0, {self.size})")
    return self.row(index), f"synthetic {self.kind} (seed {self.seed}) row {index}"


class ArithmeticSource(_Rows):
  """`size` questions; row i draws its level from `level_weights` (level k = k digits), then
  redraws until the question is in `split` ("train": not held out; "heldout"; "all")."""
  kind = "arithmetic"

  def __init__(self, size: int, seed: int = 0,
               level_weights: tuple[float, ...] = (0.2, 0.2, 0.2, 0.15, 0.15, 0.1),
               split: str = "train"):
    super().__init__(size, seed)
    if split not in SPLITS:
      raise ValueError(f"synthetic split must be one of {SPLITS}, got {split!r}")
    self.weights, self.split = _weights(level_weights), split

  def row(self, index: int) -> dict:
    rng = np.random.default_rng([self.seed, index])
    while True:
      level = 1 + int(rng.choice(len(self.weights), p=self.weights))
      op = OPS[int(rng.integers(len(OPS)))]
      low, high = 10 ** (level - 1) if level > 1 else 0, 10 ** level
      a, b = (int(x) for x in rng.integers(low, high, size=2))
      question = f"Compute {a} {op} {b}."
      if self.split == "all" or is_heldout(question) == (self.split == "heldout"):
        break
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    prefix = "arith" if self.split == "train" else f"arith-{self.split}"
    return {"id": f"{prefix}-{self.seed}-{index}-L{level}", "question": question,
            "answer": str(answer), "teacher_responses": [_worked(a, op, b)]}


TRANSFER_FAMILIES = ("chain", "words")
_WORDS = {"+": "plus", "-": "minus", "*": "times"}


class TransferSource(_Rows):
  """Task families the arithmetic training set never contains, for testing generalisation
  offline: `chain`, three one-digit operands ("Compute 4 + 7 - 2."), and `words`,
  one operation asked in words ("What is 12 minus 5?"). Rows alternate between families."""

  kind = "transfer"

  def __init__(self, size: int, seed: int = 0):
    super().__init__(size, seed)

  def row(self, index: int) -> dict:
    rng = np.random.default_rng([self.seed, index, 1])
    family = TRANSFER_FAMILIES[index % len(TRANSFER_FAMILIES)]
    if family == "chain":
      a, b, c = (int(x) for x in rng.integers(0, 10, size=3))
      op1, op2 = (("+", "-")[int(i)] for i in rng.integers(0, 2, size=2))
      question = f"Compute {a} {op1} {b} {op2} {c}."
      ab = a + b if op1 == "+" else a - b
      answer = ab + c if op2 == "+" else ab - c
    else:
      op = OPS[int(rng.integers(len(OPS)))]
      a, b = (int(x) for x in rng.integers(0, 100 if op != "*" else 10, size=2))
      question = f"What is {a} {_WORDS[op]} {b}?"
      answer = a + b if op == "+" else a - b if op == "-" else a * b
    return {"id": f"transfer-{family}-{self.seed}-{index}", "question": question,
            "answer": str(answer)}
