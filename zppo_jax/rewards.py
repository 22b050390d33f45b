r"""Verifiable rewards: the last `\boxed{...}` answer of a response against the gold answer.

Model output is never evaluated as code. A response is graded in steps, cheapest first: its
answer region (after the last `</think>`; a response still inside `<think>` gets nothing),
the last complete `\boxed{}` there, then equality after normalisation, multiple-choice
letters, exact numbers (integers, decimals, fractions, percentages, thousands separators),
and last symbolic equivalence through `math-verify` (sympy), skipped for long answers and cut
off after `timeout_s` seconds.
"""

from __future__ import annotations

import fractions
import re
import threading

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Longer answers skip the symbolic check (sympy's cost grows fast with expression size).
MAX_SYMBOLIC_CHARS = 200

_BOXED_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\\boxed (?P<bare>[^\s$]+)|\\[{}]|[{}]")


def extract_boxed(text: str) -> str | None:
  r"""Content of the last complete `\boxed{...}` (or `\fbox{}`, or `\boxed 5`) in `text`;
  nested and escaped braces are allowed. None when there is none. One pass, linear time."""
  best_start, best = -1, None
  open_boxes: list[tuple[int, int]] = []  # (content start, depth inside the box)
  depth = 0
  for m in _BOXED_TOKENS.finditer(text):
    token = m.group(0)
    if m.group("bare") is not None:
      if m.start() > best_start:
        best_start, best = m.start(), m.group("bare")
    elif token.endswith("{") and token.startswith("\\") and len(token) > 2:
      depth += 1
      open_boxes.append((m.end(), depth))
    elif token == "{":
      depth += 1
    elif token == "}":
      if open_boxes and open_boxes[-1][1] == depth:
        start, _ = open_boxes.pop()
        if start > best_start:
          best_start, best = start, text[start:m.start()]
      depth -= 1
      if depth < 0:  # an unmatched close brace: forget everything open before it
        depth, open_boxes = 0, []
  return None if best is None else best.strip()


def answer_region(response: str) -> str | None:
  """The part of a response that may hold the final answer: after the last `</think>`.
  None when a `<think>` is never closed (the response ran out inside its reasoning)."""
  if THINK_CLOSE in response:
    return response.rsplit(THINK_CLOSE, 1)[1]
  if THINK_OPEN in response:
    return None
  return response


_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DROP = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", r"\$", "$",
         r"\displaystyle", r"^\circ", r"^{\circ}", "°", r"\%", "%"]
_UNIT_WORDS = re.compile(
    r"(?<=[\d}])\s*(?:square|sq\.?|cubic)?\s*(?:units?|cm|mm|km|m|meters?|inches|inch|in|feet|ft|"
    r"miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|degrees?|deg|dollars?|cents?|days?|"
    r"weeks?|years?|kg|g|grams?|pounds?|lbs?|liters?|l|ml|mph|people|students|apples)\b\.?\s*$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_CHOICE = re.compile(r"^\(?([A-J])\)?(?:$|[.):\s])")


def normalize(answer: str) -> str:
  r"""A canonical string for comparison: LaTeX spacing, `\text{}`, `\left/\right`, degree and
  percent signs, units, `x =` prefixes and thousands separators removed; `\dfrac` -> `\frac`."""
  s = answer.strip()
  for _ in range(3):  # nested \text{\textbf{...}}
    s = _TEXT_COMMANDS.sub(r"\1", s)
  s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
  for token in _DROP:
    s = s.replace(token, "")
  s = s.strip().rstrip(".").strip()
  s = _UNIT_WORDS.sub("", s)
  s = re.sub(r"^[a-zA-Z]\s*=\s*(?=[-\d\\(.])", "", s)  # "x = 5" -> "5"
  if _THOUSANDS.match(s):
    s = s.replace(",", "")
  return re.sub(r"\s+", "", s)


def _number(s: str) -> fractions.Fraction | None:
  r"""An exact number from a normalised answer: 12, -3.50, 3/4, \frac{3}{4}, \frac34, -\frac{1}{2}."""
  m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?)\\frac(\d)(\d)", s)
  if m:
    sign = m.group(1) or m.group(4)
    num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(5), m.group(6))
    if int(den) == 0:
      return None
    return fractions.Fraction(int(num), int(den)) * (-1 if sign else 1)
  m = re.fullmatch(r"(-?\d+)/(\d+)", s)
  if m:
    return None if int(m.group(2)) == 0 else fractions.Fraction(int(m.group(1)), int(m.group(2)))
  if re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)(?:e-?\d+)?", s) and len(s) < 64:
    return fractions.Fraction(s)
  return None


def _choice(s: str) -> str | None:
  m = _CHOICE.match(s)
  return m.group(1) if m else None


def _symbolic_equal(gold: str, pred: str, timeout_s: int) -> bool:
  """math-verify's equivalence (sympy), with its alarm-based time bound where signals work
  (the main thread); elsewhere it is skipped, since it could not be stopped."""
  if threading.current_thread() is not threading.main_thread():
    return False
  import math_verify  # imported lazily: sympy takes a second to load
  try:
    g = math_verify.parse(f"${gold}$", parsing_timeout=timeout_s)
    p = math_verify.parse(f"${pred}$", parsing_timeout=timeout_s)
    return bool(g and p and math_verify.verify(g, p, timeout_seconds=timeout_s))
  except Exception:  # noqa: BLE001 - any failure of the parser is a wrong answer
    return False


def answers_match(pred: str, gold: str, *, timeout_s: int = 2) -> bool:
  """Whether an extracted answer equals the gold answer (see the module docstring)."""
  p, g = normalize(pred), normalize(gold)
  if not p:
    return False
  if p == g or (p.lower() == g.lower() and not _choice(g)):  # choice letters keep case
    return True
  gold_choice = _choice(g) if len(g) <= 3 else None
  if gold_choice is not None:
    return _choice(p) == gold_choice
  pn, gn = _number(p), _number(g)
  if pn is not None and gn is not None:
    return abs(pn - gn) <= 1e-6 * max(1, abs(gn))
  if max(len(p), len(g)) > MAX_SYMBOLIC_CHARS:
    return False
  return _symbolic_equal(g, p, timeout_s)


def is_correct(response: str, gold: str, *, timeout_s: int = 2) -> bool:
  r"""Whether the response's final `\boxed{}` answer (after `</think>`) equals `gold`."""
  region = answer_region(response)
  if region is None:
    return False
  pred = extract_boxed(region)
  return pred is not None and answers_match(pred, gold, timeout_s=timeout_s)


def well_formed(response: str) -> bool:
  r"""The format the prompts ask for: reasoning closed by `</think>`, then a `\boxed{}`."""
  region = answer_region(response)
  return THINK_CLOSE in response and region is not None and extract_boxed(region) is not None


def reward(response: str, gold: str, *, format_weight: float = 0.0, timeout_s: int = 2) -> float:
  """1 for a correct answer, else 0; plus `format_weight` when the response is well formed."""
  score = float(is_correct(response, gold, timeout_s=timeout_s))
  return score + (format_weight if format_weight and well_formed(response) else 0.0)
