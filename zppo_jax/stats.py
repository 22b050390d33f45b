"""Confidence intervals for the comparison's claims: a handful of seeds, and proportions
pooled over them.

Seeds are the unit of replication: a method's accuracy gets Student's t interval over its
per-seed values, and a gain over the starting student (or another method) the t interval
of the per-seed paired differences (the same seed shares data order and evaluation
samples). Graduated / admitted counts pooled over seeds get Wilson's score interval, which
stays inside [0, 1] and is sane at 0 of n.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
  mean: float
  low: float
  high: float
  n: int

  @property
  def half_width(self) -> float:
    return (self.high - self.low) / 2

  def excludes_zero(self) -> bool:
    return self.low > 0 or self.high < 0


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
  """Mean and t interval of `values` (NaNs dropped); one value: the interval is the point
  (no spread to estimate: reported with n = 1, never as significant)."""
  x = np.asarray(values, np.float64)
  x = x[~np.isnan(x)]
  if not len(x):
    return Interval(math.nan, math.nan, math.nan, 0)
  mean = float(x.mean())
  if len(x) == 1:
    return Interval(mean, mean, mean, 1)
  half = float(scipy_stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
  return Interval(mean, mean - half, mean + half, len(x))


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
  """The t interval of the per-seed differences a - b."""
  if len(a) != len(b):
    raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
  return mean_ci(np.asarray(a, np.float64) - np.asarray(b, np.float64), level)


def wilson(successes: int, trials: int, level: float = LEVEL) -> Interval:
  """Wilson's score interval of a proportion; 0 trials: NaN."""
  if trials == 0:
    return Interval(math.nan, math.nan, math.nan, 0)
  if not 0 <= successes <= trials:
    raise ValueError(f"{successes} successes of {trials} trials")
  z = float(scipy_stats.norm.ppf((1 + level) / 2))
  p = successes / trials
  centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
  return Interval(p, max(0.0, centre - half), min(1.0, centre + half), trials)


def two_proportions(a: tuple[int, int], b: tuple[int, int], level: float = LEVEL) -> Interval:
  """Newcombe's interval (from the two Wilson intervals) of the difference p_a - p_b of
  (successes, trials) pairs."""
  pa, pb = wilson(*a, level), wilson(*b, level)
  if not pa.n or not pb.n:
    return Interval(math.nan, math.nan, math.nan, 0)
  d = pa.mean - pb.mean
  low = d - math.sqrt((pa.mean - pa.low) ** 2 + (pb.high - pb.mean) ** 2)
  high = d + math.sqrt((pa.high - pa.mean) ** 2 + (pb.mean - pb.low) ** 2)
  return Interval(d, low, high, pa.n + pb.n)


def verdict(difference: Interval, claimed_sign: int = 1) -> str:
  """"holds" when the interval lies on the claimed side of 0, "reversed" when on the other,
  "not shown" when it covers 0 (or cannot be computed)."""
  if difference.n < 2 or math.isnan(difference.mean) or not difference.excludes_zero():
    return "not shown"
  return "holds" if (difference.mean > 0) == (claimed_sign > 0) else "reversed"
