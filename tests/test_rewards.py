"""Answer extraction and grading: a table of real answer formats, and adversarial inputs."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zppo_jax import rewards


def _resp(answer):
  return f"<think>\nLet me work it out.\n</think>\nSo the result is $\\boxed{{{answer}}}$."


# (predicted boxed answer, gold answer, should match)
CASES = [
    # GSM8K: integers with units, currency, separators
    ("72", "72", True),
    ("72.0", "72", True),
    ("72.00", "72", True),
    ("\\$18", "18", True),
    ("18 \\text{ dollars}", "18", True),
    ("\\text{18 dollars}", "18", True),
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("1000000", "1,000,000", True),
    ("5 \\text{ hours}", "5", True),
    ("20\\%", "20", True),
    ("20%", "20", True),
    ("-3", "-3", True),
    ("x = 4", "4", True),
    ("x=4", "4", True),
    ("73", "72", False),
    ("7.2", "72", False),
    ("720", "72", False),
    ("-72", "72", False),
    ("1,001", "1000", False),
    # MATH: fractions and decimals
    ("\\frac{1}{2}", "\\frac{1}{2}", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\tfrac{1}{2}", "\\frac12", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("0.5", "\\frac{1}{2}", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "0.33", False),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    ("\\frac{-1}{2}", "\\frac{1}{2}", False),
    # MATH: roots, pi, expressions (symbolic)
    ("2\\sqrt{2}", "2\\sqrt{2}", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\sqrt{2}", "2\\sqrt{2}", False),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("2\\pi", "2\\pi", True),
    ("\\pi", "2\\pi", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+2x", "(x+1)^2", False),
    ("\\frac{x+1}{2}", "\\frac{1}{2}x+\\frac{1}{2}", True),
    ("3+2i", "3+2i", True),
    ("2i+3", "3+2i", True),
    ("3-2i", "3+2i", False),
    # MATH: degrees, intervals, tuples, sets
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30", True),
    ("30 \\text{ degrees}", "30", True),
    ("(1, 2)", "(1,2)", True),
    ("(2, 1)", "(1,2)", False),
    ("[0, 1)", "[0,1)", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\{1, 2\\}", "\\{1,2\\}", True),
    # text answers
    ("\\text{Monday}", "Monday", True),
    ("monday", "Monday", True),
    ("Tuesday", "Monday", False),
    # multiple choice letters
    ("B", "B", True),
    ("(B)", "B", True),
    ("\\text{(B)}", "B", True),
    ("B) 42", "B", True),
    ("C", "B", False),
    ("b", "B", False),
    ("(A)", "(A)", True),
    ("A", "(C)", False),
    # more near-misses
    ("2/3", "3/2", False),
    ("(1, 2]", "(1,2)", False),
    ("x^3", "x^2", False),
    ("100", "1,000", False),
    ("\\frac{1}{2}", "2", False),
    # empty or junk
    ("", "5", False),
    ("\\frac{1}{0}", "5", False),
]


@pytest.mark.parametrize("pred,gold,expected", CASES)
def test_reward_table(pred, gold, expected):
  assert rewards.is_correct(_resp(pred), gold) is expected


def test_table_is_large_enough():
  assert len(CASES) >= 60
  assert sum(expected for _, _, expected in CASES) >= 30 and sum(
      not expected for _, _, expected in CASES) >= 20


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
  assert rewards.extract_boxed(text) == expected


def test_thinking_format():
  assert rewards.is_correct("<think>\\boxed{3}</think> so \\boxed{5}", "5")
  assert not rewards.is_correct("<think>\\boxed{5}</think> so \\boxed{3}", "5")
  # Still thinking when the tokens ran out: no answer, whatever the reasoning holds.
  assert not rewards.is_correct("<think>\nit is \\boxed{5}", "5")
  assert not rewards.is_correct("<think>...</think> The answer is 5.", "5")  # not boxed
  assert rewards.is_correct("\\boxed{5}", "5")  # no thinking block at all (non-thinking mode)
  # Generation prompts may open <think> themselves: the response then has only the close.
  assert rewards.is_correct("reasoning...</think>\n\\boxed{5}", "5")


def test_format_reward():
  assert rewards.reward(_resp("5"), "5") == 1.0
  assert rewards.reward(_resp("6"), "5", format_weight=0.1) == pytest.approx(0.1)
  assert rewards.reward(_resp("5"), "5", format_weight=0.1) == pytest.approx(1.1)
  assert rewards.reward("\\boxed{5}", "5", format_weight=0.1) == 1.0  # no </think>: no bonus


# --- adversarial inputs ---------------------------------------------------------------------

TIME_BOUND_S = 5.0


def _bounded(response, gold="5"):
  start = time.perf_counter()
  result = rewards.reward(response, gold, format_weight=0.1)
  assert time.perf_counter() - start < TIME_BOUND_S
  assert result in (0.0, 0.1, 1.0, 1.1) or result == pytest.approx(1.1)
  return result


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\boxed{}frac0123456789<think>/ $^_()-+.,")),
               max_size=400),
       st.text(max_size=30))
def test_reward_never_raises_on_latexish_noise(response, gold):
  _bounded(response, gold)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=2000), st.text(max_size=50))
def test_reward_never_raises_on_unicode(response, gold):
  _bounded(response, gold)


@pytest.mark.parametrize("response", [
    "\\boxed{" * 100_000 + "5" + "}" * 100_000,                 # deep nesting
    "\\boxed{" * 200_000,                                       # never closed
    "}" * 300_000 + "\\boxed{5}",                               # unbalanced
    "x" * (1 << 20) + "</think>\\boxed{5}",                     # 1 MB of reasoning
    "</think>\\boxed{" + "9" * (1 << 20) + "}",                 # 1 MB answer
    "</think>\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",   # deep parentheses for sympy
    "</think>\\boxed{10^{10^{10^{10}}}}",                       # a huge number for sympy
    "</think>\\boxed{" + "x^2+" * 150 + "1}",                   # long polynomial
    "</think>\\boxed{\u0661\u0662\u0663 \U0001F600 \u202e}",    # unicode digits, emoji, bidi
])
def test_reward_is_bounded_on_adversarial_responses(response):
  _bounded(response)
