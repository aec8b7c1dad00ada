"""Turn a study into reports/NAME/index.html and report.pdf (figures beside them)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import matplotlib.pyplot as plt
import optuna
import pandas as pd
from markupsafe import Markup, escape
from matplotlib.backends.backend_pdf import PdfPages
from mlflow.tracking import MlflowClient

from harness import __version__, stats
from harness.config import StudyConfig
from harness.errors import ConfigError
from harness.report import aggregate, figures
from harness.stores.opening import Stores
from harness.training.metrics import METRICS

SUMMARY = "summary.json"  # each report's numbers, for the index of reports
SUMMARY_FORMAT = 2
SUMMARY_FORMATS = (1, 2)  # what the index of reports reads (1: without comparisons)
INDEX = "index.html"
PDF_FRONT = 8  # Pareto-optimal configurations listed on the PDF's summary page


def table_metrics(table: pd.DataFrame) -> list[tuple[str, str, int]]:
    """(metric, label, digits) of the metrics the configurations table shows: all of them for a
    single configuration; else test accuracy and those that differ between configurations (a
    column equal everywhere, such as the parameter count of a beta sweep, says nothing)."""

    def varies(name: str, digits: int) -> bool:
        column = f"{name}_mean"
        return column in table and table[column].round(digits).nunique() > 1

    return [
        (name, spec.label, spec.digits)
        for name, spec in METRICS.items()
        if len(table) <= 1 or name == "test_accuracy" or varies(name, spec.digits)
    ]


def _cell(row: pd.Series, metric: str, digits: int) -> str:
    mean, sd, half = row[f"{metric}_mean"], row[f"{metric}_sd"], row[f"{metric}_ci95"]
    if math.isnan(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    if not math.isnan(sd):
        text += f" ± {sd:.{digits}f} (CI ±{half:.{digits}f})"
    return text


def table_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells of the configurations table (with several
    objectives, a "Pareto" column marks the Pareto-optimal configurations)."""
    pareto = "pareto" in table
    stopped = "stopped" in table
    columns = ["configuration", "seeds"] + (["stopped"] if stopped else [])
    columns += ["vs best"] + (["Pareto"] if pareto else [])
    shown = table_metrics(table)
    columns += [label for _, label, _ in shown]
    rows = [
        [row["config"], str(row["seeds"])]
        + ([str(row["stopped"])] if stopped else [])
        + [row["verdict"]]
        + (["yes" if row["pareto"] else ""] if pareto else [])
        + [_cell(row, m, d) for m, _, d in shown]
        for _, row in table.iterrows()
    ]
    return columns, rows


def _front(config: StudyConfig, table: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal rows of the configurations table, best first in the first objective."""
    if "pareto" not in table:
        return table.iloc[0:0]
    first = config.objective
    return table[table["pareto"]].sort_values(
        f"{first.metric}_mean", ascending=first.direction == "minimize"
    )


def pareto_rows(config: StudyConfig, table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Column names and cells of the table of Pareto-optimal configurations: each objective's
    mean ± sd over seeds (CI half-width), best first in the first objective."""
    digits = {name: spec.digits for name, spec in METRICS.items()}
    columns = ["configuration", "seeds"] + [
        f"{_label(o.metric)} ({'max' if o.direction == 'maximize' else 'min'})"
        for o in config.objectives
    ]
    rows = [
        [row["config"], str(row["seeds"])]
        + [_cell(row, o.metric, digits.get(o.metric, 4)) for o in config.objectives]
        for _, row in _front(config, table).iterrows()
    ]
    return columns, rows


def _label(metric: str) -> str:
    return METRICS[metric].label if metric in METRICS else metric


def _signed(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    return f"{round(value, digits) or 0.0:+.{digits}f}"  # no "-0.0000"


def _p(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if value >= 1e-3 else f"{value:.1e}"


def comparison_rows(table: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]]:
    """Column names and cells of the table of each configuration against the best one, in
    the (first) objective: test, n, difference with its 95 % CI, raw and Holm-adjusted p,
    minimum detectable effect and verdict; the best first."""
    digits = METRICS[metric].digits if metric in METRICS else 4
    columns = ["configuration", "test", "n", "difference vs best", "95 % CI", "p", "p (Holm)",
               "MDE", "verdict"]  # fmt: skip
    rows = []
    for _, row in table.sort_values("best", ascending=False, kind="stable").iterrows():
        if row["best"]:
            rows.append([row["config"], "", str(row["seeds"]), "best", "", "", "", "", "best"])
            continue
        n = str(row["pairs"]) if row["test"] == "paired" else f"{row['seeds']}"
        low, high = _signed(row["diff_ci_low"], digits), _signed(row["diff_ci_high"], digits)
        rows.append(
            [
                row["config"],
                row["test"],
                n,
                _signed(row["diff_vs_best"], digits),
                "-" if low == "-" else f"[{low}, {high}]",
                _p(row["p_vs_best"]),
                _p(row["p_holm"]),
                "-" if math.isnan(row["mde"]) else f"{row['mde']:.{digits}f}",
                row["verdict"],
            ]
        )
    return columns, rows


def comparison_notes(table: pd.DataFrame) -> list[str]:
    """What a reader must know to read the table against the best: the tests used, and where
    n is too small for any exact test."""
    others = table[~table["best"]] if not table.empty else table
    notes = [f"{name}: {stats.TESTS[name]}" for name in sorted(set(others.get("test", [])))]
    if (others.get("test") == "welch").any():
        notes.append(
            "Welch's test where a configuration and the best share fewer than 2 seeds: "
            "the pairing could not be used"
        )
    sizes = [int(row["pairs"]) for _, row in others.iterrows() if row["test"] == "paired"]
    warning = stats.small_n_warning(min(sizes)) if sizes else None
    return notes + ([warning] if warning else [])


def _best(data: aggregate.StudyData, table: pd.DataFrame) -> str:
    """The best configuration in the (first) objective; with several objectives, also how
    many are Pareto-optimal."""
    objective = data.config.objective
    if table.empty:
        return "none yet"
    column = f"{objective.metric}_mean"
    ordered = table.sort_values(column, ascending=objective.direction == "minimize")
    best = ordered.iloc[0]
    text = (
        f"{best['config']}: {objective.metric} {best[column]:.4f} (mean of {best['seeds']} seeds)"
    )
    if "pareto" in table:
        text += (
            f", best in the first of {len(data.config.objectives)} objectives; "
            f"{int(table['pareto'].sum())} of {len(table)} configurations are Pareto-optimal"
        )
    return text


def _checksum_lines(runs: pd.DataFrame) -> list[str]:
    """One reproduction line per data set the runs used: its name and checksum."""
    if runs.empty:
        return ["data checksum: -"]
    pairs = runs[["dataset", "data_checksum"]].drop_duplicates().itertuples(index=False)
    return [f"data checksum ({name}): {checksum or '-'}" for name, checksum in pairs]


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
        "objectives": ", ".join(f"{o.metric} ({o.direction})" for o in data.config.objectives),
        "best": _best(data, table),
        "reproduce": "\n".join(
            [
                f"make study NAME={data.config.name}",
                f"make report NAME={data.config.name}",
                f"harness version: {__version__}",
                f"git commit: {first['commit'] if first is not None else '-'}",
                *_checksum_lines(runs),
                f"device: {first['device'] if first is not None else '-'}",
            ]
        ),
    }


def _pdf(
    path: Path, summary: dict[str, str], tables, figure_list, missing, front=(), notes=()
) -> None:
    """A summary page (with several objectives, the Pareto-optimal configurations listed:
    `front`, rows of `pareto_rows`), the tables (`tables`: (title, columns, rows), with
    `notes` below the last; as many pages as each needs), then a page per figure."""
    with PdfPages(path) as pdf:
        page = plt.figure(figsize=(11.7, 8.3))
        lines = [f"Study {summary['name']}", "", summary["description"], ""]
        keys = ("varied", "sampler", "objectives", "run_counts", "devices", "compute_time", "best")
        for key in keys:
            lines.append(f"{key.replace('_', ' ')}: {summary[key]}")
        lines += [f"Pareto-optimal: {row[0]}: {'; '.join(row[2:])}" for row in front[:PDF_FRONT]]
        if len(front) > PDF_FRONT:  # the page's table is below: the text must end above it
            lines.append(f"Pareto-optimal: {len(front) - PDF_FRONT} more (index.html lists all)")
        lines += [f"not complete: {note}" for note in missing]
        page.text(0.04, 0.96, "\n".join(lines), va="top", fontsize=9, wrap=True)
        pdf.savefig(page)
        plt.close(page)
        for number, (title, columns, rows) in enumerate(tables):
            if rows:
                last = number == len(tables) - 1
                _pdf_table(pdf, title, columns, rows, list(notes) if last else [])
        for figure in figure_list:
            figure.figure.suptitle(figure.title, fontsize=11)
            figure.figure.text(0.01, 0.005, figure.caption, fontsize=7, wrap=True, va="bottom")
            figure.figure.tight_layout(rect=(0, 0.08, 1, 0.95))
            pdf.savefig(figure.figure)
        info = pdf.infodict()
        info["Title"] = f"Study {summary['name']}"


PDF_PAGE = (11.7, 8.3)  # A4 landscape, inches
PDF_MARGIN = 0.35  # inches on every side
PDF_FONT = 7  # points
PDF_NOTES = 0.9  # inches kept under a table for its notes
CELL_PAD = 6.0  # points of space left and right of a cell's text


def _pdf_table(
    pdf: PdfPages, title: str, columns: list[str], rows: list[list[str]], notes: list[str]
) -> None:
    """The table on as many pages as it needs (`pdf_table_pages`), notes under the last."""
    for page in pdf_table_pages(columns, rows, notes, title):
        pdf.savefig(page)
        plt.close(page)


def _lines(text: str, longest: int) -> list[str]:
    """A cell's lines: "mean ± sd (CI ±h)" as "mean ± sd" over "(CI ±h)"; text longer than
    `longest` characters in two at a space near its middle."""
    if " (CI " in text:
        head, _, tail = text.partition(" (CI ")
        return [head, f"(CI {tail}"]
    if len(text) > longest and " " in text:
        cut = text.rfind(" ", 0, len(text) // 2 + 4)
        cut = cut if cut > 0 else text.find(" ")
        return [text[:cut], text[cut + 1 :]]
    return [text]


def pdf_table_pages(
    columns: list[str], rows: list[list[str]], notes: list[str], title: str = "Configurations"
) -> list[Any]:
    """The table laid out for A4 landscape pages, as matplotlib figures: the columns that name
    a configuration (up to "vs best" and "Pareto") on every page, the metrics in groups as wide
    as the page; as many rows a page as fit above the notes' room; a cell's mean ± sd over its
    CI. Every column is
    as wide as its widest text, measured with the renderer that draws it, so no text runs into
    its neighbour's cell."""
    fixed = next((i + 1 for i, c in enumerate(columns) if c in ("vs best", "Pareto")), 1)
    if "Pareto" in columns:
        fixed = columns.index("Pareto") + 1
    cells = [[_lines(c, 14) for c in columns]] + [[_lines(c, 24) for c in row] for row in rows]
    probe = plt.figure(figsize=PDF_PAGE)
    renderer = probe.canvas.get_renderer()

    def width(text: str) -> float:  # points
        extent = probe.text(0, 0, text, fontsize=PDF_FONT).get_window_extent(renderer)
        return extent.width * 72.0 / probe.dpi

    widths = [
        max(width(line) for row in cells for line in row[j]) + 2 * CELL_PAD
        for j in range(len(columns))
    ]
    plt.close(probe)
    usable = (PDF_PAGE[0] - 2 * PDF_MARGIN) * 72.0
    groups: list[list[int]] = []
    for j in range(fixed, len(columns)):
        base = sum(widths[:fixed])
        if groups and base + sum(widths[k] for k in groups[-1]) + widths[j] <= usable:
            groups[-1].append(j)
        else:
            groups.append([j])
    groups = groups or [[]]
    line_height = PDF_FONT * 1.45 / 72.0  # inches
    heights_all = [max(len(cell) for cell in row) * line_height + 0.06 for row in cells]
    # rows a page holds: under the title, above the notes' room
    room = PDF_PAGE[1] - 2 * PDF_MARGIN - 0.25 - PDF_NOTES - heights_all[0]
    starts = [0]
    used = 0.0
    for i, height in enumerate(heights_all[1:]):
        if used + height > room and i > starts[-1]:
            starts.append(i)
            used = 0.0
        used += height
    chunks = [rows[a:b] for a, b in zip(starts, [*starts[1:], len(rows)], strict=True)] or [[]]
    pages = []
    for g, group in enumerate(groups):
        shown = list(range(fixed)) + group
        for c, chunk in enumerate(chunks):
            first = starts[c]
            table_cells = [cells[0]] + cells[1 + first : 1 + first + len(chunk)]
            heights = [heights_all[0], *heights_all[1 + first : 1 + first + len(chunk)]]
            page = plt.figure(figsize=PDF_PAGE)
            total_w = sum(widths[j] for j in shown) / 72.0
            total_h = sum(heights)
            left = PDF_MARGIN / PDF_PAGE[0]
            top = 1 - (PDF_MARGIN + 0.25) / PDF_PAGE[1]
            ax = page.add_axes(
                (left, top - total_h / PDF_PAGE[1], total_w / PDF_PAGE[0], total_h / PDF_PAGE[1])
            )
            ax.axis("off")
            part = f" (columns {g + 1} of {len(groups)})" if len(groups) > 1 else ""
            rows_note = (
                f", rows {first + 1}-{first + len(chunk)} of {len(rows)}" if len(chunks) > 1 else ""
            )
            page.text(left, 1 - PDF_MARGIN / PDF_PAGE[1], f"{title}{part}{rows_note}",
                      fontsize=9, va="top")  # fmt: skip
            table = ax.table(
                cellText=[["\n".join(cell[j]) for j in shown] for cell in table_cells[1:]],
                colLabels=["\n".join(cells[0][j]) for j in shown],
                cellLoc="right",
                colLoc="center",
                loc="upper left",
                colWidths=[widths[j] / 72.0 / total_w for j in shown],
                bbox=(0, 0, 1, 1),
            )
            table.auto_set_font_size(False)
            table.set_fontsize(PDF_FONT)
            for (r, k), cell in table.get_celld().items():
                cell.set_height(heights[r] / total_h)
                cell.PAD = CELL_PAD / widths[shown[k]]  # (a share of the cell's width)
            last = g == len(groups) - 1 and c == len(chunks) - 1
            if notes and last:
                page.text(left, top - total_h / PDF_PAGE[1] - 0.03, "\n".join(notes), va="top",
                          fontsize=PDF_FONT, wrap=True)  # fmt: skip
            pages.append(page)
    return pages


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
    try:
        with written_aside(out_dir) as staging:
            _write(staging, data, table, figure_list)
    finally:
        for figure in figure_list:
            plt.close(figure.figure)
    return out_dir / "index.html"


@contextmanager
def written_aside(out_dir: Path) -> Iterator[Path]:
    """A new folder beside `out_dir` to write a page into; when the block ends without an
    error it replaces `out_dir` whole, so a page killed half-way leaves the previous one."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a page is for reading
    try:
        yield staging
        swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def html_templates(trim: bool = False) -> jinja2.Environment:
    """The HTML templates (harness/report/templates), escaped, with their filters: `cell`, a
    table cell whose CI goes on a line of its own, and `prose`, a description whose text in
    backticks shows as code. `trim`: block tags leave no blank lines (the index's)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=trim,
        lstrip_blocks=trim,
    )
    environment.filters["cell"] = _html_cell
    environment.filters["prose"] = _prose
    return environment


def _html_cell(text: Any) -> Markup:
    """ "0.9412 ± 0.0098 (CI ±0.0103)" as the mean ± sd, the CI under it."""
    head, found, tail = str(text).partition(" (CI ")
    if not found:
        return escape(str(text))
    return Markup('{}<br><span class="ci">(CI {}</span>').format(head, tail)


def _prose(text: Any) -> Markup:
    """A description, escaped, its `code` in backticks as <code> (unpaired backticks as
    written)."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:
        return escape(str(text))
    return Markup("").join(
        escape(part) if i % 2 == 0 else Markup("<code>{}</code>").format(part)
        for i, part in enumerate(parts)
    )


def _write(folder: Path, data: aggregate.StudyData, table: pd.DataFrame, figure_list) -> None:
    for figure in figure_list:
        figures.save_png(figure, folder)
    columns, rows = table_rows(table)
    pareto_columns, front = pareto_rows(data.config, table)
    metric = data.config.objective.metric
    versus_columns, versus = comparison_rows(table, metric) if not table.empty else ([], [])
    notes = comparison_notes(table) if not table.empty else []
    summary = _summary(data, table)
    html = (
        html_templates()
        .get_template("report.html.j2")
        .render(
            **summary,
            columns=columns,
            rows=rows,
            pareto_columns=pareto_columns,
            pareto=front,
            versus_columns=versus_columns,
            versus=versus,
            versus_notes=notes,
            objective_label=_label(metric),
            multi_objective=data.config.multi_objective,
            first_objective=data.config.objective.metric,
            missing=data.missing,
            figures=[
                {"file": f"{f.name}.png", "title": f.title, "caption": f.caption}
                for f in figure_list
            ],
        )
    )
    (folder / "index.html").write_text(html)
    table.to_csv(folder / "configurations.csv", index=False)
    record = summary_record(data, table)
    (folder / SUMMARY).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    _pdf(
        folder / "report.pdf", summary,
        [("Configurations", columns, rows), ("Against the best", versus_columns, versus)],
        figure_list, data.missing, front, notes,
    )  # fmt: skip


def swap_in(new: Path, target: Path) -> None:
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


# The index of reports -----------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summary_record(data: aggregate.StudyData, table: pd.DataFrame) -> dict[str, Any]:
    """What the index of reports shows of a study (written as NAME/summary.json): its
    description, configurations, best configuration (mean and sd over its seeds; in the first
    objective where there are several, with `objectives` and the `pareto` front beside), the
    commits and devices of its runs, and when the report was made."""
    objective = data.config.objective
    runs = data.runs
    best = None
    column = f"{objective.metric}_mean"
    if not table.empty and column in table:
        ordered = table.sort_values(column, ascending=objective.direction == "minimize")
        row = ordered.iloc[0]
        mean = _number(row[column])
        if mean is not None:
            best = {
                "config": str(row["config"]),
                "mean": mean,
                "sd": _number(row[f"{objective.metric}_sd"]),
                "seeds": int(row["seeds"]),
            }
    return {
        "format": SUMMARY_FORMAT,
        "name": data.config.name,
        "description": data.config.description.strip(),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "harness_version": __version__,
        "configurations": len(table),
        "runs": aggregate.counts(data),
        "objective": {"metric": objective.metric, "direction": objective.direction},
        "best": best,
        "comparisons": _comparisons_record(table, objective.metric),
        **(_pareto_record(data.config, table) if data.config.multi_objective else {}),
        "commits": sorted(set(runs["commit"])) if not runs.empty else [],
        "devices": sorted(set(runs["device"])) if not runs.empty else [],
        "missing": list(data.missing),
    }


def _comparisons_record(table: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    """Each configuration but the best against the best, in the (first) objective."""
    if table.empty:
        return []
    return [
        {
            "config": str(row["config"]),
            "seeds": int(row["seeds"]),
            "mean": _number(row[f"{metric}_mean"]),
            "sd": _number(row[f"{metric}_sd"]),
            "diff_vs_best": _number(row["diff_vs_best"]),
            "ci95": [_number(row["diff_ci_low"]), _number(row["diff_ci_high"])],
            "p": _number(row["p_vs_best"]),
            "p_holm": _number(row["p_holm"]),
            "test": str(row["test"]),
            "pairs": int(row["pairs"]),
            "mde": _number(row["mde"]),
            "verdict": str(row["verdict"]),
            **({"stopped": str(row["stopped"])} if "stopped" in row else {}),
        }
        for _, row in table[~table["best"]].iterrows()
    ]


def _pareto_record(config: StudyConfig, table: pd.DataFrame) -> dict[str, Any]:
    """A multi-objective study's objectives, and its Pareto-optimal configurations with each
    objective's mean over seeds."""
    return {
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in config.objectives],
        "pareto": [
            {
                "config": str(row["config"]),
                "seeds": int(row["seeds"]),
                "means": {o.metric: _number(row[f"{o.metric}_mean"]) for o in config.objectives},
            }
            for _, row in _front(config, table).iterrows()
        ],
    }


def read_summary(folder: Path) -> dict[str, Any] | None:
    """A report folder's summary.json, or None if it has none (an older report) or it is
    not one this version wrote."""
    try:
        record = json.loads((folder / SUMMARY).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") not in SUMMARY_FORMATS:
        return None
    return record


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _texts(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _best_text(record: dict[str, Any]) -> tuple[str, str]:
    """(configuration, 'metric mean ± sd (n seeds)') of a summary's best configuration."""
    best = record.get("best")
    mean = _number(best.get("mean")) if isinstance(best, dict) else None
    if mean is None:
        return "", "none yet"
    metric = _text((record.get("objective") or {}).get("metric"))
    sd = _number(best.get("sd"))
    seeds = best.get("seeds")
    value = f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")
    if isinstance(seeds, int):
        value += f" ({seeds} seed{'s' if seeds != 1 else ''})"
    objectives, pareto = record.get("objectives"), record.get("pareto")
    if isinstance(objectives, list) and len(objectives) > 1 and isinstance(pareto, list):
        value += f"; first of {len(objectives)} objectives, {len(pareto)} Pareto-optimal"
    return _text(best.get("config")), f"{metric} {value}".strip()


def _when(stamp: str) -> str:
    try:
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return stamp
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def index_rows(reports_dir: Path) -> list[dict[str, Any]]:
    """One row per report folder in `reports_dir` (by name): the numbers of its summary.json;
    a folder with only an index.html (an older report) is a bare link; others are skipped.
    Reads nothing but those files: never the stores of a study."""
    rows = []
    folders = sorted(p for p in Path(reports_dir).iterdir() if p.is_dir())
    for folder in folders:
        if folder.name.startswith("."):  # a report being written, or the one it replaces
            continue
        record = read_summary(folder)
        if record is None and not (folder / "index.html").is_file():
            continue
        row: dict[str, Any] = {
            "name": folder.name,
            "href": f"{quote(folder.name)}/index.html",
            "summary": record is not None,
        }
        if record is not None:
            config, best = _best_text(record)
            commits = _texts(record.get("commits"))
            configurations = record.get("configurations")
            row.update(
                description=_text(record.get("description")),
                configurations=configurations if isinstance(configurations, int) else "",
                best_config=config,
                best=best,
                date=_when(_text(record.get("generated"))),
                commits=[(c[:10] + ("+dirty" if c.endswith("+dirty") else ""), c) for c in commits],
                devices=", ".join(_texts(record.get("devices"))),
                missing=bool(record.get("missing")),
            )
        rows.append(row)
    return rows


def write_index(reports_dir: Path) -> Path:
    """Write reports_dir/index.html, the table of every report there, atomically (a temporary
    file moved into place): a reader sees the old index or the new one, never half of one."""
    reports_dir = Path(reports_dir)
    html = (
        html_templates(trim=True).get_template("index.html.j2").render(rows=index_rows(reports_dir))
    )
    target = reports_dir / INDEX
    handle, temporary = tempfile.mkstemp(prefix=f".{INDEX}.", dir=reports_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(html)
            stream.flush()
            os.fsync(stream.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)  # as any other file of the report (mkstemp: 0600)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
