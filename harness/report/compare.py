"""Compare two studies configuration by configuration: is B better than A, beyond seed noise?

Each side is a study read from its stores (the same or other ones: one study on two commits or
two machines). Configurations are matched by their values of the parameters either study
varies; per configuration, B - A is tested seed by seed (paired t-test on the seeds both
sides ran: a seed fixes the initial weights and batches on both) where they share 2 or more,
else with Welch's unpaired test (`unpaired` forces it). p-values are Holm-adjusted over the
configurations, and the verdicts read the adjusted ones; each row carries its minimum
detectable effect (harness.stats). The result goes to the terminal, a JSON document and an
HTML page with one Seaborn figure.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from scipy import stats

from harness import stats as stats_
from harness.config import MUTABLE_STUDY_KEYS, StudyConfig
from harness.errors import ConfigError
from harness.report import figures
from harness.report.aggregate import StudyData, load
from harness.report.render import html_templates, written_aside
from harness.stores.layout import redact
from harness.stores.opening import Stores
from harness.training.metrics import METRICS

TOO_FEW = "too few seeds"
SAME = "no significant difference"
FIGURE = "comparison"  # the page's figure file stem


@dataclass
class Side:
    """One study as read from its stores."""

    label: str  # "A" or "B"
    config: StudyConfig
    stores: Stores
    data: StudyData
    notes: list[str] = field(default_factory=list)  # said on stderr and on the page

    @property
    def title(self) -> str:
        return f"{self.label} {self.config.name}"


@dataclass
class Comparison:
    """Two studies, the metric, and one row per configuration (`table`)."""

    a: Side
    b: Side
    metric: str
    direction: str | None
    alpha: float
    keys: list[str]  # the parameters configurations are matched on
    settings: dict[str, tuple[Any, Any]]  # other run settings that differ: key -> (A, B)
    table: pd.DataFrame
    values: pd.DataFrame  # side, configuration, seed, value: every finished run's metric
    unpaired: bool = False  # Welch's test everywhere, even where the seeds match

    @property
    def tests(self) -> list[str]:
        """The tests the rows used ("paired", "welch"), in that order."""
        used = set(self.table["test"]) if "test" in self.table else set()
        return [name for name in stats_.TESTS if name in used]

    @property
    def paired(self) -> bool:
        """Was every configuration in both studies compared seed by seed?"""
        return self.tests == ["paired"]

    @property
    def test(self) -> str:
        """The tests, in words."""
        if self.unpaired:
            return "Welch's t-test (--unpaired)"
        words = {"paired": "paired t-test over common seeds", "welch": "Welch's t-test"}
        if len(self.tests) == 2:
            return "paired t-test over common seeds (Welch's where fewer than 2 are common)"
        return words[self.tests[0]] if self.tests else words["paired"]

    @property
    def confidence(self) -> float:
        return 1 - self.alpha

    @property
    def percent(self) -> str:
        """The confidence level in words, e.g. '95 %'."""
        return f"{100 * self.confidence:.6g} %"


def check_options(metric: str | None, alpha: float) -> None:
    """ConfigError for an unknown --metric or an --alpha outside (0, 1), before any store."""
    if metric is not None and metric not in METRICS:
        raise ConfigError(f"--metric: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    if not 0 < alpha < 1:  # also NaN
        raise ConfigError(f"--alpha must be a level strictly between 0 and 1, got {alpha}")


def read_side(label: str, config: StudyConfig, stores: Stores) -> Side:
    """Load one study's settled runs from its stores; ConfigError if the study is not there
    or has no finished run.

    The runs are read with the study config the Optuna study was created from (what they ran
    with), which is the study file's unless the file changed since; a note then says so."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = _where(stores)
    try:
        study = optuna.load_study(study_name=config.name, storage=stores.storage)
    except KeyError:
        flags = "--output-dir/--storage" if label == "A" else "--b-output-dir/--b-storage"
        raise ConfigError(
            f"study '{config.name}' ({label}) is not in the stores ({where}): run it first "
            f"(make study NAME={config.name}) or point {flags} at its stores"
        ) from None
    config, notes = _stored_config(config, study)
    data = load(config, study, MlflowClient(stores.tracking_uri))
    if data.runs.empty or not (data.runs["status"] == "finished").any():
        raise ConfigError(
            f"study '{config.name}' ({label}) has no finished runs of settled trials in {where}"
        )
    return Side(label, config, stores, data, notes)


def _where(stores: Stores) -> str:
    """The stores in words, passwords left out (the page keeps what it says)."""
    return f"{stores.description}, mlflow {redact(stores.tracking_uri)}"


def _stored_config(config: StudyConfig, study: optuna.Study) -> tuple[StudyConfig, list[str]]:
    """The config the study was run with (kept by Optuna), and a note if the file differs."""
    stored = study.user_attrs.get("config")
    current = config.model_dump(mode="json")
    changed = [
        k
        for k in sorted(set(stored or {}) | set(current))
        if k not in MUTABLE_STUDY_KEYS and (stored or {}).get(k) != current.get(k)
    ]
    if stored is None or not changed:  # a new description is no other study
        return config, []
    try:
        kept = StudyConfig.model_validate(stored)
    except ValidationError:
        return config, [
            f"study '{config.name}': its stored config is unreadable, so its file is used"
        ]
    return kept, [
        f"study '{config.name}' was run with another version of its file ({', '.join(changed)} "
        "differ): its runs are read with the settings they ran with"
    ]


def direction_of(metric: str, config: StudyConfig) -> str | None:
    """'maximize' or 'minimize' for the metric (the objective's own direction for one of the
    study's objective metrics), None where neither way is better (firing rates)."""
    for objective in config.objectives:
        if metric == objective.metric:
            return objective.direction
    return METRICS[metric].direction


def _base_values(config: StudyConfig) -> dict[str, Any]:
    return config.base_config.model_dump()


def _key_values(side: Side, keys: list[str]) -> pd.DataFrame:
    """The side's runs with a column per matched key: a key outside its space takes the
    study's base value (every run has it)."""
    runs = side.data.runs.copy()
    base = _base_values(side.config)
    for key in keys:
        if key not in side.config.space or key not in runs:
            runs[key] = [base[key]] * len(runs)
    return runs


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "base"


def verdict(
    n_a: int, n_b: int, difference: float, p: float, alpha: float, direction: str | None
) -> str:
    """What B is relative to A, for a configuration both studies have: better | worse
    (higher | lower where neither way is better), no significant difference, or too few
    seeds (< 2 finished runs on a side)."""
    if n_a < 2 or n_b < 2:
        return TOO_FEW
    if math.isnan(p) or p >= alpha or difference == 0:  # NaN: equal values, no spread
        return SAME
    higher = difference > 0
    if direction is None:
        return "higher" if higher else "lower"
    return "better" if higher == (direction == "maximize") else "worse"


def _side_stats(values: np.ndarray, confidence: float) -> dict[str, float]:
    """n, mean, sd and the Student's t confidence interval of the mean of one side."""
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=stats.sem(values))
    sd = float(np.std(values, ddof=1))
    return {"n": n, "mean": mean, "sd": sd, "ci_low": float(low), "ci_high": float(high)}


def compare(
    a: Side, b: Side, metric: str | None = None, alpha: float = 0.05, unpaired: bool = False
) -> Comparison:
    """Match the two studies' configurations and test B - A on each (see module docstring).

    `metric` defaults to A's objective metric (its first, if several); a configuration
    present on one side only is kept, with verdict "only in A" or "only in B". Runs are
    paired by seed where both sides ran 2 or more of the same seeds, unless `unpaired`."""
    check_options(metric, alpha)
    metric = metric or a.config.objective.metric
    for side in (a, b):
        runs = side.data.runs
        if metric not in runs or not runs.loc[runs["status"] == "finished", metric].notna().any():
            raise ConfigError(
                f"no finished run of study '{side.config.name}' ({side.label}) has the metric "
                f"{metric!r}"
            )
    direction = direction_of(metric, a.config)
    keys = list(dict.fromkeys([*a.config.space, *b.config.space]))
    base_a, base_b = _base_values(a.config), _base_values(b.config)
    settings = {
        k: (base_a[k], base_b[k])
        for k in base_a
        if k not in keys and k != "seed" and base_a[k] != base_b[k]
    }
    if a.config.seed_list != b.config.seed_list:
        settings["seeds"] = (a.config.seed_list, b.config.seed_list)
    groups: dict[tuple, dict[str, Any]] = {}
    values = []
    for side in (a, b):
        runs = _key_values(side, keys)
        for point, group in runs.groupby(keys, sort=False, dropna=False):
            point = point if isinstance(point, tuple) else (point,)
            entry = groups.setdefault(point, {"params": dict(zip(keys, point, strict=True))})
            finished = group[(group["status"] == "finished") & group[metric].notna()]
            entry[side.label] = finished[metric].to_numpy(dtype=float)
            entry[f"{side.label} by seed"] = dict(
                zip(finished["seed"].astype(int), finished[metric].astype(float), strict=True)
            )
            label = _label(entry["params"])
            values += [
                {"side": side.title, "configuration": label, "seed": s, "value": v}
                for s, v in zip(finished["seed"], finished[metric], strict=True)
            ]
    rows = []
    for entry in groups.values():
        in_a, in_b = "A" in entry, "B" in entry
        va, vb = entry.get("A", np.array([])), entry.get("B", np.array([]))
        sa, sb = _side_stats(va, 1 - alpha), _side_stats(vb, 1 - alpha)
        result = stats_.compare(
            entry.get("A by seed", {}), entry.get("B by seed", {}), alpha, unpaired
        )
        row: dict[str, Any] = {"configuration": _label(entry["params"]), **entry["params"]}
        row.update({f"{k}_a": v for k, v in sa.items()})
        row.update({f"{k}_b": v for k, v in sb.items()})
        row.update({k: getattr(result, k) for k in ("difference", "ci_low", "ci_high", "t", "df")})
        row.update(test=result.test if in_a and in_b else "", pairs=result.pairs, p=result.p)
        row["mde"] = result.mde
        row["in_both"] = in_a and in_b
        row["only"] = "" if in_a and in_b else ("only in A" if in_a else "only in B")
        row["values_a"], row["values_b"] = va.tolist(), vb.tolist()
        rows.append(row)
    table = pd.DataFrame(rows)
    both = table["in_both"]
    table["p_holm"] = math.nan
    table.loc[both, "p_holm"] = stats_.holm(list(table.loc[both, "p"]), alpha)
    table["verdict"] = [
        verdict(
            *((r["pairs"], r["pairs"]) if r["test"] == "paired" else (r["n_a"], r["n_b"])),
            r["difference"], r["p_holm"], alpha, direction,
        )
        if r["in_both"]
        else r["only"]
        for _, r in table.iterrows()
    ]  # fmt: skip
    table = table.drop(columns=["in_both", "only"])
    frame = pd.DataFrame(values, columns=["side", "configuration", "seed", "value"])
    return Comparison(a, b, metric, direction, alpha, keys, settings, table, frame, unpaired)


def counts(comparison: Comparison) -> dict[str, int]:
    """Configurations by verdict."""
    return {str(k): int(v) for k, v in comparison.table["verdict"].value_counts().items()}


def summary_line(comparison: Comparison) -> str:
    """The overall verdict in one line, with its level."""
    count = counts(comparison)
    both = sum(v for k, v in count.items() if not k.startswith("only in"))
    level = f"alpha {comparison.alpha:g}"
    if comparison.direction is None:
        words = ["higher", "lower"]
    else:
        words = ["better", "worse"]
    parts = [f"{words[0]} in {count.get(words[0], 0)}", f"{words[1]} in {count.get(words[1], 0)}"]
    parts.append(f"{SAME} in {count.get(SAME, 0)}")
    if count.get(TOO_FEW):
        parts.append(f"{TOO_FEW} in {count[TOO_FEW]}")
    line = f"B {', '.join(parts)} of {both} configurations in both studies at {level}"
    if both == 0:
        line = f"no configuration is in both studies (matched on {', '.join(comparison.keys)})"
    only = [f"{count[k]} {k}" for k in ("only in A", "only in B") if count.get(k)]
    return line + (f"; {', '.join(only)}" if only else "")


def _direction_words(direction: str | None) -> str:
    if direction is None:
        return "neither way is better"
    return "higher is better" if direction == "maximize" else "lower is better"


def header_lines(comparison: Comparison) -> list[str]:
    """What is compared, with what test and at what level."""
    c = comparison
    lines = [
        f"A: {c.a.config.name} ({_where(c.a.stores)})",
        f"B: {c.b.config.name} ({_where(c.b.stores)})",
    ]
    if c.settings:
        lines.append(
            "settings that differ (A | B): "
            + "; ".join(f"{k} {va} | {vb}" for k, (va, vb) in c.settings.items())
        )
    lines.append(
        f"{c.metric} ({_direction_words(c.direction)}), B - A per configuration matched on "
        f"{', '.join(c.keys)}: {c.test}, {c.percent} CI, alpha {c.alpha:g}"
    )
    return lines


def _num(value: float, digits: int, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = round(float(value), digits) or 0.0  # no "-0.0000"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells, for the terminal and the page."""
    d = METRICS[comparison.metric].digits if comparison.metric in METRICS else 4
    level = f"{comparison.percent} CI"
    columns = ["configuration", "n A", "A mean ± sd", "n B", "B mean ± sd", "test", "B - A", level,
               "p", "p (Holm)", "MDE", "verdict"]  # fmt: skip
    rows = []
    for _, r in comparison.table.iterrows():
        cells = [r["configuration"]]
        for side in ("a", "b"):
            mean, sd = _num(r[f"mean_{side}"], d), _num(r[f"sd_{side}"], d)
            cells += [str(r[f"n_{side}"]), mean if sd == "-" else f"{mean} ± {sd}"]
        low, high = _num(r["ci_low"], d, True), _num(r["ci_high"], d, True)
        test = f"paired ({r['pairs']})" if r["test"] == "paired" else r["test"] or "-"
        cells += [
            test,
            _num(r["difference"], d, True),
            "-" if low == "-" else f"[{low}, {high}]",
            _p(r["p"]),
            _p(r["p_holm"]),
            _num(r["mde"], d),
            r["verdict"],
        ]
        rows.append(cells)
    return columns, rows


def format_table(comparison: Comparison) -> str:
    """The comparison as plain text: header, aligned table, overall verdict."""
    columns, rows = table_rows(comparison)
    widths = [max(len(str(x)) for x in column) for column in zip(columns, *rows, strict=True)]
    left = {0, len(columns) - 1}

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    body = [line(columns), *(line(r) for r in rows)]
    return "\n".join([*header_lines(comparison), *body, summary_line(comparison)])


def _plain(value: Any) -> Any:
    """JSON-ready: NaN as null, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(comparison: Comparison, page: Path | None = None) -> dict[str, Any]:
    """Every number of the comparison as one JSON-ready document."""
    c = comparison

    def side(s: Side) -> dict[str, Any]:
        return {
            "study": s.config.name,
            "stores": s.stores.description,
            "tracking_uri": redact(s.stores.tracking_uri),
            "seeds": s.config.seed_list,
            "notes": s.notes,
        }

    configurations = []
    for _, r in c.table.iterrows():
        entry: dict[str, Any] = {
            "configuration": r["configuration"],
            "params": {k: r[k] for k in c.keys},
        }
        for s in ("a", "b"):
            entry[s] = {k: r[f"{k}_{s}"] for k in ("n", "mean", "sd", "ci_low", "ci_high")}
            entry[s]["values"] = r[f"values_{s}"]
        entry.update({k: r[k] for k in ("difference", "ci_low", "ci_high", "t", "df", "p")})
        entry.update({k: r[k] for k in ("p_holm", "mde", "test", "pairs", "verdict")})
        configurations.append(entry)
    return _plain(
        {
            "a": side(c.a),
            "b": side(c.b),
            "metric": c.metric,
            "direction": c.direction,
            "alpha": c.alpha,
            "confidence": c.confidence,
            "test": f"{c.test}, B - A; p Holm-adjusted over the configurations in both",
            "tests": {name: stats_.TESTS[name] for name in c.tests},
            "matched_on": c.keys,
            "settings_differ": {k: list(v) for k, v in c.settings.items()},
            "configurations": configurations,
            "counts": counts(c),
            "summary": summary_line(c),
            "page": str(page) if page is not None else None,
        }
    )


def figure(comparison: Comparison) -> figures.Figure:
    """A and B means per configuration with their confidence intervals, side by side."""
    c = comparison
    sns.set_theme(style="whitegrid", context="notebook")
    order = list(c.table["configuration"])
    level = c.confidence

    def interval(v: np.ndarray) -> tuple[float, float]:
        s = _side_stats(np.asarray(v, dtype=float), level)
        return s["ci_low"], s["ci_high"]

    width = max(6.0, 1.1 * len(order) + 3)
    fig, (ax, right) = plt.subplots(
        1, 2, figsize=(2 * width, 4.5), gridspec_kw={"width_ratios": [1, 1]}
    )
    hue_order = [c.a.title, c.b.title]
    with warnings.catch_warnings():  # a lone seed has no interval: NaN, drawn as nothing
        warnings.simplefilter("ignore", RuntimeWarning)
        sns.pointplot(
            c.values, x="configuration", y="value", hue="side", order=order,
            hue_order=hue_order, errorbar=interval, dodge=0.35, linestyle="none",
            capsize=0.1, markers=["o", "s"], ax=ax,
        )  # fmt: skip
        sns.stripplot(
            c.values, x="configuration", y="value", hue="side", order=order,
            hue_order=hue_order, dodge=0.35, alpha=0.35, legend=False, ax=ax,
        )  # fmt: skip
    if ax.get_legend() is not None:
        ax.get_legend().set_title("study")
    ax.set_ylabel(c.metric.replace("_", " "))
    ax.set_xlabel(", ".join(c.keys))
    _difference_axis(right, c, order)
    for axis in (ax, right):
        if len(order) > 4:
            axis.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    caption = (
        f"Left: {c.metric} of {c.a.title} and {c.b.title} per configuration, the mean over "
        f"seeds with its {c.percent} confidence interval (Student's t), faint points single "
        f"seeds. Right: B - A with the {c.percent} confidence interval of the test in the "
        "table (paired on common seeds: the interval the verdict rests on, often far "
        "narrower than the per-study ones). A configuration with one seed has no interval."
    )
    return figures.Figure(FIGURE, f"{c.metric} of A and B per configuration", caption, fig)


def _difference_axis(ax: plt.Axes, c: Comparison, order: list[str]) -> None:
    """B - A per configuration with its confidence interval, a line at 0."""
    table = c.table.set_index("configuration").reindex(order)
    x = np.arange(len(order))
    difference = table["difference"].to_numpy(dtype=float)
    errors = np.abs(table[["ci_low", "ci_high"]].to_numpy(dtype=float).T - difference)
    colors = ["C0" if t == "paired" else "C1" for t in table["test"].fillna("")]
    for i in range(len(order)):
        ax.errorbar(x[i], difference[i], yerr=errors[:, i : i + 1], fmt="o", color=colors[i],
                    capsize=4)  # fmt: skip
    ax.axhline(0, color="0.4", linewidth=1)
    ax.set_xticks(x, order)
    ax.set_xlabel(", ".join(c.keys))
    ax.set_ylabel(f"B - A, {c.metric.replace('_', ' ')}")
    handles = [
        plt.Line2D([], [], marker="o", linestyle="none", color=color, label=label)
        for color, label in (("C0", "paired"), ("C1", "welch"))
        if label in c.tests
    ]
    if handles:
        ax.legend(handles=handles, title="test", loc="best")


def page_dir(reports_dir: Path, comparison: Comparison) -> Path:
    """reports/compare-A-vs-B (study names are plain folder names; -unpaired with Welch's
    test forced, so it does not replace the paired page)."""
    suffix = "-unpaired" if comparison.unpaired else ""
    name = f"compare-{comparison.a.config.name}-vs-{comparison.b.config.name}{suffix}"
    return Path(reports_dir) / name


def build_page(comparison: Comparison, out_dir: Path, command: str = "") -> Path:
    """Write index.html, the figure, comparison.csv and comparison.json into `out_dir`,
    written aside and swapped in at the end (an interrupted page leaves the old one whole)."""
    out_dir = Path(out_dir)
    chart = figure(comparison)
    c = comparison
    try:
        with written_aside(out_dir) as staging:
            figures.save_png(chart, staging)
            columns, rows = table_rows(comparison)
            html = (
                html_templates()
                .get_template("compare.html.j2")
                .render(
                    a=c.a.config.name,
                    b=c.b.config.name,
                    a_description=c.a.config.description.strip(),
                    b_description=c.b.config.description.strip(),
                    header=header_lines(c),
                    notes=c.a.notes + c.b.notes,
                    summary=summary_line(c),
                    columns=columns,
                    rows=rows,
                    alpha=f"{c.alpha:g}",
                    confidence=c.percent,
                    figure={
                        "file": f"{chart.name}.png",
                        "title": chart.title,
                        "caption": chart.caption,
                    },
                    command=redact(command),
                    test=c.test,
                    paired=c.paired,
                    unpaired=c.unpaired,
                )
            )
            (staging / "index.html").write_text(html)
            table = c.table.drop(columns=["values_a", "values_b"])
            table.to_csv(staging / "comparison.csv", index=False)
            document = json.dumps(to_json(c, out_dir / "index.html"))
            (staging / "comparison.json").write_text(document)
    finally:
        plt.close(chart.figure)
    return out_dir / "index.html"
