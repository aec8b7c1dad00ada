"""Seaborn figures of a study, each with a caption; saved as PNG (page) and kept for the PDF."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.config import StudyConfig  # noqa: E402
from harness.report.aggregate import StudyData, label_of, trials_frame  # noqa: E402
from harness.training.metrics import LAYER_METRICS, METRICS  # noqa: E402

matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42})  # text stays text
SMOOTH = 10  # iterations in the rolling mean of the train-loss curve
MAX_LABELS = 16  # a Pareto figure labels every point up to this many, else the front only


@dataclass
class Figure:
    name: str  # file stem
    title: str
    caption: str
    figure: plt.Figure


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def accuracy_by_parameter(data: StudyData) -> list[Figure]:
    """Test accuracy against each varied parameter: the seeds as points, mean and sd."""
    runs = data.runs[data.runs["status"] == "finished"]
    search = data.config.sampler != "grid"
    figures = []
    for param in data.varied:
        others = [p for p in data.varied if p != param]
        hue = others[0] if others and not search else None
        fig, ax = plt.subplots(figsize=(7, 4.2))
        if search:  # sampled values: no two trials share one, so no means to draw
            sns.scatterplot(runs, x=param, y="test_accuracy", ax=ax)
            if _numeric(runs[param]) and runs[param].min() > 0:
                if runs[param].max() / runs[param].min() >= 50:
                    ax.set_xscale("log")
        elif _numeric(runs[param]):
            sns.lineplot(
                runs, x=param, y="test_accuracy", hue=hue, errorbar="sd", marker="o", ax=ax
            )
            sns.scatterplot(
                runs, x=param, y="test_accuracy", hue=hue, alpha=0.35, legend=False, ax=ax
            )
            if runs[param].min() > 0 and runs[param].max() / runs[param].min() >= 50:
                ax.set_xscale("log")
        else:
            sns.pointplot(
                runs,
                x=param,
                y="test_accuracy",
                hue=hue,
                errorbar="sd",
                dodge=0.3 if hue else False,
                ax=ax,  # seaborn 0.13 cannot dodge without a hue
            )
            sns.stripplot(
                runs, x=param, y="test_accuracy", hue=hue, dodge=bool(hue), alpha=0.35,
                legend=False, ax=ax,
            )  # fmt: skip
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        by = f", one line per {hue}" if hue else ""
        caption = (
            f"Test accuracy of each complete trial against the {param} the sampler chose."
            if search
            else f"Test accuracy after training, against {param}{by}. Faint points are single "
            + (
                "seeds; the line is the mean over seeds and the shaded band one standard "
                "deviation either side."
                if _numeric(runs[param])
                else "seeds; the marker is the mean over seeds and its bar one standard deviation "
                "either side."
            )
        )
        figures.append(
            Figure(f"accuracy_vs_{param}", f"Test accuracy against {param}", caption, fig)
        )
    return figures


def loss_curves(data: StudyData) -> list[Figure]:
    """Train and test loss over iterations, a line per configuration, a band over seeds."""
    if data.curves.empty:
        return []
    curves = data.curves.copy()
    train = curves["metric"] == "train_loss"
    curves.loc[train, "value"] = (
        curves[train]
        .groupby("run_id")["value"]
        .transform(lambda v: v.rolling(SMOOTH, min_periods=1).mean())
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, metric in zip(axes, ("train_loss", "test_loss"), strict=True):
        part = curves[curves["metric"] == metric]
        order = list(dict.fromkeys(data.runs["config"]))  # trial order
        sns.lineplot(
            part, x="iteration", y="value", hue="config", hue_order=order, errorbar="sd", ax=ax
        )
        ax.set_title(metric.replace("_", " "))
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.get_legend() is not None and (metric == "train_loss" or len(order) > 8):
            ax.get_legend().remove()  # one legend, and none past 8 lines (unreadable)
    fig.tight_layout()
    return [
        Figure(
            "loss_curves",
            "Train and test loss curves",
            f"Loss during training, one line per configuration (mean over seeds, band: standard "
            f"deviation). Train loss: each iteration's batch, rolling mean over {SMOOTH} "
            "iterations. Test loss: a test batch at each evaluation and the whole test set "
            "at the end of each epoch.",
            fig,
        )
    ]


def heatmap(data: StudyData, table: pd.DataFrame) -> list[Figure]:
    """Mean test accuracy over two parameters that vary together (and each other objective's
    mean, in a study of several)."""
    if len(data.varied) < 2 or table.empty or data.config.sampler != "grid":
        return []
    rows, cols = data.varied[0], data.varied[1]
    metrics = ["test_accuracy"] + [m for m in data.config.metric_names if m != "test_accuracy"]
    figures = []
    for metric in metrics:
        if table[f"{metric}_mean"].isna().all():
            continue
        grid = table.pivot_table(index=rows, columns=cols, values=f"{metric}_mean")
        fig, ax = plt.subplots(figsize=(1.2 * len(grid.columns) + 3, 0.6 * len(grid) + 2))
        accuracy = metric == "test_accuracy"
        sns.heatmap(
            grid, annot=True, fmt=".3f" if accuracy else ".4g", cmap="viridis", ax=ax,
            cbar_kws={"label": "accuracy" if accuracy else _metric_label(metric)},
        )  # fmt: skip
        fig.tight_layout()
        what = "test accuracy" if accuracy else _metric_label(metric)
        figures.append(
            Figure(
                f"heatmap_{rows}_{cols}" if accuracy else f"heatmap_{metric}_{rows}_{cols}",
                f"{what[0].upper()}{what[1:]} over {rows} and {cols}",
                f"Mean {what if accuracy else f'{what} ({metric})'} over seeds for each "
                f"combination of {rows} and {cols}"
                + (", averaged over the other varied parameters." if len(data.varied) > 2 else "."),
                fig,
            )
        )
    return figures


def rate_vs_latency(data: StudyData) -> list[Figure]:
    """Both accuracies of every run, coloured by the decoding it trained with."""
    runs = data.runs[data.runs["status"] == "finished"]
    if "decoding" not in data.varied or runs.empty:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 5))
    sns.scatterplot(runs, x="rate_accuracy", y="latency_accuracy", hue="decoding", ax=ax)
    low = min(runs["rate_accuracy"].min(), runs["latency_accuracy"].min())
    ax.plot([low, 1], [low, 1], color="grey", lw=1, ls="--")
    ax.set_xlabel("accuracy with rate decoding (spike counts)")
    ax.set_ylabel("accuracy with latency decoding (first spike)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return [
        Figure(
            "rate_vs_latency",
            "Rate against latency decoding",
            "Every run is evaluated with both decodings whatever it trained with: a point per "
            "run, coloured by its training decoding. Above the dashed line latency decoding "
            "reads the network better than rate decoding.",
            fig,
        )
    ]


def _metric_label(metric: str) -> str:
    return METRICS[metric].label if metric in METRICS else metric.replace("_", " ")


def _axis_label(metric: str, direction: str) -> str:
    return f"{_metric_label(metric)} ({'higher' if direction == 'maximize' else 'lower'} is better)"


def pareto_figures(data: StudyData, table: pd.DataFrame) -> list[Figure]:
    """With several objectives: the first against each other one (say, accuracy against
    synaptic operations), a point per configuration at its means, error bars one sd over its
    seeds, the Pareto-optimal ones marked and (two objectives) the front drawn."""
    objectives = data.config.objectives
    if len(objectives) < 2 or table.empty or "pareto" not in table:
        return []
    first = objectives[0]
    figures = []
    for other in objectives[1:]:
        x, y = f"{other.metric}_mean", f"{first.metric}_mean"
        points = table.dropna(subset=[x, y])
        if points.empty:
            continue
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for optimal, colour, name in (
            (False, "C0", "configuration"),
            (True, "C3", "Pareto-optimal"),
        ):
            part = points[points["pareto"] == optimal]
            if part.empty:
                continue
            ax.errorbar(
                part[x], part[y], xerr=part[f"{other.metric}_sd"].fillna(0),
                yerr=part[f"{first.metric}_sd"].fillna(0), fmt="o", color=colour, ecolor=colour,
                alpha=0.8, capsize=3, label=name,
            )  # fmt: skip
        front = points[points["pareto"]].sort_values(x)
        if len(objectives) == 2 and len(front) > 1:  # the boundary of what the front dominates
            ax.step(
                front[x], front[y], where="post" if other.direction == "minimize" else "pre",
                color="C3", ls="--", lw=1, label="Pareto front",
            )  # fmt: skip
        every = len(points) <= MAX_LABELS
        for _, row in points.iterrows():
            if every or row["pareto"]:
                ax.annotate(
                    label_of(data, row), (row[x], row[y]), xytext=(4, 4),
                    textcoords="offset points", fontsize=7, color="#333",
                )  # fmt: skip
        if points[x].min() > 0 and points[x].max() / points[x].min() >= 50:
            ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
        ax.set_xlabel(_axis_label(other.metric, other.direction))
        ax.set_ylabel(_axis_label(first.metric, first.direction))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        where = (
            "the dashed staircase is the front"
            if len(objectives) == 2
            else f"optimal over all {len(objectives)} objectives, so no front is drawn here"
        )
        labelled = (
            "Points are labelled by the parameters the study varied"
            if every
            else f"Pareto-optimal points are labelled by the parameters the study varied (more "
            f"than {MAX_LABELS} points)"
        )
        figures.append(
            Figure(
                f"pareto_{first.metric}_vs_{other.metric}",
                f"{_metric_label(first.metric)} against {_metric_label(other.metric)}",
                f"One point per configuration at its mean over seeds, error bars one standard "
                f"deviation over seeds. Red points are Pareto-optimal: no other configuration is "
                f"as good in every objective and better in one ({where}). {labelled}.",
                fig,
            )
        )
    return figures


def search_figures(study: optuna.Study, config: StudyConfig) -> list[Figure]:
    """Optimisation history and parameter importances of a search (with several objectives:
    the history of the first one, the importances for each)."""
    history = trials_frame(study)
    first = config.objective.metric
    several = config.multi_objective
    figures = []
    if len(history) >= 2:
        fig, ax = plt.subplots(figsize=(7, 4))
        sns.scatterplot(history, x="trial", y="value", ax=ax, label="trial")
        sns.lineplot(history, x="trial", y="best so far", ax=ax, color="C3", label="best so far")
        ax.set_ylabel(first if several else "objective")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figures.append(
            Figure(
                "optimisation_history",
                "Optimisation history",
                (
                    f"The first objective ({first}) of each complete trial in the order they "
                    "ran, and the best so far in it alone (the search looks for the Pareto "
                    "front of all its objectives, not for this best)."
                    if several
                    else "The objective of each complete trial in the order they ran, and the "
                    "best so far."
                ),
                fig,
            )
        )
    if len(history) >= 3:
        frame = _importances(study, config)
        bars = frame["parameter"].nunique() * frame["objective"].nunique()
        fig, ax = plt.subplots(figsize=(7, 0.5 * bars + 1.5))
        sns.barplot(
            frame, x="importance", y="parameter", hue="objective" if several else None, ax=ax,
            color=None if several else "C0",
        )  # fmt: skip
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        figures.append(
            Figure(
                "parameter_importances",
                "Parameter importances",
                "How much each parameter matters for reaching the best complete trials, by "
                "Optuna's default importance evaluator (PED-ANOVA: how differently a parameter "
                "is distributed among the top trials than among all)"
                + (", for each objective on its own." if several else "."),
                fig,
            )
        )
    return figures


def _importances(study: optuna.Study, config: StudyConfig) -> pd.DataFrame:
    """parameter, importance, objective: Optuna's parameter importances, for each objective
    of a multi-objective study (as a target to minimise: maximised ones negated)."""
    if not config.multi_objective:
        found = {config.objective.metric: optuna.importance.get_param_importances(study)}
    else:
        found = {}
        for index, objective in enumerate(config.objectives):
            sign = -1.0 if objective.direction == "maximize" else 1.0
            with warnings.catch_warnings():  # "computes the importances ... low target values"
                warnings.simplefilter("ignore", UserWarning)
                found[objective.metric] = optuna.importance.get_param_importances(
                    study, target=lambda t, i=index, s=sign: s * t.values[i]
                )
    return pd.DataFrame(
        [
            {"parameter": name, "importance": value, "objective": metric}
            for metric, importances in found.items()
            for name, value in importances.items()
        ],
        columns=["parameter", "importance", "objective"],
    )


def _slant(ax: plt.Axes, labels: list[str]) -> None:
    """Slant the x labels where they would run into each other."""
    if len(labels) > 4 or len(labels) * max(map(len, labels), default=0) > 60:
        for label in ax.get_xticklabels():
            label.set_rotation(25)
            label.set_horizontalalignment("right")


def seed_lines(data: StudyData) -> list[Figure]:
    """The objective of every seed across the configurations, a line per seed: a seed that
    sits low (or high) everywhere is the block that paired tests take out."""
    metric = data.config.objective.metric
    runs = data.runs[(data.runs["status"] == "finished") & data.runs[metric].notna()]
    if data.config.sampler != "grid" or runs["seed"].nunique() < 2 or runs["config"].nunique() < 2:
        return []
    varied = data.varied
    x = varied[0] if len(varied) == 1 and _numeric(runs[varied[0]]) else "config"
    runs = runs.assign(seed=runs["seed"].astype(str))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.8 * runs["config"].nunique() + 3), 4.2))
    sns.lineplot(
        runs, x=x, y=metric, hue="seed", units="seed", estimator=None, marker="o",
        sort=True, ax=ax, palette="tab10" if runs["seed"].nunique() <= 10 else "viridis",
    )  # fmt: skip
    if x == "config":
        _slant(ax, list(runs["config"].unique()))
    ax.set_ylabel(_metric_label(metric))
    ax.set_xlabel(x if x != "config" else "configuration")
    legend = ax.get_legend()
    if legend is not None:
        legend.set_title("seed")
        if runs["seed"].nunique() > 12:
            legend.remove()
    fig.tight_layout()
    caption = (
        f"{_metric_label(metric)} of each seed, one line per seed across the configurations. "
        "A seed fixes the initial weights and the batch order in every configuration: lines "
        "that run parallel show a seed effect shared by all configurations, which the paired "
        "comparisons with the best remove."
    )
    return [Figure("seeds_across_configurations", "Each seed across the configurations",
                   caption, fig)]  # fmt: skip


def difference_vs_best(data: StudyData, table: pd.DataFrame) -> list[Figure]:
    """Each configuration minus the best, with the confidence interval of its test."""
    if table.empty or "diff_vs_best" not in table or table["diff_ci_low"].notna().sum() == 0:
        return []
    metric = data.config.objective.metric
    others = table[~table["best"]]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.8 * len(others) + 3), 4.2))
    x = range(len(others))
    for i, (_, row) in enumerate(others.iterrows()):
        color = "C0" if row["test"] == "paired" else "C1"
        low, high = (
            row["diff_ci_low"] - row["diff_vs_best"],
            row["diff_ci_high"] - row["diff_vs_best"],
        )
        ax.errorbar(i, row["diff_vs_best"], yerr=[[-low], [high]], fmt="o", color=color, capsize=4)
    ax.axhline(0, color="0.3", linewidth=1)
    ax.set_xticks(list(x), list(others["config"]))
    _slant(ax, list(others["config"]))
    ax.set_ylabel(f"{_metric_label(metric)} minus the best's")
    ax.set_xlabel("configuration")
    best = table[table["best"]]["config"].iloc[0]
    tests = sorted(set(others["test"]) - {""})
    handles = [plt.Line2D([], [], marker="o", linestyle="none", color=c, label=t)
               for c, t in (("C0", "paired"), ("C1", "welch")) if t in tests]  # fmt: skip
    if handles:
        ax.legend(handles=handles, title="test")
    fig.tight_layout()
    caption = (
        f"Each configuration's {_metric_label(metric)} minus that of the best ({best}), with "
        "the 95 % confidence interval of the difference: paired on the seeds both ran (the "
        "interval the verdicts rest on), Welch's where the seeds do not match. An interval "
        "that crosses 0 is no evidence of a difference; its width says how large a "
        "difference the study could still miss."
    )
    return [Figure("difference_vs_best", "Difference from the best configuration", caption, fig)]


def activity_per_layer(data: StudyData) -> list[Figure]:
    """Each layer's firing rate and each synapse's effective operations per sample, a bar per
    configuration (mean over its seeds, with their sd): where a network spends its spikes."""
    runs = data.runs[data.runs["status"] == "finished"]
    columns = [c for c in runs.columns if "/" in c and c.split("/")[0] in LAYER_METRICS]
    if runs.empty or not columns:
        return []
    long = runs.melt(id_vars=["config", "seed"], value_vars=columns).dropna(subset=["value"])
    long[["kind", "layer"]] = long["variable"].str.split("/", expand=True)
    long["layer"] = long["layer"].str.extract(r"(\d+)$", expand=False).astype(int)
    configs = long["config"].nunique()
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2))
    for ax, (kind, (unit, title)) in zip(axes, LAYER_METRICS.items(), strict=True):
        part = long[long["kind"] == kind]
        sns.barplot(part, x="layer", y="value", hue="config", errorbar="sd", ax=ax,
                    palette="tab10" if configs <= 10 else "viridis")  # fmt: skip
        ax.set_xlabel(f"{unit} (in the order the network runs them)")
        ax.set_ylabel(title)
        legend = ax.get_legend()
        if legend is not None and (ax is axes[0] or configs > 12):
            legend.remove()
        elif legend is not None:
            legend.set_title("configuration")
    fig.tight_layout()
    caption = (
        "Left: the share of neuron-steps with a spike in each layer of neurons over the test "
        "set (the last layer is the output). Right: effective synaptic operations (MACs + ACs) "
        "of each synapse per test sample (in a chain, synapse k feeds layer k). Bars: mean over "
        "the seeds; whiskers: their standard deviation."
    )
    return [Figure("activity_per_layer", "Activity per layer", caption, fig)]


def all_figures(data: StudyData, table: pd.DataFrame) -> list[Figure]:
    """Every figure that the study's data supports."""
    sns.set_theme(style="whitegrid", context="notebook")
    figures: list[Figure] = []
    if not data.runs.empty and (data.runs["status"] == "finished").any():
        figures += accuracy_by_parameter(data)
        figures += seed_lines(data)
        figures += difference_vs_best(data, table)
        figures += loss_curves(data)
        figures += heatmap(data, table)
        figures += rate_vs_latency(data)
        figures += pareto_figures(data, table)
        figures += activity_per_layer(data)
    if data.study is not None and data.config.sampler != "grid":
        figures += search_figures(data.study, data.config)
    return figures


def save_png(figure: Figure, folder: Path) -> Path:
    path = folder / f"{figure.name}.png"
    figure.figure.savefig(path, dpi=110)
    return path
