"""Seaborn figures of a study, each with a caption; saved as PNG (page) and kept for the PDF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.report.aggregate import StudyData, trials_frame  # noqa: E402

matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42})  # text stays text
SMOOTH = 10  # iterations in the rolling mean of the train-loss curve


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
            "seeds; the line and bars are the mean and standard deviation over seeds."
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
    """Mean test accuracy over two parameters that vary together."""
    if len(data.varied) < 2 or table.empty or data.config.sampler != "grid":
        return []
    rows, cols = data.varied[0], data.varied[1]
    grid = table.pivot_table(index=rows, columns=cols, values="test_accuracy_mean")
    fig, ax = plt.subplots(figsize=(1.2 * len(grid.columns) + 3, 0.6 * len(grid) + 2))
    sns.heatmap(grid, annot=True, fmt=".3f", cmap="viridis", ax=ax, cbar_kws={"label": "accuracy"})
    fig.tight_layout()
    return [
        Figure(
            f"heatmap_{rows}_{cols}",
            f"Test accuracy over {rows} and {cols}",
            f"Mean test accuracy over seeds for each combination of {rows} and {cols}"
            + (", averaged over the other varied parameters." if len(data.varied) > 2 else "."),
            fig,
        )
    ]


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


def search_figures(study: optuna.Study) -> list[Figure]:
    """Optimisation history and parameter importances of a search."""
    history = trials_frame(study)
    figures = []
    if len(history) >= 2:
        fig, ax = plt.subplots(figsize=(7, 4))
        sns.scatterplot(history, x="trial", y="value", ax=ax, label="trial")
        sns.lineplot(history, x="trial", y="best so far", ax=ax, color="C3", label="best so far")
        ax.set_ylabel("objective")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figures.append(
            Figure(
                "optimisation_history",
                "Optimisation history",
                "The objective of each complete trial in the order they ran, and the best so far.",
                fig,
            )
        )
    if len(history) >= 3:
        importances = optuna.importance.get_param_importances(study)
        frame = pd.DataFrame(
            {"parameter": list(importances), "importance": list(importances.values())}
        )
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(frame) + 1.5))
        sns.barplot(frame, x="importance", y="parameter", ax=ax, color="C0")
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        figures.append(
            Figure(
                "parameter_importances",
                "Parameter importances",
                "How much of the objective's variation each parameter explains, by Optuna's "
                "default importance evaluator (fANOVA) over the complete trials.",
                fig,
            )
        )
    return figures


def all_figures(data: StudyData, table: pd.DataFrame) -> list[Figure]:
    """Every figure that the study's data supports."""
    sns.set_theme(style="whitegrid", context="notebook")
    figures: list[Figure] = []
    if not data.runs.empty and (data.runs["status"] == "finished").any():
        figures += accuracy_by_parameter(data)
        figures += loss_curves(data)
        figures += heatmap(data, table)
        figures += rate_vs_latency(data)
    if data.study is not None and data.config.sampler != "grid":
        figures += search_figures(data.study)
    return figures


def save_png(figure: Figure, folder: Path) -> Path:
    path = folder / f"{figure.name}.png"
    figure.figure.savefig(path, dpi=110)
    return path
