"""Paired comparisons over seeds: mean difference, 95% interval, p-value, seeds needed.

Two arms trained on the same seeds give one difference per seed. A paired t-test treats those
differences as a sample: its interval and p-value say what "holds on k of n seeds" cannot (3 of 3
has p = 0.125 on a sign test). Student's t distribution comes from the regularised incomplete
beta function (a continued fraction, Numerical Recipes 6.4), so no SciPy is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
    front = math.exp(log_front + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_cf(a, b, x) / a
    return 1 - front * _beta_cf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on ``t_cdf``; |t| < 1e4)."""
    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Paired:
    """A paired comparison: ``mean`` of the differences, its 95% interval ``low``..``high``, the
    two-sided paired t-test ``p`` and the number of pairs ``n``."""

    mean: float
    low: float
    high: float
    p: float
    n: int
    sd: float


def paired(differences: list[float], level: float = 0.95) -> Paired:
    """Mean difference, its ``level`` interval (t) and the two-sided p-value of "no difference".

    Identical differences (sd 0) give a zero-width interval and p = 0, or p = 1 when all are 0;
    fewer than two pairs give an unbounded interval and p = NaN.
    """
    d = [x for x in differences if not math.isnan(x)]
    n = len(d)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, 0, math.nan)
    mean = sum(d) / n
    if n < 2:
        return Paired(mean, -math.inf, math.inf, math.nan, n, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    if sd == 0:
        return Paired(mean, mean, mean, 1.0 if mean == 0 else 0.0, n, 0.0)
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    p = 2 * (1 - t_cdf(abs(mean) / se, n - 1))
    return Paired(mean, mean - half, mean + half, p, n, sd)


def seeds_needed(
    mean: float, sd: float, alpha: float = 0.05, power: float = 0.8, most: int = 1000
) -> int:
    """Pairs a two-sided paired t-test needs to detect a true difference ``mean`` with spread ``sd``
    at level ``alpha`` with probability ``power`` (t approximation of the power: n is the smallest
    with sqrt(n) |mean| / sd >= t(1 - alpha/2, n-1) + t(power, n-1)); ``most`` when out of reach."""
    if sd == 0 or math.isnan(sd) or math.isnan(mean):
        return 2
    if mean == 0:
        return most
    for n in range(2, most):
        if math.sqrt(n) * abs(mean) / sd >= t_quantile(1 - alpha / 2, n - 1) + t_quantile(
            power, n - 1
        ):
            return n
    return most


def status_changes(history: list[list[int]]) -> tuple[int, int, int, int]:
    """(changes, possible changes, flaps, possible flaps) in per-epoch statuses of the same
    filters (``history[e][i]``: filter i at analysis e). A change: a status differs from the
    previous analysis's. A flap: a change undone at the next analysis (A, B, A)."""
    changes = flaps = 0
    for e in range(1, len(history)):
        for i, (before, now) in enumerate(zip(history[e - 1], history[e])):
            changes += before != now
            if e + 1 < len(history):
                flaps += before != now and history[e + 1][i] == before
    n = len(history[0]) if history else 0
    return changes, n * max(len(history) - 1, 0), flaps, n * max(len(history) - 2, 0)
