"""The comparison's intervals against hand-computed values."""

import math

import pytest

from zppo_jax import stats


def test_t_interval_of_seed_means():
  ci = stats.mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.3027
  assert ci.mean == 2.0 and ci.n == 3
  assert ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
  one = stats.mean_ci([0.4, float("nan")])
  assert (one.mean, one.low, one.high, one.n) == (0.4, 0.4, 0.4, 1)
  assert math.isnan(stats.mean_ci([]).mean)
  gain = stats.paired_ci([0.5, 0.6, 0.7], [0.4, 0.4, 0.5])  # differences 0.1, 0.2, 0.2
  assert gain.mean == pytest.approx(0.5 / 3) and gain.excludes_zero()
  with pytest.raises(ValueError, match="length"):
    stats.paired_ci([1.0], [1.0, 2.0])


def test_wilson_and_newcombe_intervals():
  zero = stats.wilson(0, 10)  # the textbook 0 of 10: [0, 0.2775]
  assert zero.mean == 0 and zero.low == 0 and zero.high == pytest.approx(0.2775, abs=1e-4)
  half = stats.wilson(50, 100)
  assert half.low == pytest.approx(0.4038, abs=1e-4) and half.high == pytest.approx(0.5962, abs=1e-4)
  assert math.isnan(stats.wilson(0, 0).mean)
  with pytest.raises(ValueError, match="successes"):
    stats.wilson(3, 2)
  paper = stats.two_proportions((28, 100), (4, 100))  # the paper's 0% bucket, at n = 100
  assert paper.mean == pytest.approx(0.24) and paper.low > 0 and paper.high < 0.35
  assert stats.verdict(paper) == "holds" and stats.verdict(paper, -1) == "reversed"
  assert stats.verdict(stats.two_proportions((3, 10), (2, 10))) == "not shown"
  assert stats.verdict(stats.mean_ci([0.3])) == "not shown"  # one seed proves nothing
