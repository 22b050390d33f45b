"""Answer grading: a table of answer pairs with the verdict each should get and why, response
formats and boxes, the conventions one by one, properties, and hostile inputs."""

import decimal
import fractions
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zppo_jax.data import boxed
from zppo_jax.rl import answers, rewards


def _resp(answer):
  return f"<think>\nLet me work it out.\n</think>\nSo the result is $\\boxed{{{answer}}}$."


# (predicted boxed answer, gold answer, verdict, why) under the default conventions
CASES = [
    # --- integers, signs, separators
    ("72", "72", True, "identical"),
    ("72.0", "72", True, "a decimal equal to the integer"),
    ("72.00", "72", True, "trailing zeros"),
    ("72.", "72", True, "a trailing period ends the sentence"),
    ("+72", "72", True, "explicit plus sign"),
    ("0072", "72", True, "leading zeros"),
    ("73", "72", False, "another integer"),
    ("720", "72", False, "an extra digit"),
    ("-72", "72", False, "the sign matters"),
    ("7.2", "72", False, "a misplaced decimal point"),
    ("1,234", "1234", True, "a thousands separator"),
    ("1{,}234", "1234", True, "LaTeX's braced thousands separator"),
    ("1,234,567", "1234567", True, "several separators"),
    ("1234567", "1,234,567", True, "separators in the gold answer"),
    ("-1,000", "-1000", True, "separator in a negative number"),
    ("12,345.5", "12345.5", True, "separator before a decimal part"),
    ("1\\,234", "1234", True, "a thin space between digit groups"),
    ("32, 349", "32349", False, "a comma and a space separate two list items"),
    ("3, 500", "3500", False, "a list is not a number"),
    ("1,00", "100", False, "two digits after the comma: not a thousands group"),
    ("1.000", "1000", False, "a decimal point is not a separator"),
    ("100", "1,000", False, "another number"),
    ("1,001", "1000", False, "another number"),
    ("123456789013", "123456789012", False, "integers compare exactly, at any size"),
    ("1000000.5", "1000000", False, "no tolerance against an integer"),
    ("1e-7", "0", False, "a small number is not zero"),
    ("1e3", "1000", True, "scientific notation"),
    ("1.5\\times10^{3}", "1500", True, "scientific notation in LaTeX"),
    ("1.5 \\times 10^3", "1500", True, "scientific notation with spaces"),
    ("1e999999999", "1", False, "a huge exponent is compared as a string, never evaluated"),
    ("9" * 500, "9" * 500, True, "a long literal equal as a string"),
    ("9" * 500, "9" * 499 + "8", False, "a long literal that differs"),
    # --- decimals and fractions
    ("0.5", "\\frac{1}{2}", True, "exact decimal of the fraction"),
    (".5", "0.5", True, "no leading zero"),
    ("0.50", "0.5", True, "trailing zero"),
    ("0.333", "\\frac{1}{3}", False, "a rounded decimal is not exact (rel_tol = 0)"),
    ("\\frac{1}{3}", "0.33", False, "the gold decimal is rounded: not equal"),
    ("-0.75", "-\\frac{3}{4}", True, "negative decimal and fraction"),
    ("2.5", "\\frac{5}{2}", True, "improper fraction"),
    ("2.5", "2\\frac{1}{2}", True, "a mixed number"),
    ("\\frac{3}{2}", "1\\frac{1}{2}", True, "mixed number in the gold answer"),
    ("\\frac{1}{2}", "\\frac{1}{2}", True, "identical"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True, "dfrac is frac"),
    ("\\tfrac{1}{2}", "\\frac12", True, "tfrac and the brace-less form"),
    ("\\frac12", "\\frac{1}{2}", True, "brace-less frac"),
    ("1/2", "\\frac{1}{2}", True, "slash fraction"),
    ("\\frac{2}{4}", "\\frac{1}{2}", True, "unreduced fractions count (reduced_fractions)"),
    ("\\frac{6}{3}", "2", True, "a fraction literal equal to the integer"),
    ("\\frac{-1}{2}", "-\\frac{1}{2}", True, "the sign inside or outside"),
    ("\\frac{1}{-2}", "-\\frac{1}{2}", True, "the sign in the denominator"),
    ("\\frac{-1}{2}", "\\frac{1}{2}", False, "the sign matters"),
    ("\\frac{1}{3}", "\\frac{1}{2}", False, "another fraction"),
    ("2/3", "3/2", False, "the reciprocal"),
    ("\\frac{1}{0}", "5", False, "division by zero is no number"),
    ("\\frac{1}{2}", "2", False, "another number"),
    # --- percents
    ("20\\%", "20", True, "the percent sign is dropped"),
    ("20%", "20\\%", True, "plain and escaped percent"),
    ("28 percent", "28\\%", True, "the word percent"),
    ("28 pct", "28\\%", True, "the abbreviation pct"),
    ("28\\text{ percent}", "28", True, "percent in text"),
    ("12.5\\%", "12.5", True, "decimal percent"),
    ("0.28", "28\\%", False, "a rate for a percent is another number (stated convention)"),
    ("28\\%", "0.28", False, "likewise the other way"),
    # --- units and count words
    ("12 centimeters", "12", True, "a unit word"),
    ("17 \\text{ marbles}", "17", True, "a count word in text"),
    ("5 \\text{ hours}", "5", True, "a time unit"),
    ("\\$18", "18", True, "a dollar sign"),
    ("18 \\text{ dollars}", "18", True, "a currency word"),
    ("\\text{18 dollars}", "18", True, "number and unit inside text"),
    ("12cm", "12", True, "an abbreviation written on the number"),
    ("12 \\text{cm}^2", "12", True, "a squared unit"),
    ("12 \\mbox{ square feet}", "12", True, "two unit words"),
    ("5 \\text{ m}", "5", True, "a one-letter unit after a space"),
    ("\\frac{1}{2} \\text{ cup}", "\\frac12", True, "a unit after a fraction"),
    ("30^\\circ", "30", True, "degrees"),
    ("30^{\\circ}", "30", True, "degrees in braces"),
    ("30\u00b0", "30", True, "the degree sign"),
    ("30 \\text{ degrees}", "30", True, "the word degrees"),
    ("5 \\text{ apples}", "5 \\text{ oranges}", True, "unit words are dropped, not compared"),
    ("13 \\text{ marbles}", "12 \\text{ marbles}", False, "the numbers differ"),
    ("5x", "5", False, "a variable is not a unit"),
    ("5 x", "5", False, "a one-letter variable after a space is not a unit"),
    ("5 is not the answer", "5", False, "words that say something else are not units"),
    ("3 \\text{ miles per hour}", "3", True, "three unit words"),
    # --- intervals
    ("[0, 1)", "[0,1)", True, "same interval"),
    ("(1, 2]", "(1,2)", False, "the bracket type matters"),
    ("[2, 5]", "[2,5)", False, "closed vs half-open"),
    ("(-\\infty, 3)", "(-\\infty,3)", True, "infinite end"),
    ("\\left( -\\infty, 3 \\right)", "(-\\infty, 3)", True, "left/right delimiters"),
    ("(-\\infty, 3) \\cup (5, \\infty)", "(-\\infty,3)\\cup(5,\\infty)", True, "a union, spaced"),
    ("(5, \\infty) \\cup (-\\infty, 3)", "(-\\infty,3)\\cup(5,\\infty)", True,
     "a union in the other order (symbolic)"),
    ("[0, 1]", "0, 1", False, "an interval is not a list"),
    ("x \\in [2, 5)", "[2,5)", True, "membership written out"),
    ("[\\frac{1}{2}, 2]", "[0.5, 2]", True, "interval ends compare as numbers"),
    # --- tuples, sets, lists
    ("(1, 2)", "(1,2)", True, "same tuple"),
    ("(2, 1)", "(1,2)", False, "tuples are ordered"),
    ("(1, 2, 3)", "(1, 2)", False, "another length"),
    ("(0.5, 1)", "(\\frac12, 1)", True, "elements compare as numbers"),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True, "polar coordinates"),
    ("(x, y) = (5, 8)", "(5, 8)", True, "a named tuple"),
    ("5, 8", "(5, 8)", True, "a bare list for a tuple, same order"),
    ("8, 5", "(5, 8)", False, "a bare list for a tuple, other order"),
    ("\\{1, 2\\}", "\\{2,1\\}", True, "sets are unordered"),
    ("\\{1, 2, 3\\}", "\\{1,2\\}", False, "another set"),
    ("1, 2, 3", "\\{1,2,3\\}", True, "a bare list for a set"),
    ("\\{1,2,3\\}", "3, 2, 1", True, "a set for a bare list"),
    ("\\left\\{ 1, 2 \\right\\}", "\\{1,2\\}", True, "left/right braces"),
    ("\\lbrace 1, 2\\rbrace", "\\{1,2\\}", True, "lbrace/rbrace"),
    ("\\{5\\}", "5", False, "a set is not a number"),
    ("4, 10, -2", "10, 4, -2", True, "bare lists are unordered (unordered_lists)"),
    ("4, 10", "10, 4, -2", False, "a missing element"),
    ("4, 4, 10", "4, 10, 10", False, "multiplicities count"),
    ("1 and 2", "1, 2", True, "'and' separates items"),
    ("1 \\text{ and } 2", "1, 2", True, "'and' in text"),
    ("1 \\text{or} 2", "1, 2", True, "'or' in text"),
    ("1; 2", "1, 2", True, "a semicolon separates items"),
    ("1, 2", "12", False, "a list is not a number"),
    ("-1, \\frac{15}{8}", "p = -1 \\text{ and } p = \\dfrac{15}{8}", True, "values for equations"),
    ("p=-1, p=\\frac{15}{8}", "p = -1 \\text{ and } p = \\dfrac{15}{8}", True,
     "a list of equations"),
    ("x = 1, 2", "1, 2", True, "one name for a list"),
    ("x=1 \\text{ or } x=2", "2, 1", True, "equations joined by 'or'"),
    ("\\pm 3", "3, -3", True, "plus-minus is two values"),
    ("x = \\pm 3", "-3, 3", True, "plus-minus in an equation"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}", True, "plus-minus around a surd"),
    ("3, 4", "3, 5", False, "one element differs"),
    # --- matrices and vectors
    ("\\begin{pmatrix} 5 \\\\ -2 \\end{pmatrix}", "\\begin{pmatrix}5\\\\-2\\end{pmatrix}", True,
     "the row break survives spacing rules"),
    ("\\begin{bmatrix} 5 \\\\ -2 \\end{bmatrix}", "\\begin{pmatrix}5\\\\-2\\end{pmatrix}", True,
     "pmatrix and bmatrix of the same entries"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}",
     True, "a 2x2 matrix"),
    ("\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
     False, "the transpose"),
    ("\\begin{pmatrix} 5 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}5\\\\-2\\end{pmatrix}", False,
     "one entry differs"),
    ("\\begin{pmatrix} \\frac12 \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix}0.5\\\\3\\end{pmatrix}",
     True, "entries compare as numbers"),
    ("\\begin{pmatrix} 5 & -2 \\end{pmatrix}", "\\begin{pmatrix}5\\\\-2\\end{pmatrix}", False,
     "a row is not a column"),
    ("\\begin{pmatrix} 5 \\\\ -2 \\\\ \\end{pmatrix}", "\\begin{pmatrix}5\\\\-2\\end{pmatrix}",
     True, "a trailing row break"),
    ("\\begin{array}{cc} 1 & 2 \\end{array}", "\\begin{pmatrix}1&2\\end{pmatrix}", True,
     "array for matrix"),
    ("(5, -2)", "\\begin{pmatrix}5\\\\-2\\end{pmatrix}", False,
     "a tuple is not a column vector (stated convention)"),
    # --- equations
    ("x = 4", "4", True, "a value with its variable"),
    ("x=4", "4", True, "unspaced"),
    ("4", "x=4", True, "the gold answer names the variable"),
    ("y=3", "x=3", False, "another variable"),
    ("x = 5", "y = 5", False, "another variable, both named"),
    ("y = 2x + 3", "y=2x+3", True, "a line, spaced"),
    ("2x + 3", "y = 2x+3", True, "the right side of a named equation"),
    ("y = 3x + 2", "y=2x+3", False, "another line"),
    ("f(x) = 2x", "2x", True, "a function name"),
    ("a_1 = 5", "5", True, "a subscripted name"),
    ("2x = 8", "4", False, "an equation to solve is not its solution"),
    # --- symbolic expressions
    ("2\\sqrt{2}", "2\\sqrt{2}", True, "identical"),
    ("\\sqrt{8}", "2\\sqrt{2}", True, "a simplified surd"),
    ("\\sqrt{2}", "2\\sqrt{2}", False, "a factor missing"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True, "brace-less sqrt"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True, "a rationalised denominator"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True, "slash and frac"),
    ("2\\pi", "2\\pi", True, "identical"),
    ("\\pi", "2\\pi", False, "a factor missing"),
    ("x^2+2x+1", "(x+1)^2", True, "an expanded square"),
    ("x^2+2x", "(x+1)^2", False, "a term missing"),
    ("\\frac{x+1}{2}", "\\frac{1}{2}x+\\frac{1}{2}", True, "a distributed fraction"),
    ("3+2i", "3+2i", True, "a complex number"),
    ("2i+3", "3+2i", True, "terms in another order"),
    ("3-2i", "3+2i", False, "the conjugate"),
    ("x^3", "x^2", False, "another power"),
    ("a+b", "b+a", True, "commuted terms"),
    ("1024", "2^{10}", True, "a number for an expression gold (checked symbolically)"),
    # --- expressions for plain numbers (evaluate_expressions = False)
    ("2^{10}", "1024", False, "an unevaluated power (the question's own expression)"),
    ("5!", "120", False, "an unevaluated factorial"),
    ("\\sqrt{4}", "2", False, "an unevaluated root"),
    ("3 + 4", "7", False, "an unevaluated sum"),
    ("e^{i\\pi}", "-1", False, "an unevaluated identity"),
    # --- text
    ("\\text{Monday}", "Monday", True, "text wrapper"),
    ("\\textbf{Monday}", "Monday", True, "bold wrapper"),
    ("monday", "Monday", True, "words compare case-insensitively"),
    ("Monday.", "Monday", True, "a trailing period"),
    ("Tuesday", "Monday", False, "another word"),
    ("\\text{even}", "even", True, "a parity word"),
    ("odd", "even", False, "the other parity"),
    ("Pride and Prejudice", "pride and prejudice", True, "a title with 'and'"),
    ("New York", "new york", True, "two words"),
    ("\\text{yes}", "Yes", True, "yes in text"),
    ("no", "yes", False, "the other answer"),
    # --- multiple choice
    ("B", "B", True, "the letter"),
    ("(B)", "B", True, "the letter in parentheses"),
    ("\\text{(B)}", "B", True, "in text"),
    ("\\textbf{(D)}", "D", True, "in bold"),
    ("B) 42", "B", True, "the letter and the option's text"),
    ("D. 12", "D", True, "the letter with a period"),
    ("(E) 5", "E", True, "parenthesised letter and text"),
    ("C", "B", False, "another letter"),
    ("b", "B", False, "choice letters keep their case"),
    ("(A)", "(A)", True, "parenthesised gold letter"),
    ("A", "(C)", False, "another letter"),
    ("BD", "B", False, "two letters are not one"),
    ("A B C D", "A", False, "every letter listed is no choice"),
    ("(A) or (B)", "A", False, "two choices are no choice"),
    # --- empty and junk
    ("", "5", False, "an empty box"),
    ("\\frac{}{}", "5", False, "an empty fraction"),
    ("\u0661\u0662\u0663", "123", False, "non-ASCII digits are not digits here"),
]


@pytest.mark.parametrize("pred,gold,expected,why", CASES)
def test_reward_table(pred, gold, expected, why):
  assert rewards.is_correct(_resp(pred), gold) is expected, why


def test_table_spans_the_classes():
  assert len(CASES) >= 150
  assert sum(c[2] for c in CASES) >= 75 and sum(not c[2] for c in CASES) >= 60
  assert len({(p, g) for p, g, _, _ in CASES}) == len(CASES)


# (whole response, gold answer, verdict, why): where the answer is and which box counts
RESPONSES = [
    ("<think>\\boxed{3}</think> so \\boxed{5}", "5", True, "only the part after </think>"),
    ("<think>\\boxed{5}</think> so \\boxed{3}", "5", False, "a box inside the reasoning"),
    ("<think>\nit is \\boxed{5}", "5", False, "still thinking when the tokens ran out"),
    ("<think>...</think> The answer is 5.", "5", False, "no box"),
    ("\\boxed{5}", "5", True, "no thinking block (non-thinking mode)"),
    ("reasoning...</think>\n\\boxed{5}", "5", True, "the prompt opened <think> itself"),
    ("</think> \\boxed{1}, \\boxed{2}, \\boxed{3}", "\\{1,2,3\\}", True, "a set split over boxes"),
    ("</think> $\\boxed{1}$ and $\\boxed{2}$", "1, 2", True, "boxes joined by 'and'"),
    ("</think> $\\boxed{x = 2}$ or $\\boxed{x = 3}$", "3, 2", True, "boxed equations"),
    ("</think> First \\boxed{1}; on second thought the answer is \\boxed{2}", "2", True,
     "boxes with words between: the last one counts"),
    ("</think> First \\boxed{1}; on second thought the answer is \\boxed{2}", "1", False,
     "an earlier box does not count"),
    ("</think> \\boxed{1}, \\boxed{2}", "2", False, "two boxed answers are a list, not 2"),
    ("</think> \\boxed{5} \\boxed{5}", "5", True, "a repeated box counts once"),
    ("</think> \\boxed{1}\n\nSo the answer is \\boxed{2}.", "2", True, "the final box"),
    ("</think>\\boxed{\\boxed{3}}", "3", True, "a box in a box"),
    ("</think>\\fbox{9}", "9", True, "fbox"),
    ("</think>\\boxed 7", "7", True, "boxed without braces"),
    ("</think>\\boxed{1} and an unclosed \\boxed{2", "1", True, "only complete boxes"),
    ("</think>\\boxed{}", "5", False, "an empty box"),
    ("</think>\\boxed{\\frac{1}{2}}", "0.5", True, "nested braces"),
]


@pytest.mark.parametrize("response,gold,expected,why", RESPONSES)
def test_responses(response, gold, expected, why):
  assert rewards.is_correct(response, gold) is expected, why


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{5}", "5"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
    ("\\boxed {7}", "7"),
    ("\\boxed 7$", "7"),
    ("\\fbox{9}", "9"),
    ("\\boxed{\\boxed{3}}", "3"),
    ("\\boxed{1} and an unclosed \\boxed{2", "1"),
    ("} stray \\boxed{4}", "4"),
    ("no answer here", None),
    ("\\boxed{", None),
])
def test_extract_boxed(text, expected):
  assert boxed.extract_boxed(text) == expected


# ----------------------------------------------------------------------------- conventions

def _grader(**reward_config):
  return rewards.Grader.from_config(reward_config)


@pytest.mark.parametrize("field,value,pred,gold,default,changed", [
    ("rel_tol", 1e-3, "0.3333", "\\frac{1}{3}", False, True),
    ("rel_tol", 1e-3, "1000000.5", "1000000", False, False),   # integers stay exact
    ("rel_tol", 1e-3, "1.001", "1", False, False),
    ("unordered_lists", False, "4, 10, -2", "10, 4, -2", True, False),
    ("unordered_lists", False, "10, 4, -2", "10, 4, -2", True, True),
    ("unordered_lists", False, "\\{4, 10\\}", "\\{10, 4\\}", True, True),  # sets stay sets
    ("evaluate_expressions", True, "2^{10}", "1024", False, True),
    ("evaluate_expressions", True, "5!", "120", False, True),
    ("evaluate_expressions", True, "2^{10}", "1000", False, False),
    ("reduced_fractions", True, "\\frac{2}{4}", "\\frac{1}{2}", True, False),
    ("reduced_fractions", True, "\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("reduced_fractions", True, "\\frac{4}{2}", "2", True, False),
])
def test_conventions(field, value, pred, gold, default, changed):
  assert _grader().correct([_resp(pred)], [gold])[0] == default
  assert _grader(**{field: value}).correct([_resp(pred)], [gold])[0] == changed


def test_join_boxes_convention():
  response = "</think> \\boxed{1}, \\boxed{2}, \\boxed{3}"
  assert _grader().correct([response], ["1, 2, 3"])[0]
  assert not _grader(join_boxes=False).correct([response], ["1, 2, 3"])[0]
  assert _grader(join_boxes=False).correct([response], ["3"])[0]


def test_format_reward():
  plain, bonus = rewards.Grader(), rewards.Grader(format_weight=0.1)
  assert rewards.reward(_resp("5"), "5", plain) == 1.0
  assert rewards.reward(_resp("6"), "5", bonus) == pytest.approx(0.1)
  assert rewards.reward(_resp("5"), "5", bonus) == pytest.approx(1.1)
  assert rewards.reward("\\boxed{5}", "5", bonus) == 1.0  # no </think>: no bonus


@pytest.mark.parametrize("config,message", [
    ({"timeout_s": 0}, "config.reward.timeout_s"),
    ({"workers": -1}, "config.reward.workers"),
    ({"rel_tol": 2.0}, "config.reward.rel_tol"),
    ({"tolerance": 0.1}, "unknown field(s) ['tolerance']"),
])
def test_bad_reward_config_is_named(config, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                     .replace(")", r"\)").replace("]", r"\]")):
    rewards.Grader.from_config(config)


def test_batch_grading_matches_one_by_one():
  """A batch (with repeated pairs, as a group's rollouts have) gets the verdicts the pairs
  get one at a time."""
  pairs = [(_resp(p), g) for p, g, _, _ in CASES[::7]] * 2
  batch = rewards.Grader().correct([r for r, _ in pairs], [g for _, g in pairs])
  assert batch.tolist() == [rewards.is_correct(r, g) for r, g in pairs]


# ------------------------------------------------------------------------------ properties

_integers = st.integers(-10**15, 10**15)
_fractions = st.tuples(st.integers(-999, 999), st.integers(1, 999))


def _spellings(num, den):
  r"""Equal spellings of num/den: \frac, slash, and the decimal when it terminates."""
  out = [f"\\frac{{{num}}}{{{den}}}", f"{num}/{den}"]
  d = den
  for p in (2, 5):
    while d % p == 0:
      d //= p
  if d == 1:  # a terminating decimal
    out.append(format(decimal.Decimal(num) / decimal.Decimal(den), "f"))
  return out


@settings(max_examples=200, deadline=None)
@given(_integers, st.lists(_integers, min_size=2, max_size=5),
       st.sampled_from([("", ""), ("(", ")"), ("[", "]"), ("\\{", "\\}"), ("[", ")")]))
def test_no_number_equals_a_list(n, items, brackets):
  listed = brackets[0] + ", ".join(map(str, items)) + brackets[1]
  for pred, gold in ((str(n), listed), (listed, str(n))):
    assert answers.match(pred, gold) is False  # decided without sympy, and never equal


@settings(max_examples=200, deadline=None)
@given(_fractions, _fractions)
def test_numbers_match_by_value_in_any_spelling(a, b):
  fa, fb = fractions.Fraction(*a), fractions.Fraction(*b)
  for pa in _spellings(*a):
    for pb in _spellings(*b):
      assert answers.match(pa, pb) is (fa == fb), (pa, pb)


_values = st.one_of(_integers.map(str), _fractions.map(lambda f: f"\\frac{{{f[0]}}}{{{f[1]}}}"),
                    st.sampled_from(["Monday", "even", "odd", "\\text{yes}", "New York"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_values, min_size=1, max_size=4), st.lists(_values, min_size=1, max_size=4),
       st.sampled_from([("", ""), ("(", ")"), ("\\{", "\\}"), ("[", ")")]),
       st.booleans())
def test_grading_is_symmetric_outside_its_one_sided_rules(a, b, brackets, unordered):
  """Numbers, words, lists, tuples, sets and intervals of them: match(a, b) == match(b, a),
  decided without sympy. (The one-sided rules are stated conventions: an expression for a
  plain-number gold answer, a multiple-choice gold letter read from a longer prediction.)"""
  conventions = answers.Conventions(unordered_lists=unordered)
  sa = brackets[0] + ", ".join(a) + brackets[1]
  sb = brackets[0] + ", ".join(b) + brackets[1]
  forward = answers.match(sa, sb, conventions)
  assert forward is not None and forward == answers.match(sb, sa, conventions)


# ---------------------------------------------------------------------- time bound, hostile

TIMEOUT_S = 1.0
BOUND_S = TIMEOUT_S + 4.0  # one symbolic deadline, plus restarting a killed worker


def _bounded(responses, gold="5"):
  grader = rewards.Grader(timeout_s=TIMEOUT_S, format_weight=0.1)
  start = time.perf_counter()
  out = grader.rewards(responses, [gold] * len(responses))
  assert time.perf_counter() - start < BOUND_S * max(1, len(responses))
  assert all(r in (0.0, 1.0) or r == pytest.approx(0.1) or r == pytest.approx(1.1) for r in out)
  return out


@pytest.mark.parametrize("response", [
    "\\boxed{" * 100_000 + "5" + "}" * 100_000,                 # deep nesting
    "\\boxed{" * 200_000,                                       # never closed
    "}" * 300_000 + "\\boxed{5}",                               # unbalanced
    "x" * (1 << 20) + "</think>\\boxed{5}",                     # 1 MB of reasoning
    "</think>\\boxed{" + "9" * (1 << 20) + "}",                 # 1 MB answer
    "</think>\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",   # deep parentheses
    "</think>\\boxed{" + "\\{" * 3000 + "1" + "\\}" * 3000 + "}",  # deep sets
    "</think>\\boxed{" + ", ".join(["1"] * 100_000) + "}",     # a huge list
    "</think>\\boxed{10^{10^{10^{10}}}}",                       # a huge power
    "</think>\\boxed{(10^{10^{5}})!}",                          # a huge factorial
    "</think>\\boxed{1e999999999}",                             # a huge exponent
    "</think>\\boxed{1e-99999999999999999999}",
    "</think>\\boxed{" + "x^2+" * 150 + "1}",                   # a long polynomial
    "</think>\\boxed{\u0661\u0662\u0663 \U0001F600 \u202e}",    # unicode digits, emoji, bidi
    "</think>\\boxed{\x00\x01\x1b[2J5\x7f}",                     # control characters
    "</think>" + "\\boxed{1}, " * 50_000,                       # a huge run of boxes
    "</think>\\boxed{" + "1 " * 200_000 + "apples}",            # unit words after much
])
def test_reward_is_bounded_on_hostile_responses(response):
  _bounded([response])


def test_hostile_pairs_in_one_batch_cost_one_deadline_per_worker_round():
  slow = ["</think>\\boxed{(10^{10^{5}})!}", "</think>\\boxed{2^{2^{2^{2^{2^{2}}}}}}"]
  grader = rewards.Grader(timeout_s=TIMEOUT_S, workers=2)
  start = time.perf_counter()
  assert not grader.correct(slow, ["2\\pi", "3\\pi"]).any()
  assert time.perf_counter() - start < BOUND_S
  assert grader.correct(["</think>\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"])[0]  # pool still works


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\boxed{}frac0123456789<think>/ $^_()-+.,!=")),
               max_size=400),
       st.text(max_size=30))
def test_reward_never_raises_on_latexish_noise(response, gold):
  _bounded([response], gold)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=2000), st.text(max_size=50))
def test_reward_never_raises_on_unicode(response, gold):
  _bounded([response], gold)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789eE+-.,/ {}!^") + ["\\frac", "\\times10^"]),
                min_size=1, max_size=60).map("".join))
def test_number_parsing_is_bounded(answer):
  start = time.perf_counter()
  answers.match(answer, "5")
  answers.parse(answer)
  assert time.perf_counter() - start < 0.5


_HOSTILE_PIECES = ["\\boxed{", "}", "{", "10^{", "!", "9" * 60, "e999999999", "e-999999", "\\frac{",
                   "\\sqrt{", "(", ")", "\x00", "\x1b", ",", " and ", "=", "\\begin{pmatrix}",
                   "\\\\", "&", "\\end{pmatrix}", "\\pm", "x", "^", "\\{", "\\}", "</think>",
                   "\\text{", "%", "1,000", ".", "\\times10^{", "\\infty", "\\cup"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(_HOSTILE_PIECES), max_size=300).map("".join),
       st.lists(st.sampled_from(_HOSTILE_PIECES), max_size=20).map("".join))
def test_time_bound_holds_on_generated_hostile_answers(answer, gold):
  _bounded([f"</think>\\boxed{{{answer}}}", f"</think>{answer}"], gold)
