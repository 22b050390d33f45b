"""Synthetic verifiable questions: integer arithmetic with a difficulty knob.

Row i is a pure function of (seed, i), so any host can generate any shard. Level k uses
k-digit operands (`*`: a k-digit number by one digit), solved column by column. A spread of levels gives a
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


def _columns(a: int, op: str, b: int, slip: int | None = None) -> tuple[list[str], int]:
  """Column by column, from the right: addition with carries, subtraction of a >= b with
  borrows, multiplication by a one-digit b with carries; and the result the columns write.
  `slip` miscounts that column by one (a wrong solution that looks like a right one)."""
  width = len(str(a)) if op == "*" else max(len(str(a)), len(str(b)))
  da, db = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
  steps, carry, written = [], 0, 0
  for place in range(width):
    x, y = int(da[place]), int(db[place])
    error = int(place == slip)
    if op == "-":
      diff = x - y - carry + error
      borrow = int(diff < 0)
      steps.append(f"column {place + 1}: {x} - {y} - borrow {carry} = {diff}"
                   + (f", borrow 1, write {diff + 10}" if borrow else f", write {diff}"))
      digit, carry = diff + 10 * borrow, borrow
    else:
      total = (x * b if op == "*" else x + y) + carry + error
      shown = f"{x} * {b}" if op == "*" else f"{x} + {y}"
      steps.append(f"column {place + 1}: {shown} + carry {carry} = {total}, write {total % 10}, "
                   f"carry {total // 10}")
      digit, carry = total % 10, total // 10
    written += digit * 10 ** place
  if op != "-" and carry:
    steps.append(f"final carry {carry}")
    written += carry * 10 ** width
  elif op == "-" and carry:  # a slip can leave a borrow out of the top column
    written -= 10 ** width
  steps.append(f"{a} {op} {b} = {written}")
  return steps, written


def worked(a: int, op: str, b: int, slip: int | None = None) -> str:
  """Step-by-step solution, column by column (a - b with a < b as -(b - a)); `slip` (a
  column) makes one step off by one and the answer wrong with it."""
  if op == "-" and a < b:
    sub, diff = _columns(b, "-", a, slip)
    steps = [f"{a} - {b} = -({b} - {a})", *sub, f"{a} - {b} = {-diff}"]
  else:
    steps, _ = _columns(a, op, b, slip)
  return "<think>\n" + "\n".join(steps) + "\n</think>\nThe answer is $\\boxed{" + \
      steps[-1].rpartition(" = ")[2] + "}$."


def _direct(a: int, op: str, b: int, result: int) -> str:
  """The answer at once, no steps: short, and right only as often as the model can do the
  whole operation in its head."""
  return f"<think>\n{a} {op} {b} = {result}\n</think>\nThe answer is $\\boxed{{{result}}}$."


def _answer(a: int, op: str, b: int) -> int:
  return a + b if op == "+" else a - b if op == "-" else a * b


# Formats in which a tiny student's SFT shows it candidate solutions (`review_fraction`):
# (prompt, candidate, labels). None is ZPPO's BCQ/NCQ template (prompts.TEMPLATE, "### Response
# A"), so that the skill of reading candidates is learned apart from the prompts it is used on.
REVIEW_FORMATS = (
    ("{question}\n\nSome attempts at this problem follow. They may be right or wrong.\n\n"
     "{candidates}", "Attempt {label}:\n{response}", "123"),
    ("Check the work below, then answer the question.\n\n{candidates}\n\nQuestion: "
     "{question}", "[{label}]\n{response}", "abc"),
    ("{question}\n\nNotes from others (not checked):\n\n{candidates}",
     "--- note {label} ---\n{response}", "123"),
    ("Question: {question}\n\n{candidates}\n\nSolve the question yourself; the solutions "
     "above may contain mistakes.", "Solution {label}:\n{response}", "XYZ"),
)
STYLES = ("worked", "direct")


def review_question(question: str, candidates: list[str], fmt: int) -> str:
  """`question` with `candidates` shown in reading format `fmt` of REVIEW_FORMATS."""
  prompt, candidate, labels = REVIEW_FORMATS[fmt]
  shown = "\n\n".join(candidate.format(label=label, response=response)
                        for label, response in zip(labels, candidates))
  return prompt.format(question=question, candidates=shown)


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
  redraws until the question is in `split` ("train": not held out; "heldout"; "all").

  A row's `teacher_responses` hold one solution per style of `styles` ("worked": step by
  step; "direct": the answer at once), so a model distilled on them samples both. With
  `review_fraction`, that share of rows shows its question with one to three candidate
  solutions (each right or wrong, in one of the REVIEW_FORMATS) and asks for the worked
  solution: how the tiny student learns to read candidates in its prompt, as an instruct
  model can, without ever seeing ZPPO's own BCQ/NCQ prompts."""
  kind = "arithmetic"

  def __init__(self, size: int, seed: int = 0,
               level_weights: tuple[float, ...] = (0.2, 0.2, 0.2, 0.15, 0.15, 0.1),
               split: str = "train", styles: tuple[str, ...] = ("worked",),
               review_fraction: float = 0.0):
    super().__init__(size, seed)
    if split not in SPLITS:
      raise ValueError(f"synthetic split must be one of {SPLITS}, got {split!r}")
    if not styles or set(styles) - set(STYLES):
      raise ValueError(f"synthetic solution styles must be some of {STYLES}, got {styles}")
    if not 0.0 <= review_fraction <= 1.0:
      raise ValueError(f"synthetic review_fraction must be in [0, 1], got {review_fraction}")
    self.weights, self.split = _weights(level_weights), split
    self.styles, self.review_fraction = tuple(styles), float(review_fraction)

  def row(self, index: int) -> dict:
    rng = np.random.default_rng([self.seed, index])
    while True:
      level = 1 + int(rng.choice(len(self.weights), p=self.weights))
      op = OPS[int(rng.integers(len(OPS)))]
      low, high = 10 ** (level - 1) if level > 1 else 0, 10 ** level
      a, b = (int(x) for x in rng.integers(low, high, size=2))
      if op == "*":  # by one digit: a level's columns are as many as for + and -
        b = int(rng.integers(2, 10))
      question = f"Compute {a} {op} {b}."
      if self.split == "all" or is_heldout(question) == (self.split == "heldout"):
        break
    answer = _answer(a, op, b)
    prefix = "arith" if self.split == "train" else f"arith-{self.split}"
    row_id = f"{prefix}-{self.seed}-{index}-L{level}"
    review = np.random.default_rng([self.seed, index, 2])  # apart: the question stays the same
    if review.random() < self.review_fraction:
      candidates = [self.candidate(a, op, b, review) for _ in range(1 + review.integers(3))]
      return {"id": row_id + "-review", "answer": str(answer),
              "question": review_question(question, candidates,
                                          int(review.integers(len(REVIEW_FORMATS)))),
              "teacher_responses": [worked(a, op, b)]}
    solutions = {"worked": worked(a, op, b), "direct": _direct(a, op, b, answer)}
    return {"id": row_id, "question": question, "answer": str(answer),
            "teacher_responses": [solutions[style] for style in self.styles]}

  @staticmethod
  def candidate(a: int, op: str, b: int, rng: np.random.Generator) -> str:
    """A right or wrong (a slipped step, or a wrong direct answer) candidate solution."""
    right, stepwise = rng.random() < 0.5, rng.random() < 0.75
    if stepwise:
      places = len(str(a)) if op == "*" else max(len(str(a)), len(str(b)))
      return worked(a, op, b, None if right else int(rng.integers(places)))
    miss = int(rng.choice([-10, -1, 1, 10]))
    return _direct(a, op, b, _answer(a, op, b) + (0 if right else miss))


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
