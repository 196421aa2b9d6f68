"""Paired statistics over seeds against tabulated values of Student's t."""

from __future__ import annotations

import math

import pytest

from zflight.analysis.stats import incomplete_beta, paired, seeds_needed, t_cdf, t_quantile


def test_incomplete_beta_closed_forms():
    # I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1/2, 1/2) = (2/pi) asin(sqrt x)
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert incomplete_beta(1, 1, x) == pytest.approx(x, abs=1e-12)
        assert incomplete_beta(3, 1, x) == pytest.approx(x**3, abs=1e-12)
        assert incomplete_beta(0.5, 0.5, x) == pytest.approx(
            2 / math.pi * math.asin(math.sqrt(x)), abs=1e-10
        )


def test_t_distribution_matches_the_tables():
    # two-sided 95% critical values of Student's t (any statistics table)
    for df, crit in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(crit, abs=1e-3)
        assert t_cdf(crit, df) == pytest.approx(0.975, abs=1e-4)
    assert t_cdf(0.0, 4) == pytest.approx(0.5, abs=1e-12)
    # df = 1 is Cauchy: P(T <= t) = 1/2 + atan(t) / pi
    assert t_cdf(-3.0, 1) == pytest.approx(0.5 + math.atan(-3.0) / math.pi, abs=1e-10)
    assert t_quantile(0.8, 4) == pytest.approx(0.941, abs=1e-3)


def test_paired_difference_interval_and_p_value():
    # mean 2, sd 1 over 5 pairs: t = 2 sqrt(5) = 4.472, df 4 -> p = 0.0111 (two-sided)
    r = paired([1.0, 2.0, 3.0, 1.0, 3.0])
    assert (r.mean, r.n) == (2.0, 5) and r.sd == pytest.approx(1.0)
    assert r.p == pytest.approx(0.01106, abs=2e-5)
    assert (r.low, r.high) == pytest.approx(
        (2 - 2.776 / math.sqrt(5), 2 + 2.776 / math.sqrt(5)), abs=1e-3
    )
    assert paired([0.0, 0.0, 0.0]).p == 1.0 and paired([0.2, 0.2]).p == 0.0
    assert math.isnan(paired([0.5]).p) and paired([0.5, math.nan]).n == 1


def test_seeds_needed_grows_as_the_effect_shrinks_against_the_spread():
    # effect = 1 sd: n = 10 (sqrt(10) = 3.16 >= 2.262 + 0.883); effect = 3 sd: 4 pairs (sqrt(3) x 3 = 5.20 < 4.303 + 1.061)
    assert seeds_needed(1.0, 1.0) == 10
    assert seeds_needed(3.0, 1.0) == 4
    assert seeds_needed(0.012, 0.010) == 8
    assert seeds_needed(0.0, 1.0) == 1000


def test_status_changes_count_changes_and_flaps():
    from zflight.analysis.stats import status_changes

    # filter 0: 0 0 0 0; filter 1: 0 2 0 2 (three changes, two flaps); filter 2: 0 1 1 1 (one
    # change that stays)
    history = [[0, 0, 0], [0, 2, 1], [0, 0, 1], [0, 2, 1]]
    assert status_changes(history) == (4, 9, 2, 6)
    assert status_changes([[1, 2]]) == (0, 0, 0, 0) and status_changes([]) == (0, 0, 0, 0)
