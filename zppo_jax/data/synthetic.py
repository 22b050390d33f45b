"""Synthetic verifiable questions: integer arithmetic with a difficulty knob.

Row i is a pure function of (seed, i), so any host can generate any shard. Level k uses
k-digit operands; `+` and `-` at a level are easier than `*`. A spread of levels gives a
small student easy, hard-but-learnable and (for it) unsolvable questions, which is what
the replay buffer needs to show anything. Every row also carries one worked solution in the
Qwen3.5 thinking format, which serves as the precomputed teacher response of the offline
tiny default.
"""

from __future__ import annotations

import numpy as np

OPS = ("+", "-", "*")


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


class ArithmeticSource:
  """`size` questions; row i draws its level from `level_weights` (level k = k digits)."""

  def __init__(self, size: int, seed: int = 0,
               level_weights: tuple[float, ...] = (0.2, 0.2, 0.2, 0.15, 0.15, 0.1)):
    if size < 1:
      raise ValueError(f"synthetic dataset size must be >= 1, got {size}")
    weights = np.asarray(level_weights, np.float64)
    if weights.ndim != 1 or not len(weights) or (weights < 0).any() or weights.sum() <= 0:
      raise ValueError(f"level_weights must be non-negative with a positive sum, got "
                       f"{level_weights}")
    self.size, self.seed, self.weights = size, seed, weights / weights.sum()

  def __len__(self):
    return self.size

  def row(self, index: int) -> dict:
    rng = np.random.default_rng([self.seed, index])
    level = 1 + int(rng.choice(len(self.weights), p=self.weights))
    op = OPS[int(rng.integers(len(OPS)))]
    low, high = 10 ** (level - 1) if level > 1 else 0, 10 ** level
    a, b = (int(x) for x in rng.integers(low, high, size=2))
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    return {"id": f"arith-{self.seed}-{index}-L{level}", "question": f"Compute {a} {op} {b}.",
            "answer": str(answer), "teacher_responses": [_worked(a, op, b)]}

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.size:
      raise IndexError(f"synthetic row {index} out of range [0, {self.size})")
    return self.row(index), f"synthetic arithmetic (seed {self.seed}) row {index}"
