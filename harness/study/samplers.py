"""The samplers and pruners a study may name: one table each, everything else reads them.

No optuna import here (config.py reads the names to refuse bad input before anything heavy
loads); each entry builds its object from the optuna module it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.config import StudyConfig

WILCOXON_P = 0.1  # a search with adaptive seeds stops a trial below this (Optuna's default)


@dataclass(frozen=True)
class SamplerSpec:
    """`build(optuna, study, seed)` returns the sampler."""

    name: str
    title: str
    build: Callable[[Any, StudyConfig, int | None], Any]


@dataclass(frozen=True)
class PrunerSpec:
    """`build(optuna, settings)` returns the pruner for the study's `pruner` settings."""

    name: str
    title: str
    build: Callable[[Any, Any], Any]


def population_size(study: StudyConfig) -> int:
    """NSGA-II's generation size: a third of the trials (at least 4, at most Optuna's default
    50), so a search of n_trials sees about three generations after the random first one."""
    return max(4, min(50, (study.n_trials or 150) // 3))


def _grid(optuna: Any, study: StudyConfig, seed: int | None) -> Any:
    return optuna.samplers.RandomSampler(seed=seed)  # the points come from Optuna's queue


def _tpe(optuna: Any, study: StudyConfig, seed: int | None) -> Any:
    # Optuna's TPE is multi-objective (MOTPE) when the study is
    return optuna.samplers.TPESampler(n_startup_trials=min(10, study.n_trials or 10), seed=seed)


def _random(optuna: Any, study: StudyConfig, seed: int | None) -> Any:
    return optuna.samplers.RandomSampler(seed=seed)


def _qmc(optuna: Any, study: StudyConfig, seed: int | None) -> Any:
    return optuna.samplers.QMCSampler(seed=seed)


def _nsga2(optuna: Any, study: StudyConfig, seed: int | None) -> Any:
    # its generations live in the study, not in the sampler
    return optuna.samplers.NSGAIISampler(population_size=population_size(study), seed=seed)


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("grid", "every point of the space, once", _grid),
        SamplerSpec("tpe", "tree-structured Parzen estimator", _tpe),
        SamplerSpec("random", "uniform random draws", _random),
        SamplerSpec("qmc", "quasi-Monte Carlo (Sobol)", _qmc),
        SamplerSpec("nsga2", "NSGA-II (several objectives)", _nsga2),
    )
}


def _no_pruning(optuna: Any, settings: Any) -> Any:
    return optuna.pruners.NopPruner()


def _median(optuna: Any, settings: Any) -> Any:
    return optuna.pruners.MedianPruner(
        n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_steps
    )


def _hyperband(optuna: Any, settings: Any) -> Any:
    return optuna.pruners.HyperbandPruner(min_resource=max(1, settings.warmup_steps))


PRUNERS: dict[str, PrunerSpec] = {
    spec.name: spec
    for spec in (
        PrunerSpec("none", "no pruning", _no_pruning),
        PrunerSpec("median", "below the median of earlier trials at the same step", _median),
        PrunerSpec("hyperband", "Hyperband's successive halving", _hyperband),
    )
}


def make_sampler(study: StudyConfig, seed: int | None = None) -> Any:
    """The study's sampler, seeded with `seed` (default: the study's sampler_seed)."""
    import optuna

    seed = study.sampler_seed if seed is None else seed
    return SAMPLERS[study.sampler].build(optuna, study, seed)


def make_pruner(study: StudyConfig) -> Any:
    """The study's pruner; a search with adaptive seeds uses Optuna's Wilcoxon pruner with the
    seeds as its instances."""
    import optuna

    if study.adaptive is not None and study.sampler != "grid":
        return optuna.pruners.WilcoxonPruner(
            p_threshold=WILCOXON_P, n_startup_steps=study.adaptive.min
        )
    return PRUNERS[study.pruner.type].build(optuna, study.pruner)
