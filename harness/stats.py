"""Comparisons of one metric over seeds: paired where the design allows, Welch's otherwise.

Configurations of a study run the same seeds, and a seed fixes the initial weights and the
batch order (common random numbers): runs of one seed are a block, and the difference of two
configurations is judged on the per-seed differences (paired t-test, CI of the mean difference
from the t distribution). Where the seeds do not match, Welch's unpaired test. Each result
carries its minimum detectable effect: the smallest true difference the test had `POWER`
power to find at its level, from the observed spread and n, so that "no significant
difference" can be read as "no difference larger than this". Holm's step-down adjustment
covers the k - 1 comparisons against a best picked after the fact.

Imports no torch: the report, compare and the study's seed rounds all read it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

ALPHA = 0.05
POWER = 0.8  # the power at which the minimum detectable effect is quoted
EXACT_MIN_PAIRS = 6  # an exact sign-flip or Wilcoxon test's smallest p is 2 / 2**n
TESTS = {
    "paired": "paired t-test on the per-seed differences (scipy.stats.ttest_rel)",
    "welch": "Welch's unpaired t-test (scipy.stats.ttest_ind, equal_var=False)",
}
Test = Literal["paired", "welch"]


@dataclass(frozen=True)
class Difference:
    """B - A for one metric: the test used, its sample sizes, the mean difference with its
    confidence interval, the two-sided p-value and the minimum detectable effect (all NaN
    where there are too few values: fewer than 2 pairs, or 2 runs a side)."""

    test: Test
    n_a: int
    n_b: int
    pairs: int  # seeds both sides ran (the paired test's n); 0 for Welch
    difference: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    mde: float

    @property
    def half_width(self) -> float:
        """Half the width of the confidence interval."""
        return (self.ci_high - self.ci_low) / 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _values(side: Mapping[int, float]) -> dict[int, float]:
    return {int(seed): float(value) for seed, value in side.items() if not math.isnan(value)}


def paired(a: Mapping[int, float], b: Mapping[int, float], alpha: float = ALPHA) -> Difference:
    """B - A over the seeds both sides ran (`a`, `b`: value by seed)."""
    a, b = _values(a), _values(b)
    common = sorted(a.keys() & b.keys())
    va = np.array([a[s] for s in common])
    vb = np.array([b[s] for s in common])
    n = len(common)
    difference = float(np.mean(vb - va)) if n else math.nan
    if n < 2:
        return _nan("paired", len(a), len(b), n, difference)
    with warnings.catch_warnings():  # identical differences: scipy warns and gives NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(vb, va)
        interval = result.confidence_interval(1 - alpha)
    sd = float(np.std(vb - va, ddof=1))
    effect = TTestPower().solve_power(nobs=n, alpha=alpha, power=POWER)
    return Difference(
        "paired", len(a), len(b), n, difference, float(interval.low), float(interval.high),
        float(result.statistic), float(result.df), float(result.pvalue), float(effect * sd),
    )  # fmt: skip


def welch(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Difference:
    """B - A as two independent samples. The minimum detectable effect uses the pooled sd
    (statsmodels' two-sample power, which assumes equal variances: an approximation)."""
    va = np.array([v for v in a if not math.isnan(v)], dtype=float)
    vb = np.array([v for v in b if not math.isnan(v)], dtype=float)
    difference = float(np.mean(vb) - np.mean(va)) if len(va) and len(vb) else math.nan
    if len(va) < 2 or len(vb) < 2:
        return _nan("welch", len(va), len(vb), 0, difference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(vb, va, equal_var=False)
        interval = result.confidence_interval(1 - alpha)
    pooled = math.sqrt(
        ((len(va) - 1) * np.var(va, ddof=1) + (len(vb) - 1) * np.var(vb, ddof=1))
        / (len(va) + len(vb) - 2)
    )
    effect = TTestIndPower().solve_power(
        nobs1=len(vb), ratio=len(va) / len(vb), alpha=alpha, power=POWER
    )
    return Difference(
        "welch", len(va), len(vb), 0, difference, float(interval.low), float(interval.high),
        float(result.statistic), float(result.df), float(result.pvalue), float(effect * pooled),
    )  # fmt: skip


def _nan(test: Test, n_a: int, n_b: int, pairs: int, difference: float) -> Difference:
    nan = math.nan
    return Difference(test, n_a, n_b, pairs, difference, nan, nan, nan, nan, nan, nan)


def compare(
    a: Mapping[int, float],
    b: Mapping[int, float],
    alpha: float = ALPHA,
    unpaired: bool = False,
) -> Difference:
    """B - A, paired on the common seeds where there are at least 2 (and not `unpaired`),
    else Welch's test on all values."""
    common = _values(a).keys() & _values(b).keys()
    if not unpaired and len(common) >= 2:
        return paired(a, b, alpha)
    return welch(list(_values(a).values()), list(_values(b).values()), alpha)


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """Holm-adjusted p-values (statsmodels' multipletests), the family being the finite ones;
    NaN stays NaN."""
    finite = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    if finite:
        _, corrected, _, _ = multipletests([pvalues[i] for i in finite], alpha, method="holm")
        for i, p in zip(finite, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted


def small_n_warning(n: int) -> str | None:
    """A warning when n pairs are too few for any exact nonparametric test to reach p < 0.05
    (its smallest p is 2 / 2**n): the t-test's normality assumption then carries the result."""
    if 2 <= n < EXACT_MIN_PAIRS:
        return (
            f"{n} seeds: no exact sign-flip or Wilcoxon test can reach p < 0.05 with fewer than "
            f"{EXACT_MIN_PAIRS} (smallest p 2/2^{n} = {2 / 2**n:.3f}); the t-test's p rests on "
            "its normality assumption"
        )
    return None


NOT_AFTER_HOLM = "not significant after Holm"


def verdict(difference: Difference, p_adjusted: float, alpha: float = ALPHA) -> str:
    """In words: 'higher' or 'lower' where the adjusted p is below alpha; 'not significant
    after Holm' where only the raw p is (the difference may well exceed the MDE, so no MDE is
    claimed); else what the test could have detected ('no difference > MDE detected'), or
    'too few seeds'."""
    if math.isnan(difference.p) or math.isnan(p_adjusted):
        if difference.n_a >= 2 and difference.n_b >= 2 and difference.difference == 0:
            return "identical"
        return "too few seeds"
    if p_adjusted < alpha and difference.difference != 0:
        return "higher" if difference.difference > 0 else "lower"
    if difference.p < alpha and difference.difference != 0:
        return NOT_AFTER_HOLM
    return f"no difference > {difference.mde:.4g} detected"


VS_BEST_COLUMNS = (
    "test", "pairs", "diff_vs_best", "diff_ci_low", "diff_ci_high", "p_vs_best", "p_holm",
    "mde", "verdict",
)  # fmt: skip


def vs_best(
    by_seed: dict[str, dict[int, float]], best: str, direction: str, alpha: float = ALPHA
) -> dict[str, dict[str, Any]]:
    """Each configuration's objective against the best one's (`by_seed`: configuration ->
    value by seed): paired on the seeds both ran where there are 2 or more, else Welch's
    test; p-values Holm-adjusted over the k - 1 comparisons (the best was picked after the
    fact), and the verdict read from the adjusted p. The best's own row is all NaN."""
    results = {
        label: compare(by_seed[best], values, alpha)
        for label, values in by_seed.items()
        if label != best
    }
    adjusted = dict(zip(results, holm([r.p for r in results.values()]), strict=True))
    rows: dict[str, dict[str, Any]] = {}
    for label in by_seed:
        if label == best:
            nan = math.nan
            rows[label] = dict.fromkeys(VS_BEST_COLUMNS, nan) | {"test": "", "verdict": "best"}
            rows[label]["pairs"] = 0
            continue
        result = results[label]
        said = verdict(result, adjusted[label], alpha)
        if said in ("higher", "lower"):
            said = "worse" if (said == "lower") == (direction == "maximize") else "better"
        rows[label] = {
            "test": result.test,
            "pairs": result.pairs,
            "diff_vs_best": result.difference,
            "diff_ci_low": result.ci_low,
            "diff_ci_high": result.ci_high,
            "p_vs_best": result.p,
            "p_holm": adjusted[label],
            "mde": result.mde,
            "verdict": said,
        }
    return rows
