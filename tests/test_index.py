"""The index of reports (reports/index.html): one row per report, its numbers from the report's
summary.json (never from another study's stores), older reports as links, all text escaped."""

import csv
import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.config import load_study
from harness.report.render import write_index
from harness.stores.opening import open_stores
from harness.study.runner import run_study
from tests.helpers import write_study

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def reports(tmp_path_factory, mnist_dir):
    """Two tiny studies, each in its own output folder, reported by the CLI into one reports
    folder; the first one's stores deleted before the second is reported. Beside them, an older
    report (index.html, no summary.json), a folder that is no report, and a hidden one."""
    base = tmp_path_factory.mktemp("index")
    reports_dir = base / "reports"
    studies = {
        "alpha": dict(description=f"Alpha & {SCRIPT}", space={"beta": [0.8, 0.95]}, seeds=2),
        "bravo": dict(description="Bravo: steps.", space={"num_steps": [8, 12]}, seeds=[0, 1, 2]),
    }  # fmt: skip
    (reports_dir / "old").mkdir(parents=True)
    (reports_dir / "old" / "index.html").write_text("<html>an older report</html>")
    (reports_dir / "notes").mkdir()
    (reports_dir / "notes" / "todo.txt").write_text("not a report")
    (reports_dir / ".alpha.k2j3h").mkdir()  # what a report being written looks like
    (reports_dir / ".alpha.k2j3h" / "index.html").write_text("half")
    commits = {}
    for name, fields in studies.items():
        path = write_study(base, name, **fields)
        out = base / f"out-{name}"
        stores = open_stores(out)
        run_study(load_study(str(path)), stores, mnist_dir, progress=False)
        client = MlflowClient(stores.tracking_uri)
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id])
        commits[name] = sorted({r.data.tags.get("harness.commit") for r in runs} - {None})
        code = main(["report", str(path), "--output-dir", str(out),
                     "--reports-dir", str(reports_dir)])  # fmt: skip
        assert code == 0
        assert (reports_dir / "index.html").is_file()
        shutil.rmtree(out)  # the index must never need a study's stores again
    return reports_dir, commits


def _rows(index: Path) -> dict[str, dict[str, str]]:
    """Cells of the index's table by study (last class name -> text), and each row's link."""
    body = index.read_text()
    rows = {}
    for study, inner in re.findall(r'<tr data-study="([^"]*)"[^>]*>(.*?)</tr>', body, re.S):
        cells = {
            c.split()[-1]: html.unescape(re.sub(r"<[^>]+>", "", text)).strip()
            for c, text in re.findall(r'<td class="([^"]*)"[^>]*>(.*?)</td>', inner, re.S)
        }
        cells["href"] = html.unescape(re.search(r'<a href="([^"]*)"', inner)[1])
        rows[html.unescape(study)] = cells
    return rows


def _configurations(folder: Path) -> list[dict[str, str]]:
    with open(folder / "configurations.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.mnist
def test_each_report_has_a_summary_equal_to_its_table(reports):
    reports_dir, commits = reports
    for name, seeds in (("alpha", 2), ("bravo", 3)):
        summary = json.loads((reports_dir / name / "summary.json").read_text())
        table = _configurations(reports_dir / name)
        best = max(table, key=lambda row: float(row["test_accuracy_mean"]))
        assert summary["name"] == name
        assert summary["configurations"] == len(table) == 2
        assert summary["objective"] == {"metric": "test_accuracy", "direction": "maximize"}
        assert summary["best"] == {
            "config": best["config"],
            "mean": float(best["test_accuracy_mean"]),
            "sd": float(best["test_accuracy_sd"]),
            "seeds": seeds,
        }
        assert summary["runs"] == {"finished": 2 * seeds}
        assert summary["commits"] == commits[name]
        assert summary["devices"] == ["cpu"]
        assert summary["missing"] == []
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", summary["generated"])


@pytest.mark.mnist
def test_index_lists_each_report_with_the_numbers_of_its_summary(reports):
    reports_dir, _ = reports
    rows = _rows(reports_dir / "index.html")
    assert list(rows) == ["alpha", "bravo", "old"]  # not the hidden folder, nor `notes`
    for name in ("alpha", "bravo"):
        summary = json.loads((reports_dir / name / "summary.json").read_text())
        best, row = summary["best"], rows[name]
        assert row["href"] == f"{name}/index.html"
        assert (reports_dir / row["href"]).is_file()
        assert row["description"] == summary["description"]
        assert row["configurations"] == str(summary["configurations"])
        assert row["best"] == (
            f"{best['config']}: test_accuracy {best['mean']:.4f} ± {best['sd']:.4f} "
            f"({best['seeds']} seeds)"
        )
        generated = summary["generated"]
        assert row["date"] == f"{generated[:10]} {generated[11:16]} UTC"
        assert row["commit"] == ", ".join(
            c[:10] + ("+dirty" if c.endswith("+dirty") else "") for c in summary["commits"]
        )
        assert row["device"] == "cpu"
    assert rows["bravo"]["best"].endswith("(3 seeds)")


@pytest.mark.mnist
def test_an_older_report_without_a_summary_is_a_link(reports):
    reports_dir, _ = reports
    row = _rows(reports_dir / "index.html")["old"]
    assert row["href"] == "old/index.html"
    assert set(row) == {"study", "href"}  # no numbers: it has none to show
    assert "an older report without a summary" in (reports_dir / "index.html").read_text()


@pytest.mark.mnist
def test_index_escapes_the_descriptions(reports):
    reports_dir, _ = reports
    body = (reports_dir / "index.html").read_text()
    assert SCRIPT not in body
    assert "Alpha &amp; &lt;script&gt;alert(1)&lt;/script&gt;" in body


@pytest.mark.mnist
def test_index_is_written_whole_and_readable(reports):
    reports_dir, _ = reports
    assert not list(reports_dir.glob(".index.html*"))  # no temporary file left
    mask = os.umask(0)
    os.umask(mask)
    assert (reports_dir / "index.html").stat().st_mode & 0o777 == 0o666 & ~mask


def test_index_of_odd_folders(tmp_path):
    assert "No reports yet" in write_index(tmp_path).read_text()
    for name in ("a b#c", "broken", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text("<html></html>")
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    (tmp_path / "other" / "summary.json").write_text(json.dumps({"format": 99}))
    rows = _rows(write_index(tmp_path))
    assert {name: row["href"] for name, row in rows.items()} == {
        "a b#c": "a%20b%23c/index.html", "broken": "broken/index.html",
        "other": "other/index.html",
    }  # fmt: skip
    assert all(set(row) == {"study", "href"} for row in rows.values())


def test_index_reads_summaries_of_format_1_and_2(tmp_path):
    """Format 2 added `comparisons`; a report written by the version before still lists."""
    best = {"config": "beta=0.9", "mean": 0.94, "sd": 0.01, "seeds": 3}
    for name, extra in (("one", {"format": 1}), ("two", {"format": 2, "comparisons": []})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text("<html></html>")
        record = {"name": name, "description": name, "objective": {"metric": "test_accuracy"},
                  "best": best, "configurations": 2, **extra}  # fmt: skip
        (tmp_path / name / "summary.json").write_text(json.dumps(record))
    rows = _rows(write_index(tmp_path))
    for name in ("one", "two"):
        assert "0.9400 ± 0.0100 (3 seeds)" in " ".join(rows[name].values())
