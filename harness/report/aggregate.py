"""What a study holds, as pandas frames: one row per MLflow run, one per configuration.

Runs come from MLflow (final metrics, params, tags, loss curves); trial states, the space
and what is still missing come from Optuna. Nothing is recomputed from training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from scipy.stats import t as student_t

from harness import stats
from harness.config import MODEL_ARG, Objective, StudyConfig
from harness.study import seed_rounds
from harness.study.settled import (
    STOPPED,
    grid_key,
    round_plan,
    settled,
    settled_run_ids,
    settled_trials,
)
from harness.study.tags import (
    COMMIT_TAG,
    DATA_CHECKSUM_TAG,
    DATASET_TAG,
    DEVICE_TAG,
    SEED_TAG,
    STATUS_TAG,
    TRIAL_TAG,
)
from harness.study.tracking import search_all_runs
from harness.training.metrics import LAYER_METRICS, METRICS


@dataclass
class StudyData:
    """Everything a report shows about one study."""

    config: StudyConfig
    study: optuna.Study | None
    runs: pd.DataFrame  # one row per MLflow run
    curves: pd.DataFrame  # run_id, config, seed, metric, iteration, value
    missing: list[str] = field(default_factory=list)

    @property
    def varied(self) -> list[str]:
        """Parameters of the space that take more than one value among the runs."""
        return [p for p in self.config.space if p in self.runs and self.runs[p].nunique() > 1]


def _label(params: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={_fmt(params[k])}" for k in keys if k in params) or "base"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load(config: StudyConfig, study: optuna.Study | None, client: MlflowClient) -> StudyData:
    """Read runs and curves from MLflow and trial states from Optuna."""
    experiment = client.get_experiment_by_name(config.name)
    records, curves = [], []
    runs = search_all_runs(client, experiment.experiment_id) if experiment is not None else []
    if study is not None:
        # Only the runs of the trials that settled a configuration: not those of a trial that
        # was killed or interrupted (its point ran again), nor an older study's of that name.
        counted = settled_run_ids(study)
        runs = [run for run in runs if run.info.run_id in counted]
    keys = list(config.space)
    for run in runs:
        tags, params = run.data.tags, run.data.params
        typed = {k: _typed(config, k, params[k]) for k in keys if k in params}
        record = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "trial": int(tags.get(TRIAL_TAG, -1)),
            "seed": int(tags.get(SEED_TAG, params.get("seed", 0))),
            "status": tags.get(STATUS_TAG, run.info.status.lower()),
            "mlflow_status": run.info.status,
            "device": tags.get(DEVICE_TAG, ""),
            "commit": tags.get(COMMIT_TAG, ""),
            "data_checksum": tags.get(DATA_CHECKSUM_TAG, ""),
            # runs logged before Fashion-MNIST existed have no such tag: they trained on MNIST
            "dataset": tags.get(DATASET_TAG, "mnist"),
            "config": _label(typed, keys),
            **typed,
            **{m: run.data.metrics.get(m, math.nan) for m in METRICS},
            **{m: v for m, v in run.data.metrics.items() if m.split("/")[0] in LAYER_METRICS},
        }
        records.append(record)
        if run.info.status == "FINISHED" and record["status"] == "finished":
            for metric in ("train_loss", "test_loss"):
                for point in client.get_metric_history(run.info.run_id, metric):
                    curves.append(
                        {
                            "run_id": run.info.run_id,
                            "config": record["config"],
                            "seed": record["seed"],
                            "metric": metric,
                            "iteration": point.step,
                            "value": point.value,
                        }
                    )
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame = frame.sort_values(["trial", "seed"]).reset_index(drop=True)
    for key in keys:  # a setting with list values (hidden: [500, 250]): categories as text
        if key in frame and frame[key].map(lambda v: isinstance(v, list)).any():
            frame[key] = frame[key].map(str)
    curve_frame = pd.DataFrame.from_records(
        curves, columns=["run_id", "config", "seed", "metric", "iteration", "value"]
    )
    return StudyData(config, study, frame, curve_frame, _missing(config, study))


def _typed(config: StudyConfig, key: str, raw: str) -> Any:
    """A param string from MLflow back to the run setting's type (a keyword of a model of
    your own, `model_args.NAME`: as YAML reads it)."""
    value = yaml.safe_load(raw)
    if key.startswith(MODEL_ARG):
        return value
    return getattr(config.run_config({key: value}, 0), key)


def _missing(config: StudyConfig, study: optuna.Study | None) -> list[str]:
    """What the study has not produced yet, in words."""
    if study is None:
        return ["the Optuna study does not exist yet: nothing has run"]
    notes = []
    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        notes.append(f"{len(running)} trial(s) still running: {[t.number for t in running]}")
    keys = list(config.space)
    if config.sampler == "grid":
        done = {t.user_attrs.get("grid_point") for t in trials if settled(t)}
        todo = [p for p in config.grid() if grid_key(p) not in done]
        if todo:
            shown = "; ".join(_label(p, keys) for p in todo[:12])
            more = f" and {len(todo) - 12} more" if len(todo) > 12 else ""
            notes.append(f"{len(todo)} of {len(config.grid())} grid points not done: {shown}{more}")
    else:
        finished = settled_trials(study)
        if len(finished) < (config.n_trials or 0):
            notes.append(f"{len(finished)} of {config.n_trials} trials finished")
    rounds = round_plan(study, config)
    if rounds is not None and not rounds.done and not notes:  # all grid points settled
        waiting = sum(len(seeds) for seeds in rounds.pending.values())
        notes.append(
            f"adaptive seeds: round {rounds.round} needs {waiting} more run(s) of "
            f"{len(rounds.pending)} configuration(s); rerun the study to continue"
        )
    return notes


def label_of(data: StudyData, row: pd.Series) -> str:
    """A configuration by the parameters the study varied (its figures' point labels)."""
    return _label({k: row[k] for k in data.varied if k in row}, data.varied)


def pareto_mask(table: pd.DataFrame, objectives: list[Objective], eligible=None) -> pd.Series:
    """Which rows are Pareto-optimal on the objectives' `METRIC_mean` columns: no other
    (eligible) row is at least as good in every objective and better in one. Rows with a
    missing mean, or not `eligible` (a boolean Series), are never optimal."""
    signs = [1.0 if o.direction == "maximize" else -1.0 for o in objectives]
    columns = [f"{o.metric}_mean" for o in objectives]
    if table.empty or any(c not in table for c in columns):
        return pd.Series(False, index=table.index, dtype=bool)
    scores = table[columns].to_numpy(dtype=float) * signs  # higher is better in every column
    ok = ~pd.isna(scores).any(axis=1)
    if eligible is not None:
        ok &= pd.Series(eligible, index=table.index).fillna(False).to_numpy(dtype=bool)
    optimal = []
    for i, score in enumerate(scores):
        dominated = ok & (scores >= score).all(axis=1) & (scores > score).any(axis=1)
        optimal.append(bool(ok[i] and not dominated.any()))
    return pd.Series(optimal, index=table.index, dtype=bool)


def configurations(data: StudyData) -> pd.DataFrame:
    """One row per configuration: mean, sd and 95 % confidence interval over its seeds, and
    its objective against the best configuration's (`vs_best`: the test used, the difference
    with its CI, raw and Holm-adjusted p, the minimum detectable effect and a verdict). With
    several objectives, "best" is in the first one, and `pareto` marks the Pareto-optimal
    configurations (among those whose trial completed: as the study's own front)."""
    finished = data.runs[data.runs["status"] == "finished"] if not data.runs.empty else data.runs
    if finished.empty:
        return pd.DataFrame()
    keys = [k for k in data.config.space if k in finished]
    rows = []
    for label, group in finished.groupby("config", sort=False):
        row: dict[str, Any] = {"config": label, "seeds": len(group)}
        row["_trial"] = int(group["trial"].iloc[0])
        row.update({k: group[k].iloc[0] for k in keys})
        for metric in METRICS:
            values = group[metric].dropna()
            mean = float(values.mean()) if len(values) else math.nan
            sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            half = (
                float(student_t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values)))
                if len(values) > 1
                else math.nan
            )
            row[f"{metric}_mean"], row[f"{metric}_sd"], row[f"{metric}_ci95"] = mean, sd, half
        rows.append(row)
    table = pd.DataFrame(rows)
    objective = data.config.objective
    column = f"{objective.metric}_mean"
    best = table.sort_values(column, ascending=objective.direction == "minimize").iloc[0]
    table["best"] = table["config"] == best["config"]
    by_seed = {
        label: dict(zip(group["seed"], group[objective.metric], strict=True))
        for label, group in finished.groupby("config", sort=False)
    }
    if data.config.adaptive is not None and data.config.sampler == "grid":  # seeds, and why
        rounds = seed_rounds.plan(by_seed, data.config.adaptive, objective.direction)
        table["stopped"] = [
            rounds.stopped.get(label, "racing" if label in rounds.pending else "")
            for label in table["config"]
        ]
    elif data.config.adaptive is not None and data.study is not None:  # WilcoxonPruner's
        stopped = {t.number: t.user_attrs.get(STOPPED, "") for t in data.study.trials}
        table["stopped"] = [stopped.get(number, "") for number in table["_trial"]]
    versus = stats.vs_best(by_seed, str(best["config"]), objective.direction)
    for name in stats.VS_BEST_COLUMNS:
        table[name] = [versus[label][name] for label in table["config"]]
    if data.config.multi_objective:
        eligible = None
        if data.study is not None:
            complete = data.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            eligible = table["_trial"].isin({t.number for t in complete})
        table["pareto"] = pareto_mask(table, data.config.objectives, eligible)
    return table.drop(columns="_trial")


def counts(data: StudyData) -> dict[str, int]:
    """Runs by how they ended."""
    if data.runs.empty:
        return {}
    return {str(k): int(v) for k, v in data.runs["status"].value_counts().items()}


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Complete trials in order, with the best value so far (the optimisation history); with
    several objectives, of the first one (`value`), each one's values as `values`."""
    rows = [
        {"trial": t.number, "value": t.values[0], "values": list(t.values)}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    frame = pd.DataFrame(rows, columns=["trial", "value", "values"])
    if not frame.empty:
        best = (
            frame["value"].cummax()
            if study.directions[0].name == "MAXIMIZE"
            else frame["value"].cummin()
        )
        frame["best so far"] = best
    return frame
