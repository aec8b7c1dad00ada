"""Turn a study into reports/NAME/index.html and report.pdf (figures beside them)."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt
import optuna
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from mlflow.tracking import MlflowClient

from harness import __version__
from harness.config import ConfigError, StudyConfig
from harness.report import aggregate, figures
from harness.stores import Stores

TABLE_METRICS = (
    ("test_accuracy", "test accuracy", 4),
    ("rate_accuracy", "rate acc.", 4),
    ("latency_accuracy", "latency acc.", 4),
    ("test_loss", "test loss", 3),
    ("train_seconds", "train s", 1),
    ("hidden_firing_rate", "hidden rate", 4),
    ("output_firing_rate", "output rate", 4),
)


def _cell(row: pd.Series, metric: str, digits: int) -> str:
    mean, sd, half = row[f"{metric}_mean"], row[f"{metric}_sd"], row[f"{metric}_ci95"]
    if math.isnan(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    if not math.isnan(sd):
        text += f" ± {sd:.{digits}f} (CI ±{half:.{digits}f})"
    return text


def table_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells of the configurations table."""
    columns = ["configuration", "seeds"] + [label for _, label, _ in TABLE_METRICS]
    rows = [
        [row["config"], str(row["seeds"])] + [_cell(row, m, d) for m, _, d in TABLE_METRICS]
        for _, row in table.iterrows()
    ]
    return columns, rows


def _best(data: aggregate.StudyData, table: pd.DataFrame) -> str:
    objective = data.config.objective
    if table.empty:
        return "none yet"
    column = f"{objective.metric}_mean"
    ordered = table.sort_values(column, ascending=objective.direction == "minimize")
    best = ordered.iloc[0]
    return (
        f"{best['config']}: {objective.metric} {best[column]:.4f} (mean of {best['seeds']} seeds)"
    )


def _summary(data: aggregate.StudyData, table: pd.DataFrame) -> dict[str, str]:
    runs = data.runs
    counts = aggregate.counts(data)
    seconds = float(runs["train_seconds"].sum(skipna=True)) if not runs.empty else 0.0
    first = runs.iloc[0] if not runs.empty else None
    return {
        "name": data.config.name,
        "description": data.config.description.strip(),
        "varied": ", ".join(
            f"{k} ({len(v) if isinstance(v, list) else 'range'})"
            for k, v in data.config.space.items()
        ),
        "sampler": data.config.sampler
        + (f", {data.config.n_trials} trials" if data.config.n_trials else ""),
        "run_counts": ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none",
        "devices": ", ".join(sorted(set(runs["device"]))) if not runs.empty else "-",
        "compute_time": f"{seconds:.0f} s of training ({seconds / 60:.1f} min)",
        "best": _best(data, table),
        "reproduce": "\n".join(
            [
                f"make study NAME={data.config.name}",
                f"make report NAME={data.config.name}",
                f"harness version: {__version__}",
                f"git commit: {first['commit'] if first is not None else '-'}",
                f"MNIST checksum: {first['data_checksum'] if first is not None else '-'}",
                f"device: {first['device'] if first is not None else '-'}",
            ]
        ),
    }


def _pdf(path: Path, summary: dict[str, str], columns, rows, figure_list, missing) -> None:
    with PdfPages(path) as pdf:
        page = plt.figure(figsize=(11.7, 8.3))
        lines = [f"Study {summary['name']}", "", summary["description"], ""]
        for key in ("varied", "sampler", "run_counts", "devices", "compute_time", "best"):
            lines.append(f"{key.replace('_', ' ')}: {summary[key]}")
        lines += [f"not complete: {note}" for note in missing]
        page.text(0.04, 0.96, "\n".join(lines), va="top", fontsize=9, wrap=True)
        if rows:
            ax = page.add_axes((0.03, 0.05, 0.94, 0.5))
            ax.axis("off")
            table = ax.table(cellText=rows, colLabels=columns, loc="upper center")
            table.auto_set_font_size(False)
            table.set_fontsize(6)
        pdf.savefig(page)
        plt.close(page)
        for figure in figure_list:
            figure.figure.suptitle(figure.title, fontsize=11)
            figure.figure.text(0.01, 0.005, figure.caption, fontsize=7, wrap=True, va="bottom")
            figure.figure.tight_layout(rect=(0, 0.08, 1, 0.95))
            pdf.savefig(figure.figure)
        info = pdf.infodict()
        info["Title"] = f"Study {summary['name']}"


def build_report(config: StudyConfig, stores: Stores, out_dir: Path) -> Path:
    """Write index.html, report.pdf and the figures for `config`'s study into `out_dir`.

    The report is written into a new folder beside `out_dir` and swapped in at the end, so an
    interrupted report leaves the previous one whole.
    """
    out_dir = Path(out_dir)
    if out_dir.name in ("", ".", "..") or out_dir.name.startswith("."):
        raise ConfigError(f"a report folder must have a plain name, not {str(out_dir)!r}")
    client = MlflowClient(stores.tracking_uri)
    try:
        study = optuna.load_study(study_name=config.name, storage=stores.storage)
    except KeyError:
        study = None
    data = aggregate.load(config, study, client)
    table = aggregate.configurations(data)
    figure_list = figures.all_figures(data, table)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write(staging, data, table, figure_list)
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for figure in figure_list:
            plt.close(figure.figure)
    return out_dir / "index.html"


def _write(folder: Path, data: aggregate.StudyData, table: pd.DataFrame, figure_list) -> None:
    for figure in figure_list:
        figures.save_png(figure, folder)
    columns, rows = table_rows(table)
    summary = _summary(data, table)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = environment.get_template("report.html.j2").render(
        **summary,
        columns=columns,
        rows=rows,
        missing=data.missing,
        figures=[
            {"file": f"{f.name}.png", "title": f.title, "caption": f.caption} for f in figure_list
        ],
    )
    (folder / "index.html").write_text(html)
    table.to_csv(folder / "configurations.csv", index=False)
    _pdf(folder / "report.pdf", summary, columns, rows, figure_list, data.missing)


def _swap_in(new: Path, target: Path) -> None:
    """Put the folder `new` at `target`, replacing what was there; the old report stays whole
    until the new one is complete (two renames on one file system)."""
    old = target.with_name(f".{target.name}.old")
    if old.exists() and not target.exists():  # the last swap was cut between its renames
        old.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
