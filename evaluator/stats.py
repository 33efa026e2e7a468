"""Aggregation over seeds: mean, sample standard deviation and a Student-t 95% interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Two-sided 95% Student-t critical values t(0.975, df) for df = 1..30, used without scipy.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
    2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
    2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
    2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip
_Z975 = 1.959964


@dataclass(frozen=True)
class Interval:
    """Mean, sample std (ddof 1) and a 95% confidence interval; no interval from one value."""

    n: int
    mean: float
    std: float
    low: float | None
    high: float | None


def t_critical(df: int, *, use_scipy: bool = True) -> float:
    """t(0.975, df): scipy's value when installed, else a table (normal beyond df 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if use_scipy:
        try:
            from scipy import stats
        except ImportError:
            pass
        else:
            return float(stats.t.ppf(0.975, df))
    if df <= len(_T975):
        return _T975[df - 1]
    # Expansion of t around the normal quantile (Abramowitz & Stegun 26.7.5); < 1e-6 for df > 30.
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def interval(values: Sequence[float]) -> Interval:
    """Mean, std and Student-t 95% interval of ``values`` (one per seed)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to aggregate")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(n=1, mean=mean, std=0.0, low=None, high=None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_critical(n - 1) * std / math.sqrt(n)
    return Interval(n=n, mean=mean, std=std, low=mean - half, high=mean + half)
