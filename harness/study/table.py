"""The end-of-study table: one row per configuration (mean and sd over its seeds, the paired
comparison with the best, the Pareto front of a multi-objective study).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import optuna
from optuna.trial import TrialState

from harness import stats
from harness.config import StudyConfig
from harness.study import seed_rounds
from harness.study.settled import (
    OUTCOME,
    STOPPED,
    configuration_runs,
    configurations,
    pareto_trials,
    round_plan,
)
from harness.training import efficiency
from harness.training.metrics import EFFICIENCY_METRICS, METRICS


def values_text(config: StudyConfig, values: list[float]) -> str:
    """`metric value, metric value`: a trial's objective values, each with its metric's digits."""
    return ", ".join(
        f"{name} {value:.{METRICS[name].digits}f}"
        for name, value in zip(config.metric_names, values, strict=True)
    )


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_rows(study: optuna.Study, config: StudyConfig) -> list[dict[str, Any]]:
    """One row per settled configuration (its first trial's number, params and outcome, the
    statistics over all its seeds, seed rounds included) and, with one objective, the
    configuration against the best in it (`stats.vs_best`: paired where seeds match)."""
    plan = round_plan(study, config)
    rows = []
    for label, trials in configurations(study, config).items():
        first = trials[0]
        runs = [r for r in configuration_runs(trials) if "test_accuracy" in r]
        finished = [r for r in runs if r.get("status", "finished") == "finished"]
        metric = config.objective.metric
        rows.append(
            {
                "trial": first.number,
                "label": label,
                "params": first.params,
                "outcome": first.user_attrs.get(OUTCOME, first.state.name.lower()),
                "seeds": len(runs),
                "stopped": plan.stopped.get(label, "")
                if plan
                else first.user_attrs.get(STOPPED, ""),
                "by_seed": {int(r["seed"]): float(r[metric]) for r in finished if metric in r},
                "test_accuracy": _mean_sd([r["test_accuracy"] for r in runs]),
                "test_loss": _mean_sd([r["test_loss"] for r in runs]),
                "train_seconds": _mean_sd([r["train_seconds"] for r in runs])[0],
                "efficiency": {  # means (runs logged before these metrics lack them)
                    name: _mean_sd([r[name] for r in runs if name in r])[0]
                    for name in EFFICIENCY_METRICS
                },
            }
        )
    _add_vs_best(rows, config)
    return rows


def _add_vs_best(rows: list[dict[str, Any]], config: StudyConfig) -> None:
    """Each row's `vs_best` (stats.vs_best's columns) and `best` flag, in the objective."""
    scored = {r["label"]: r["by_seed"] for r in rows if r["by_seed"]}
    if config.multi_objective or not scored:
        return
    sign = 1 if config.objective.direction == "maximize" else -1
    best = max(scored, key=lambda label: sign * statistics.fmean(scored[label].values()))
    versus = stats.vs_best(scored, best, config.objective.direction)
    for row in rows:
        row["best"] = row["label"] == best
        row["vs_best"] = versus.get(row["label"])


def _mark_pareto(
    lines: list[str], rows: list[dict[str, Any]], study: optuna.Study, config: StudyConfig
) -> list[str]:
    """The table's lines (a header, then one per row) with a `*` column before the rows of
    the Pareto-optimal configurations, and the front listed below with its objective values."""
    front = pareto_trials(study)
    numbers = {t.number for t in front}
    marked = [f"  {lines[0]}"] + [
        f"{'*' if row['trial'] in numbers else ' '} {line}"
        for row, line in zip(rows, lines[1 : 1 + len(rows)], strict=True)
    ]
    goals = ", ".join(f"{o.metric} {o.direction[:3]}" for o in config.objectives)
    marked.append(f"* Pareto-optimal ({goals}): {len(front)} of {len(rows)} configurations")
    first = config.objective
    front.sort(key=lambda t: t.values[0], reverse=first.direction == "maximize")
    marked += [
        f"  trial {t.number} {params_text(t.params)}: {values_text(config, t.values)}"
        for t in front
    ]
    return marked + lines[1 + len(rows) :]


def format_table(study: optuna.Study, config: StudyConfig, partial: bool = False) -> str:
    """The end-of-study table: configuration, seeds (and why they stopped, with adaptive
    seeds), mean and sd over seeds, time, and each configuration against the best (the
    difference, Holm-adjusted p and verdict of a paired test where the seeds match).
    `partial`: other workers still run configurations, so the best is the best so far."""
    rows = summary_rows(study, config)
    if not rows:
        return "no finished configurations yet"
    width = max(len(params_text(r["params"])) for r in rows)
    extra, extras = efficiency.table_columns([r["efficiency"] for r in rows])  # where they vary
    adaptive = config.adaptive is not None
    versus = any(r.get("vs_best") for r in rows) and max(len(r["by_seed"]) for r in rows) > 1
    lines = [
        f"{'trial':>5}  {'configuration':<{width}}  {'outcome':<9}{'seeds':>5}"
        + (f"  {'stopped':<10}" if adaptive else "")
        + f"{'test accuracy':>20}{'test loss':>20}{'s/run':>8}"
        + (f"{'vs best':>10}{'p (Holm)':>10}" if versus else "")
        + extra
        + ("  verdict" if versus else "")
    ]
    for r, more in zip(rows, extras, strict=True):
        cells = [
            "-" if math.isnan(mean) else f"{mean:.4f} ± {sd:.4f}"
            for mean, sd in (r["test_accuracy"], r["test_loss"])
        ]
        seconds = "-" if math.isnan(r["train_seconds"]) else f"{r['train_seconds']:.1f}"
        line = (
            f"{r['trial']:>5}  {params_text(r['params']):<{width}}  {r['outcome']:<9}"
            f"{r['seeds']:>5}" + (f"  {r['stopped'] or '-':<10}" if adaptive else "")
        )
        line += f"{cells[0]:>20}{cells[1]:>20}{seconds:>8}"
        if versus:
            v = r.get("vs_best") or {}
            difference, p = v.get("diff_vs_best", math.nan), v.get("p_holm", math.nan)
            line += f"{'-' if math.isnan(difference) else f'{difference:+.4f}':>10}"
            line += f"{'-' if math.isnan(p) else f'{p:.3f}':>10}"
        line += more + (f"  {(r.get('vs_best') or {}).get('verdict', '-')}" if versus else "")
        lines.append(line)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete and config.multi_objective:  # a front, not one best: marked, then listed
        return "\n".join(_mark_pareto(lines, rows, study, config))
    best = [r for r in rows if r.get("best")]
    if best:
        row, metric = best[0], config.objective.metric
        mean = statistics.fmean(row["by_seed"].values())
        lines.append(
            f"{'best so far' if partial else 'best'}: trial {row['trial']} "
            f"{params_text(row['params'])} {metric} {mean:.4f} "
            f"(mean of {len(row['by_seed'])} seeds)"
        )
        lines += _versus_notes(rows, config)
    return "\n".join(lines)


def _versus_notes(rows: list[dict[str, Any]], config: StudyConfig) -> list[str]:
    """How to read the table's "vs best" columns: the tests, the family size, the power."""
    others = [r["vs_best"] for r in rows if r.get("vs_best") and not r.get("best")]
    if not others:
        return []
    tests = sorted({v["test"] for v in others})
    lines = [
        f"vs best: {config.objective.metric} minus the best's, "
        + "; ".join(stats.TESTS[t] for t in tests)
        + f"; p Holm-adjusted over {len(others)} comparisons, verdicts at alpha {stats.ALPHA}; "
        f"'no difference > x': x is the smallest difference the test had "
        f"{stats.POWER:.0%} power to detect; '{stats.NOT_AFTER_HOLM}': only the raw p is below "
        f"alpha"
    ]
    pairs = [v["pairs"] for v in others if v["test"] == "paired"]
    warning = stats.small_n_warning(min(pairs)) if pairs else None
    if warning:
        lines.append(f"note: {warning}")
    if config.adaptive is not None and config.sampler == "grid":
        lines.append("stopped: " + "; ".join(f"{k}: {v}" for k, v in seed_rounds.REASONS.items()))
    if config.adaptive is not None:
        ran, fixed = sum(r["seeds"] for r in rows), len(rows) * config.adaptive.max
        lines.append(
            f"adaptive seeds: {ran} runs, against {fixed} with {config.adaptive.max} seeds for "
            f"every configuration ({fixed - ran} saved)"
        )
    return lines


def params_text(params: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
