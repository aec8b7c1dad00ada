"""harness.stats against scipy and statsmodels computed here, on synthetic values."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from harness import stats

BEST = {0: 0.93, 1: 0.95, 2: 0.94, 3: 0.96}
CLOSE = {0: 0.925, 1: 0.948, 2: 0.941, 3: 0.952}
FAR = {0: 0.90, 1: 0.915, 2: 0.91, 3: 0.93}


def test_paired_equals_scipy_on_the_common_seeds():
    other = {**CLOSE, 7: 0.5}  # a seed the best never ran is left out
    result = stats.paired(BEST, other)
    a, b = list(BEST.values()), [CLOSE[s] for s in BEST]
    expected = scipy_stats.ttest_rel(b, a)
    low, high = expected.confidence_interval(0.95)
    d = np.array(b) - np.array(a)
    assert (result.test, result.pairs, result.n_a, result.n_b) == ("paired", 4, 4, 5)
    assert result.difference == pytest.approx(d.mean())
    assert result.p == pytest.approx(expected.pvalue, rel=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high), rel=1e-12)
    effect = TTestPower().solve_power(nobs=4, alpha=0.05, power=0.8)
    assert result.mde == pytest.approx(effect * d.std(ddof=1), rel=1e-9)
    assert result.half_width == pytest.approx((high - low) / 2)


def test_welch_where_fewer_than_two_seeds_are_common_or_when_forced():
    shifted = {s + 10: v for s, v in CLOSE.items()}  # other seeds: nothing to pair
    result = stats.compare(BEST, shifted)
    expected = scipy_stats.ttest_ind(list(CLOSE.values()), list(BEST.values()), equal_var=False)
    assert result.test == "welch" and result.pairs == 0
    assert result.p == pytest.approx(expected.pvalue, rel=1e-12)
    pooled = math.sqrt((np.var(list(BEST.values()), ddof=1) + np.var(list(CLOSE.values()),
                                                                    ddof=1)) / 2)  # fmt: skip
    effect = TTestIndPower().solve_power(nobs1=4, ratio=1.0, alpha=0.05, power=0.8)
    assert result.mde == pytest.approx(effect * pooled, rel=1e-9)
    assert stats.compare(BEST, CLOSE, unpaired=True).test == "welch"
    assert stats.compare(BEST, CLOSE).test == "paired"


def test_pairing_finds_what_welch_cannot_when_seeds_move_together():
    """The design's point: a shared seed effect hides a small consistent difference from
    Welch's test, not from the paired one."""
    seed_effect = {0: -0.02, 1: 0.0, 2: 0.02, 3: 0.01}
    a = {s: 0.94 + e for s, e in seed_effect.items()}
    b = {s: 0.935 + e + 0.0005 * (-1) ** s for s, e in seed_effect.items()}
    assert stats.paired(a, b).p < 0.01 < 0.5 < stats.welch(list(a.values()), list(b.values())).p


def test_holm_equals_statsmodels_and_keeps_nan():
    pvalues = [0.01, math.nan, 0.04, 0.03]
    expected = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    adjusted = stats.holm(pvalues)
    assert math.isnan(adjusted[1])
    assert [adjusted[0], adjusted[2], adjusted[3]] == pytest.approx(list(expected))
    assert adjusted[0] == pytest.approx(0.03)  # 3 x 0.01
    assert stats.holm([math.nan]) == [pytest.approx(math.nan, nan_ok=True)]


def test_vs_best_adjusts_over_the_rivals_and_reads_the_adjusted_p():
    rows = stats.vs_best({"best": BEST, "close": CLOSE, "far": FAR}, "best", "maximize")
    assert rows["best"]["verdict"] == "best" and math.isnan(rows["best"]["p_vs_best"])
    raw = [stats.paired(BEST, CLOSE).p, stats.paired(BEST, FAR).p]
    adjusted = multipletests(raw, method="holm")[1]
    assert rows["close"]["p_holm"] == pytest.approx(adjusted[0])
    assert rows["far"]["p_holm"] == pytest.approx(adjusted[1])
    assert rows["far"]["verdict"] == "worse"
    assert rows["close"]["verdict"] == f"no difference > {rows['close']['mde']:.4g} detected"
    lower = stats.vs_best({"best": FAR, "worse": BEST}, "best", "minimize")
    assert lower["worse"]["verdict"] == "worse"  # higher is worse when minimising


def test_a_difference_only_the_raw_p_finds_claims_no_mde():
    """Five rivals 0.7 points below the best, each at raw p 0.012 and 0.061 after Holm: the
    verdict says not significant after Holm, not 'no difference > MDE detected', since the
    difference (0.70 points) exceeds the MDE (0.64)."""
    best = {0: 0.94, 1: 0.9484, 2: 0.9491, 3: 0.9414, 4: 0.9324, 5: 0.9304}
    rival = {0: 0.938, 1: 0.9364, 2: 0.9451, 3: 0.9314, 4: 0.9294, 5: 0.9194}
    rows = stats.vs_best({"best": best} | {f"r{k}": rival for k in range(5)}, "best", "maximize")
    for label in (f"r{k}" for k in range(5)):
        row = rows[label]
        assert row["p_vs_best"] < 0.05 <= row["p_holm"]
        assert abs(row["diff_vs_best"]) > row["mde"]
        assert row["verdict"] == stats.NOT_AFTER_HOLM == "not significant after Holm"
    assert stats.verdict(stats.paired(BEST, CLOSE), 0.2).startswith("no difference > ")


def test_too_few_and_identical_values():
    assert stats.paired({0: 0.9}, {0: 0.8}).test == "paired"
    assert math.isnan(stats.paired({0: 0.9}, {0: 0.8}).p)
    assert stats.verdict(stats.welch([0.9], [0.8]), math.nan) == "too few seeds"
    same = stats.paired(BEST, BEST)
    assert stats.verdict(same, stats.holm([same.p])[0]) == "identical"


def test_small_n_warning_below_six_pairs():
    assert stats.small_n_warning(6) is None and stats.small_n_warning(1) is None
    warning = stats.small_n_warning(5)
    assert "smallest p 2/2^5 = 0.062" in warning and "fewer than 6" in warning
