r"""What a final answer means, and when two answers are equal.

An answer string (a `\boxed{}`'s content, or a gold answer) is normalised (LaTeX spacing,
`\text{}`, `\left/\right`, dollar, degree and percent signs), then parsed into a value:

  Num     an exact number (integer, decimal, scientific, fraction, mixed number)
  Seq     a bare list (`1, 2` or `1 and 2`), a tuple or interval (`(1, 2]`), a set (`\{1, 2\}`)
  Matrix  `pmatrix`/`bmatrix`/`matrix`/`array` rows
  Eq      `lhs = rhs` (or `lhs \in rhs`)
  Text    words, compared case-insensitively
  Expr    anything else: a LaTeX expression, left to the symbolic check

and the two values are compared by the rules below (`equal`). The conventions that graders
disagree on are fields of `Conventions`. Everything here takes time linear in the answer
(answers are cut off at MAX_CHARS, numbers at MAX_DIGITS digits and exponents at
MAX_EXPONENT, nesting at MAX_DEPTH, lists at MAX_ITEMS), except the symbolic check of
expressions through math-verify (sympy), which runs only with `symbolic=True`: `rewards`
runs that in a worker process it kills at the deadline. Nothing is evaluated as code.
"""

from __future__ import annotations

import dataclasses
import fractions
import logging
import math
import re
from typing import Union

MAX_CHARS = 1000     # a longer answer is compared as a string only
MAX_DIGITS = 400     # a longer number literal likewise (int() refuses over 4300 digits)
MAX_EXPONENT = 400   # |e| of 1.5e300 or 1.5 \times 10^{300}; beyond, a string only
MAX_DEPTH = 16       # nesting of lists/tuples/matrices/equations
MAX_ITEMS = 64       # items in one list, tuple, set or matrix


@dataclasses.dataclass(frozen=True)
class Conventions:
  """The grading choices that reasonable users make differently (`config.reward.*`)."""
  rel_tol: float = 0.0                # relative tolerance between two non-integer numbers;
                                      # a number equal to an integer always compares exactly
  unordered_lists: bool = True        # a bare list `4, 10, -2` matches in any order (tuples,
                                      # intervals, vectors never do; sets always do)
  evaluate_expressions: bool = False  # an expression (`2^{10}`, `5!`, `\sqrt{4}`) counts for a
                                      # plain-number gold answer (prm800k says no)
  reduced_fractions: bool = False     # a fraction must be in lowest terms to count


# ------------------------------------------------------------------------------- values

@dataclasses.dataclass(frozen=True)
class Num:
  value: fractions.Fraction
  reduced: bool = True                # False for a fraction literal not in lowest terms
  src: str = ""


@dataclasses.dataclass(frozen=True)
class Seq:
  open: str                           # "" (bare list), "(", "[", "{"
  close: str                          # "", ")", "]", "}"
  items: tuple
  src: str = ""


@dataclasses.dataclass(frozen=True)
class Matrix:
  rows: tuple                         # tuple of tuples of values
  src: str = ""


@dataclasses.dataclass(frozen=True)
class Eq:
  lhs: str                            # compacted
  rhs: "Value"
  named: bool                         # lhs is a variable (`x`, `a_1`, `f(x)`) or a tuple of them
  src: str = ""


@dataclasses.dataclass(frozen=True)
class Text:
  words: str                          # lower case, single spaces
  src: str = ""


@dataclasses.dataclass(frozen=True)
class Expr:
  src: str                            # compacted LaTeX
  checkable: bool = True              # False: too long or too large for the symbolic check


Value = Union[Num, Seq, Matrix, Eq, Text, Expr]


# -------------------------------------------------------------------------- normalising

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textit|textrm|textsf|textnormal|mathrm|mathbf|"
                            r"mathit|mathsf|boldsymbol|mbox|hbox|operatorname)\s*\{([^{}]*)\}")
# `\\` (a row break) is matched first so that the `\ ` spacing rule never eats half of it.
_SPACING = re.compile(r"\\\\|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\(?:displaystyle|textstyle|"
                      r"left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg)(?![A-Za-z])\.?")
_REPLACE = [(r"\dfrac", r"\frac"), (r"\tfrac", r"\frac"), (r"\cfrac", r"\frac"),
            (r"\lbrace", r"\{"), (r"\rbrace", r"\}"), ("{,}", ","), (r"\$", ""), ("$", ""),
            (r"^{\circ}", ""), (r"^\circ", ""), (r"\circ", ""), (r"\degree", ""), ("°", ""),
            (r"\%", ""), ("%", ""), ("\u2212", "-"), ("\u2013", "-"), ("\u221e", r"\infty"),
            ("\u03c0", r"\pi"), ("\u00d7", r"\times"), ("\u00b7", r"\cdot")]
_THOUSANDS = re.compile(r"[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")


def normalize(answer: str) -> str:
  r"""A canonical spelling: `\text{}`-like wrappers unwrapped (their content spaced off),
  LaTeX spacing, `\left/\right`, dollar, degree and percent signs removed, `\dfrac` ->
  `\frac`, single spaces, no trailing period, and `1,000` -> `1000` when the whole answer is
  one number with thousands separators (a comma followed by a space separates list items)."""
  s = _CONTROL.sub(" ", answer)
  for _ in range(3):  # nested \text{\textbf{...}}
    s = _TEXT_COMMANDS.sub(r" \1 ", s)
  s = _SPACING.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
  for old, new in _REPLACE:
    s = s.replace(old, new)
  s = " ".join(s.split())
  s = s.rstrip(".,; ").lstrip(",; ")
  if _THOUSANDS.fullmatch(s):
    s = s.replace(",", "")
  return s


def compact(s: str) -> str:
  r"""`s` without spaces, except one between a command and a letter (`\pi r` stays)."""
  return re.sub(r"(\\[A-Za-z]+)?\s+", lambda m: m.group(1) + " " if m.group(1) and
                m.end() < len(s) and s[m.end()].isalpha() else (m.group(1) or ""), s)


# ------------------------------------------------------------------------------ parsing

_MATRIX = re.compile(r"\\begin\{(p|b|B|small|)matrix\}(.*)\\end\{\1matrix\}|"
                     r"\\begin\{array\}\{[^{}]*\}(.*)\\end\{array\}", re.S)
_TOP_TOKENS = re.compile(r"\\[{}]|[(\[{]|[)\]}]|[,;]|(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])|"
                         r"\\in(?![A-Za-z])|\\pm(?![A-Za-z])|\\[A-Za-z]+|[=<>&]|\\\\")
_NAME = r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?'*(?:\([A-Za-z]\))?"
_NAMED_LHS = re.compile(rf"{_NAME}|\((?:{_NAME})(?:,{_NAME})*\)")
_NUMBER = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+)|"
                     r"\\(?:times|cdot)10\^\{?([+-]?[0-9]+)\}?)?")
_FRACTION = re.compile(r"([+-]?)(?:([0-9]+)(?=\\frac))?(?:\\frac\{([+-]?[0-9]+)\}\{([+-]?[0-9]+)\}|"
                       r"\\frac([0-9])([0-9])|([+-]?[0-9]+)/([0-9]+))")
_NOT_UNITS = ("not", "no", "is", "are", "was", "were", "never", "but", "except", "than", "less",
              "more", "plus", "minus", "times", "over", "or", "and", "to", "if", "when")
# Units and count words after a number: known abbreviations, or words of 2+ letters set off by
# a space (`12 centimeters`, `17 marbles`, `28 percent`); `5x` and `5 x` keep their variable.
_UNITS = re.compile(r"(?<=[0-9}.])(?:\s*(?:cm|mm|km|ft|yd|mi|kg|mg|lbs?|oz|ml|mL|sec|min|hrs?|mph|"
                    r"kph|km/h|m/s|cm/s)(?![A-Za-z])|\s+(?:m|g|s|h|L)(?![A-Za-z])|"
                    r"(?:\s+(?!(?:" + "|".join(_NOT_UNITS) + r")(?![A-Za-z]))[A-Za-z]{2,}\.?){1,3})"
                    r"(?:\s*\^\s*\{?[23]\}?)?\s*$", re.I)
_TEXT = re.compile(r"[A-Za-z]+(?:[ '-][A-Za-z]+)*")


def parse(answer: str) -> Value:
  """The value of an answer string (see the module docstring)."""
  s = normalize(answer)
  if len(s) > MAX_CHARS:
    return Expr(compact(s), checkable=False)
  return _parse(s, 0)


def _parse(s: str, depth: int) -> Value:
  s = s.strip()
  if depth > MAX_DEPTH:
    return Expr(compact(s), checkable=False)
  m = _MATRIX.fullmatch(s)
  body = m and (m.group(2) if m.group(2) is not None else m.group(3))
  if body is not None and "\\begin" not in body and "\\end" not in body:
    rows = [r for r in _split(body, "\\\\") if r.strip()]
    cells = [tuple(_parse(c, depth + 1) for c in _split(r, "&")) for r in rows]
    if (cells and len(cells) <= MAX_ITEMS and len({len(r) for r in cells}) == 1
        and len(cells[0]) <= MAX_ITEMS):
      return Matrix(tuple(cells), src=compact(s))
    return Expr(compact(s))
  parts = _split(s, ",;", words=True)
  if len(parts) > 1:
    if len(parts) > MAX_ITEMS:
      return Expr(compact(s), checkable=False)
    return Seq("", "", tuple(_parse(p, depth + 1) for p in parts), src=compact(s))
  enclosed = _enclosed(s)
  if enclosed:
    open_, inner, close = enclosed
    items = _split(inner, ",")
    if len(items) == 1 and open_ in ("(", "{"):  # grouping parentheses or braces
      return _parse(inner, depth + 1)
    if len(items) > MAX_ITEMS:
      return Expr(compact(s), checkable=False)
    return Seq(open_[-1], close[-1], tuple(_parse(x, depth + 1) for x in items), src=compact(s))
  sides = _split(s, "=", relations=True)
  if len(sides) == 2 and sides[0].strip() and sides[1].strip():
    lhs = compact(sides[0])
    return Eq(lhs, _parse(sides[1], depth + 1), bool(_NAMED_LHS.fullmatch(lhs)), src=compact(s))
  pm = _split(s, "\\pm")
  if len(pm) == 2:  # a \pm b -> the list a + b, a - b
    a, b = pm[0].strip(), pm[1].strip()
    return Seq("", "", (_parse(f"{a}+{b}" if a else b, depth + 1),
                        _parse(f"{a}-{b}" if a else f"-{b}", depth + 1)), src=compact(s))
  s = _UNITS.sub("", s).strip()
  num = _number(compact(s))
  if num is not None:
    return num
  if _TEXT.fullmatch(s) and len(s) >= 2:
    return Text(s.lower(), src=s)
  literal = _NUMBER.fullmatch(compact(s))
  huge = literal is not None and bool(literal.group(2) or literal.group(3))
  return Expr(compact(s), checkable=not huge)


def _split(s: str, seps: str, *, words: bool = False, relations: bool = False) -> list[str]:
  r"""`s` cut at the separators that stand outside any brackets: characters of `seps`, or
  the string `seps` when it is a command (`\\`, `\pm`); with `words`, also " and " / " or ";
  with `relations` (`seps` "="), also `\in`, and never at `<`, `>` (then unsplit)."""
  out, start, depth = [], 0, 0
  for m in _TOP_TOKENS.finditer(s):
    t = m.group(0)
    if t in ("(", "[", "{", "\\{"):
      depth += 1
    elif t in (")", "]", "}", "\\}"):
      depth = max(0, depth - 1)
    elif depth == 0:
      cut = (t in seps if len(t) == 1 else t == seps) or (words and t in ("and", "or")) or (
          relations and t == "\\in")
      if relations and t in ("<", ">"):
        return [s]
      if cut:
        out.append(s[start:m.start()])
        start = m.end()
  return out + [s[start:]]


_CLOSERS = {"(": (")", "]"), "[": (")", "]"), "{": ("}",), "\\{": ("\\}",)}


def _enclosed(s: str) -> tuple[str, str, str] | None:
  r"""(open, inside, close) when `s` is one bracketed group: `(..)`, `[..)`, `\{..\}`, `{..}`."""
  open_ = "\\{" if s.startswith("\\{") else s[:1]
  if open_ not in _CLOSERS:
    return None
  depth = 0
  for m in _TOP_TOKENS.finditer(s):
    t = m.group(0)
    if t in _CLOSERS:
      depth += 1
    elif t in (")", "]", "}", "\\}"):
      depth -= 1
      if depth == 0:
        if m.end() != len(s) or t not in _CLOSERS[open_]:
          return None
        return open_, s[len(open_):m.start()], t
  return None


def _number(s: str) -> Num | None:
  r"""An exact number from a compacted answer: 12, -3.50, 1.5e3, 1.5\times10^{3}, 3/4,
  \frac{3}{4}, \frac34, 2\frac{1}{2} (a mixed number, 5/2); None for anything else, and for
  literals too long or too large to hold exactly (MAX_DIGITS, MAX_EXPONENT)."""
  m = _NUMBER.fullmatch(s)
  if m and (m.group(2) or m.group(3)):
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    exp = m.group(4) or m.group(5) or "0"
    if len(whole) + len(frac) > MAX_DIGITS or len(exp) > 5 or abs(int(exp)) > MAX_EXPONENT:
      return None
    value = fractions.Fraction(int(whole + frac or "0"), 10 ** len(frac)) * (
        fractions.Fraction(10) ** int(exp))
    return Num(-value if sign == "-" else value, src=s)
  m = _FRACTION.fullmatch(s)
  if not m or len(s) > MAX_DIGITS:
    return None
  sign, whole = m.group(1), m.group(2)
  num, den = next((m.group(i), m.group(i + 1)) for i in (3, 5, 7) if m.group(i) is not None)
  num, den = int(num), int(den)
  if den == 0 or (whole and (num < 0 or den < 0)):
    return None
  value = fractions.Fraction(num, den) + (int(whole) if whole else 0)
  reduced = math.gcd(num, den) == 1 and (not whole or abs(num) < abs(den))
  return Num(-value if sign == "-" else value, reduced=reduced, src=s)


# ---------------------------------------------------------------------------- comparing

_CHOICE = re.compile(r"\(?([A-J])\)?(?:$|[.):\s])")
_ANOTHER_CHOICE = re.compile(r"(?:^|[\s,;(])\(?[A-J]\)?(?:$|[.):\s,;])")


class NeedsSymbolic(Exception):
  """Raised by a comparison that needs sympy when `symbolic=False`."""


def match(pred: str, gold: str, conventions: Conventions = Conventions(), *,
          symbolic: bool = False) -> bool | None:
  """Whether the predicted answer string equals the gold one. With `symbolic=False`, None
  when deciding needs the symbolic check (run it again with `symbolic=True`, bounded)."""
  if max(len(pred), len(gold)) > 4 * MAX_CHARS:
    return pred.strip() == gold.strip()
  p, g = normalize(pred), normalize(gold)
  if not p or not g:
    return False
  if compact(p) == compact(g):
    return True
  gold_choice = _CHOICE.match(g) if len(compact(g)) <= 3 else None
  if gold_choice:
    pred_choice = _CHOICE.match(p)  # a letter, then at most the option's text
    return (bool(pred_choice) and pred_choice.group(1) == gold_choice.group(1) and
            not _ANOTHER_CHOICE.search(p, pred_choice.end() - 1))
  try:
    return equal(parse(pred), parse(gold), conventions, symbolic=symbolic)
  except NeedsSymbolic:
    return None


def equal(p: Value, g: Value, c: Conventions, *, symbolic: bool) -> bool:
  """Whether predicted value `p` equals gold value `g`; raises NeedsSymbolic when only
  sympy can say and `symbolic` is False."""
  def eq(a, b):
    return equal(a, b, c, symbolic=symbolic)

  def sym(a, b):
    if not (_checkable(a) and _checkable(b)):
      return False
    if not symbolic:
      raise NeedsSymbolic
    return sympy_equal(b.src, a.src)

  if isinstance(p, Eq) and isinstance(g, Eq):
    if p.lhs == g.lhs:
      return eq(p.rhs, g.rhs)
    return False if (p.named and g.named) else sym(p, g)
  if isinstance(p, Eq):
    return eq(p.rhs, g) if p.named else sym(p, g)
  if isinstance(g, Eq):
    return eq(p, g.rhs) if g.named else sym(p, g)
  if isinstance(p, Num) and isinstance(g, Num):
    return _numbers_equal(p, g, c)
  if isinstance(p, Seq) and isinstance(g, Seq):
    return _sequences_equal(p, g, c, eq)
  if isinstance(p, Matrix) and isinstance(g, Matrix):
    return (len(p.rows) == len(g.rows) and len(p.rows[0]) == len(g.rows[0]) and
            all(eq(a, b) for pr, gr in zip(p.rows, g.rows) for a, b in zip(pr, gr)))
  if isinstance(p, Text) and isinstance(g, Text):
    # (short letter strings may be products: `xy` = `yx`, equal when their letters are)
    return p.words == g.words or (_letters(p) and _letters(g) and
                                  sorted(p.src) == sorted(g.src))
  if isinstance(p, Expr) and isinstance(g, Expr):
    return p.src == g.src or sym(p, g)
  if isinstance(g, Num) and isinstance(p, (Expr, Text)):  # an expression for a number
    return c.evaluate_expressions and sym(p, g)
  if any(isinstance(v, Text) and not _letters(v) for v in (p, g)):
    return False
  if isinstance(p, Expr) or isinstance(g, Expr):
    return sym(p, g)
  return False  # a number and a list, a list and a matrix, text and a number, ...


def _numbers_equal(p: Num, g: Num, c: Conventions) -> bool:
  if c.reduced_fractions and not p.reduced:
    return False
  if p.value == g.value:
    return True
  if p.value.denominator == 1 or g.value.denominator == 1:  # integers compare exactly
    return False
  return c.rel_tol > 0 and abs(p.value - g.value) <= c.rel_tol * max(abs(p.value), abs(g.value))


def _sequences_equal(p: Seq, g: Seq, c: Conventions, eq) -> bool:
  """Sets match sets and bare lists as sets; bare lists match each other as multisets
  (`unordered_lists`) or in order; a bare list matches a tuple `( )` in order; bracketed
  sequences match when their brackets are the same, in order."""
  kinds = {p.open, g.open}
  if "{" in kinds and kinds <= {"{", ""}:
    return (all(any(eq(a, b) for b in g.items) for a in p.items) and
            all(any(eq(a, b) for a in p.items) for b in g.items))
  if len(p.items) != len(g.items):
    return False
  if kinds == {""} and c.unordered_lists:
    unused = list(g.items)
    for a in p.items:
      hit = next((i for i, b in enumerate(unused) if eq(a, b)), None)
      if hit is None:
        return False
      unused.pop(hit)
    return True
  same_brackets = (p.open, p.close) == (g.open, g.close)
  if not (same_brackets or kinds == {"", "("} and ")" in {p.close, g.close}):
    return False
  return all(eq(a, b) for a, b in zip(p.items, g.items))


def _checkable(v: Value) -> bool:
  if isinstance(v, Expr):
    return v.checkable
  if isinstance(v, Seq):
    return all(_checkable(x) for x in v.items)
  if isinstance(v, Matrix):
    return all(_checkable(x) for row in v.rows for x in row)
  if isinstance(v, Eq):
    return _checkable(v.rhs)
  return True


def _letters(t: Text) -> bool:
  """Short single words (`xy`, `abc`) may be products of variables rather than words."""
  return " " not in t.words and len(t.words) <= 3


def symbolic_match(pred: str, gold: str, conventions: dict) -> bool:
  """`match` with the symbolic check, for a worker (JSON arguments, never None)."""
  return bool(match(pred, gold, Conventions(**conventions), symbolic=True))


def sympy_equal(gold: str, pred: str) -> bool:
  """math-verify's equivalence of two LaTeX answers, with no time bound of its own (its
  alarm-based one works only on a main thread): call it where a deadline kills the call."""
  import math_verify  # sympy takes a second to load; only workers that need it pay
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  try:
    g = math_verify.parse(f"${gold}$", parsing_timeout=None)
    p = math_verify.parse(f"${pred}$", parsing_timeout=None)
    return bool(g and p and math_verify.verify(g, p, timeout_seconds=None))
  except Exception:  # noqa: BLE001 - an answer sympy cannot read is not a correct one
    return False
