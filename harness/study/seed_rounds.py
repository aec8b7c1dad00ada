"""Adaptive seeds: which configuration of a grid needs which seed next, and why each stopped.

The rule (a racing procedure, as irace's): every configuration first runs seeds 0..min-1.
Then, round by round, each configuration still undecided against the current best gets one
more seed, the next number, so that its pairs with the best stay matched; the best gets every
seed its undecided rivals reach. A configuration is undecided while the paired CI of its
difference with the best contains 0 and is wider than ±resolution, and it has fewer than
`max` seeds. The CI is simultaneous over the k - 1 rivals (Bonferroni: level 1 - 0.05 /
(k - 1)), so a configuration the rounds call decided is also significant after the report's
Holm adjustment, whose p-values are never larger than Bonferroni's. A configuration stops as
"decided" (the CI excludes 0), "resolution" (the CI is narrower than ±resolution: any
difference is smaller than the study cares about) or "max".

`plan` is a pure function of the values finished so far: it replays the rounds from the start,
so every worker, and a study resumed after a kill, computes the same rounds from the stores,
and each (configuration, seed) is asked for once. Imports no torch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from harness import stats
from harness.config import AdaptiveSeeds

DECIDED = "decided"
RESOLUTION = "resolution"
MAX = "max"
BEST = "best"
REASONS = {
    DECIDED: "its paired CI against the best excludes 0",
    RESOLUTION: "its paired CI against the best is within ±resolution",
    MAX: "it reached the most seeds allowed",
    BEST: "the best configuration: it ran the seeds its closest rivals needed",
}


@dataclass
class Plan:
    """Where the rounds stand: seeds each configuration should have (`targets`), the seeds
    still to train (`pending`, configuration -> seeds), the round (0: the first `min`
    seeds), the current best, and why each configuration stopped (`stopped`, once the
    rounds are over)."""

    targets: dict[str, int]
    pending: dict[str, list[int]] = field(default_factory=dict)
    round: int = 0
    best: str | None = None
    stopped: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return not self.pending


def _best(values: dict[str, dict[int, float]], targets: dict[str, int], sign: float) -> str:
    """The configuration with the best mean over its first `targets` seeds (ties: first)."""
    means = {
        label: statistics.fmean(values[label][s] for s in range(targets[label])) for label in values
    }
    return max(means, key=lambda label: sign * means[label])


def plan(
    values: dict[str, dict[int, float]], seeds: AdaptiveSeeds, direction: str = "maximize"
) -> Plan:
    """Replay the rounds on `values` (configuration -> objective by seed, finished runs only;
    a configuration is listed once its first trial has settled with a value)."""
    sign = 1.0 if direction == "maximize" else -1.0
    targets = {label: seeds.min for label in values}
    number = 0
    while True:
        pending = {
            label: missing
            for label in values
            if (missing := [s for s in range(targets[label]) if s not in values[label]])
        }
        if pending or not values:
            return Plan(dict(targets), pending, number)
        best = _best(values, targets, sign)
        stopped: dict[str, str] = {}
        undecided = []
        alpha = stats.ALPHA / max(1, len(values) - 1)
        for label in values:
            if label == best:
                continue
            first = {s: values[best][s] for s in range(targets[best])}
            other = {s: values[label][s] for s in range(targets[label])}
            difference = stats.paired(first, other, alpha)
            low, high = difference.ci_low, difference.ci_high
            if not math.isnan(low) and not low <= 0 <= high:
                stopped[label] = DECIDED
            elif math.isnan(low) or difference.half_width <= seeds.resolution:
                stopped[label] = RESOLUTION  # NaN: identical differences, a zero-width CI
            elif targets[label] >= seeds.max:
                stopped[label] = MAX
            else:
                undecided.append(label)
        if not undecided:
            return Plan(dict(targets), {}, number, best, {**stopped, best: BEST})
        for label in undecided:
            targets[label] += 1
        targets[best] = min(seeds.max, max([targets[best], *(targets[u] for u in undecided)]))
        number += 1
