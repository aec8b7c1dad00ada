"""Reports from a tiny real study: numbers equal MLflow's, the PDF, the page in Chromium."""

import html
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from pypdf import PdfReader
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from harness.cli import main
from harness.config import load_study
from harness.report import build_report
from harness.stores.opening import open_stores
from harness.study.runner import run_study
from tests.helpers import ROOT, chromium_page, seed_runs, write_study


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, mnist_dir):
    """A 2 x 2 grid (beta x decoding), 2 seeds, run for real; one point left undone."""
    folder = tmp_path_factory.mktemp("study")
    path = write_study(
        folder, "tiny", description="A tiny <b>study</b> & a <script>alert(1)</script>",
        space={"beta": [0.8, 0.95], "decoding": ["rate", "latency"], "num_steps": [10, 12]},
        seeds=2,
    )  # fmt: skip
    config = load_study(str(path))
    stores = open_stores(folder / "out")
    run_study(config, stores, mnist_dir, progress=False, max_trials=7)
    page = build_report(config, stores, folder / "reports" / "tiny")
    return config, stores, page


def _text(cell: str) -> str:
    """A cell's text as a reader sees it: its CI under the mean reads "mean ± sd (CI ±h)"."""
    return html.unescape(re.sub(r"<[^>]+>", "", cell.replace("<br>", " ")))


def _table(page: Path, name: str = "configurations") -> list[list[str]]:
    body = page.read_text()
    start = body.index(f'<table id="{name}">')
    table = body[start : body.index("</table>", start)]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    return [[_text(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r)] for r in rows]


@pytest.mark.mnist
def test_table_numbers_equal_what_mlflow_holds(tiny_study):
    config, stores, page = tiny_study
    client = MlflowClient(stores.tracking_uri)
    runs = seed_runs(client, "tiny")
    assert len(runs) == 14
    header, *rows = _table(page)
    assert header[:4] == ["configuration", "seeds", "vs best", "test accuracy"]
    assert len(rows) == 7
    accuracies = {}
    for row in rows:
        params = dict(part.split("=") for part in row[0].split(", "))
        mine = [
            r for r in runs
            if r.data.params["beta"] == params["beta"]
            and r.data.params["decoding"] == params["decoding"]
            and r.data.params["num_steps"] == params["num_steps"]
        ]  # fmt: skip
        accuracy = [r.data.metrics["test_accuracy"] for r in mine]
        accuracies[row[0]] = accuracy
        loss = [r.data.metrics["test_loss"] for r in mine]
        assert row[1] == "2"
        assert row[3].startswith(
            f"{statistics.mean(accuracy):.4f} ± {statistics.stdev(accuracy):.4f} (CI ±"
        )
        assert row[6].startswith(f"{statistics.mean(loss):.3f} ± {statistics.stdev(loss):.3f}")
    best = max(accuracies, key=lambda label: statistics.mean(accuracies[label]))
    assert [row[2] for row in rows if row[0] == best] == ["best"]


@pytest.mark.mnist
def test_paired_test_against_the_best_by_default(tiny_study):
    """The configurations share seeds 0 and 1: each is compared with the best seed by seed,
    and p, its Holm adjustment, the CI and the minimum detectable effect equal scipy's and
    statsmodels' on the per-seed accuracies MLflow holds."""
    config, stores, page = tiny_study
    by_config: dict[str, dict[int, float]] = {}
    for run in seed_runs(MlflowClient(stores.tracking_uri), "tiny"):
        p = run.data.params
        label = f"beta={p['beta']}, decoding={p['decoding']}, num_steps={p['num_steps']}"
        by_config.setdefault(label, {})[int(p["seed"])] = run.data.metrics["test_accuracy"]
    best = max(by_config, key=lambda label: statistics.mean(by_config[label].values()))
    header, *rows = _table(page, "versus")
    assert header == ["configuration", "test", "n", "difference vs best", "95 % CI", "p",
                      "p (Holm)", "MDE", "verdict"]  # fmt: skip
    assert rows[0][0] == best and rows[0][-1] == "best"
    others = [label for label in by_config if label != best]
    expected = {}
    for label in others:
        a = [by_config[best][s] for s in (0, 1)]
        b = [by_config[label][s] for s in (0, 1)]
        result = stats.ttest_rel(b, a)
        low, high = result.confidence_interval(0.95)
        sd = statistics.stdev(x - y for x, y in zip(b, a, strict=True))
        mde = TTestPower().solve_power(nobs=2, alpha=0.05, power=0.8) * sd
        expected[label] = (statistics.mean(b) - statistics.mean(a), low, high, result.pvalue, mde)
    holm = dict(zip(others, multipletests([expected[k][3] for k in others], method="holm")[1],
                    strict=True))  # fmt: skip
    assert sorted(row[0] for row in rows[1:]) == sorted(others)
    for row in rows[1:]:
        difference, low, high, p, mde = expected[row[0]]
        assert row[1:3] == ["paired", "2"]
        assert row[3] == f"{difference:+.4f}"
        assert row[4] == f"[{low:+.4f}, {high:+.4f}]"
        assert row[5] == (f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}")
        assert row[6] == (f"{holm[row[0]]:.3f}" if holm[row[0]] >= 1e-3 else f"{holm[row[0]]:.1e}")
        assert row[7] == f"{mde:.4f}"
        verdict = (
            "worse" if holm[row[0]] < 0.05
            else "not significant after Holm" if p < 0.05
            else f"no difference > {mde:.4g} detected"
        )  # fmt: skip
        assert row[8] == verdict
    assert "2 seeds: no exact sign-flip or Wilcoxon test can reach p &lt; 0.05" in page.read_text()
    record = json.loads((page.parent / "summary.json").read_text())
    assert record["format"] == 2
    entries = {c["config"]: c for c in record["comparisons"]}
    assert sorted(entries) == sorted(others)
    for label, entry in entries.items():
        difference, low, high, p, mde = expected[label]
        assert entry["test"] == "paired" and entry["seeds"] == 2 and entry["pairs"] == 2
        assert entry["diff_vs_best"] == pytest.approx(difference, abs=1e-12)
        assert entry["ci95"] == pytest.approx([low, high], abs=1e-12)
        assert entry["p"] == pytest.approx(p, rel=1e-9)
        assert entry["p_holm"] == pytest.approx(holm[label], rel=1e-9)
        assert entry["mde"] == pytest.approx(mde, rel=1e-9)


@pytest.mark.mnist
def test_page_says_what_is_missing_and_escapes_user_text(tiny_study):
    _, _, page = tiny_study
    body = page.read_text()
    assert "1 of 8 grid points not done: beta=0.95, decoding=latency, num_steps=12" in body
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "14 finished" in body and "git commit:" in body and "data checksum (mnist):" in body


@pytest.mark.mnist
def test_pdf_has_a_page_per_figure_with_text(tiny_study):
    _, _, page = tiny_study
    figures = sorted(p.stem for p in page.parent.glob("*.png"))
    assert {"accuracy_vs_beta", "accuracy_vs_decoding", "accuracy_vs_num_steps", "loss_curves",
            "heatmap_beta_decoding", "rate_vs_latency"} <= set(figures)  # fmt: skip
    reader = PdfReader(page.parent / "report.pdf")
    texts = [p.extract_text() for p in reader.pages]
    assert "Study tiny" in texts[0]
    tables = [i for i, t in enumerate(texts) if i and "Configurations" in t]
    versus = [i for i, t in enumerate(texts) if "difference vs best" in t]
    assert tables == list(range(1, 1 + len(tables))) and versus == [1 + len(tables)]
    assert len(reader.pages) == 2 + len(tables) + len(figures)  # summary, tables, figures
    titles = texts[2 + len(tables) :]
    assert any("Train and test loss curves" in t for t in titles)
    assert any("Rate against latency decoding" in t for t in titles)


@pytest.mark.mnist
@pytest.mark.processes
def test_report_and_compare_import_neither_torch_nor_numba(tiny_study, tmp_path):
    """Reading a study is light: `harness report` and `harness compare` run in a process that
    never imports torch or numba (the settled rules, the MLflow readers, the figures)."""
    config, stores, _ = tiny_study
    out = Path(stores.tracking_uri.removeprefix("sqlite:///")).parent
    code = f"""
import sys
from harness.cli import main
path = {str(out.parent / "tiny.yaml")!r}
common = ["--output-dir", {str(out)!r}, "--reports-dir", {str(tmp_path)!r}]
assert main(["report", path, *common]) == 0
assert main(["compare", path, path, *common]) == 0
print(sorted(m for m in ("torch", "numba") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.chromium
@pytest.mark.mnist
def test_page_renders_in_headless_chromium(tiny_study, tmp_path):

    _, _, page_path = tiny_study
    with chromium_page(1200, 900) as page:
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) == len(list(page_path.parent.glob("*.png")))
        assert all(done and width > 0 for done, width in images)
        assert page.locator("#configurations tbody tr").count() == 7
        # a laptop's width: every cell on its own lines (mean ± sd, then the CI), no wrapping
        page.set_viewport_size({"width": 1366, "height": 800})
        cell = page.locator("#configurations tbody tr").first.locator("td").nth(4)
        line = page.evaluate("parseFloat(getComputedStyle(document.body).lineHeight) || 20")
        assert cell.locator(".ci").count() == 1 and cell.bounding_box()["height"] < 3 * line
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_report_cli_on_a_study_that_never_ran(tmp_path, capsys):
    path = write_study(tmp_path, "never", space={"beta": [0.9]})
    code = main(["report", str(path), "--output-dir", str(tmp_path / "out"),
                 "--reports-dir", str(tmp_path / "reports")])  # fmt: skip
    assert code == 0
    body = (tmp_path / "reports" / "never" / "index.html").read_text()
    assert "No finished runs yet." in body and "nothing has run" in body
    assert len(PdfReader(tmp_path / "reports" / "never" / "report.pdf").pages) == 1


@pytest.mark.mnist
def test_report_shows_only_the_runs_of_the_current_study(tmp_path, mnist_dir):
    path = write_study(tmp_path, "again", space={"beta": [0.9]})
    config = load_study(str(path))
    stores = open_stores(tmp_path / "out")
    run_study(config, stores, mnist_dir, progress=False)
    optuna.delete_study(study_name="again", storage=stores.storage)  # start over in Optuna
    run_study(config, stores, mnist_dir, progress=False)
    client = MlflowClient(stores.tracking_uri)
    assert len(seed_runs(client, "again")) == 2
    page = build_report(config, stores, tmp_path / "reports" / "again")
    assert "1 finished" in page.read_text()
    assert [row[1] for row in _table(page)[1:]] == ["1"]


@pytest.mark.mnist
def test_a_fresh_beta_grid_reports_the_paired_test_mlflow_numbers_give(tmp_path, mnist_dir):
    """From fresh stores, a grid over beta with 3 shared seeds: the report's p against the best
    is scipy's paired t-test on the per-seed test accuracies that MLflow holds."""
    path = write_study(tmp_path, "betas", space={"beta": [0.8, 0.9, 0.95]}, seeds=3)
    out, reports = tmp_path / "out", tmp_path / "reports"
    assert main(["study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir)]) == 0
    assert main(["report", str(path), "--output-dir", str(out), "--reports-dir",
                 str(reports)]) == 0  # fmt: skip
    client = MlflowClient(open_stores(out).tracking_uri)
    by_beta: dict[str, dict[int, float]] = {}
    for run in seed_runs(client, "betas"):
        by_beta.setdefault(run.data.params["beta"], {})[int(run.data.params["seed"])] = (
            run.data.metrics["test_accuracy"]
        )
    best = max(by_beta, key=lambda beta: statistics.mean(by_beta[beta].values()))
    record = json.loads((reports / "betas" / "summary.json").read_text())
    assert record["best"]["config"] == f"beta={best}"
    assert len(record["comparisons"]) == 2
    for entry in record["comparisons"]:
        beta = entry["config"].removeprefix("beta=")
        expected = stats.ttest_rel(
            [by_beta[beta][s] for s in range(3)], [by_beta[best][s] for s in range(3)]
        )
        assert entry["test"] == "paired" and entry["pairs"] == 3
        assert entry["p"] == pytest.approx(expected.pvalue, rel=1e-9)


def test_a_wide_long_table_is_laid_out_readable_on_pdf_pages(tmp_path):
    """The configurations table of a search with many metrics: split into pages by columns
    (the configuration's columns repeated) and rows; drawn, no cell's text leaves its cell or
    its page, every cell is on some page, and the PDF's text holds each of them."""
    from matplotlib.backends.backend_pdf import PdfPages

    from harness.report.render import pdf_table_pages

    columns = ["configuration", "seeds", "vs best"] + [f"metric number {i}" for i in range(16)]
    rows = [
        [f"beta={0.5 + i / 100:.2f} decoding=latency", "3", "no difference > 0.0123 detected"]
        + [f"{1000 * i + j:,}.1234 ± 12.3456 (CI ±98.7654)" for j in range(16)]
        for i in range(30)
    ]
    pages = pdf_table_pages(columns, rows, ["a note under the table"])
    assert len(pages) >= 4  # 2 column groups x 2 row pages at least
    seen = set()
    for page in pages:
        page.canvas.draw()
        renderer = page.canvas.get_renderer()
        bounds = page.bbox
        (table,) = page.axes[0].tables
        for (r, k), cell in table.get_celld().items():
            box, text = cell.get_window_extent(renderer), cell.get_text()
            inner = text.get_window_extent(renderer)
            assert box.x0 >= bounds.x0 and box.x1 <= bounds.x1 and box.y0 >= bounds.y0, (r, k)
            assert inner.x0 >= box.x0 - 0.5 and inner.x1 <= box.x1 + 0.5, text.get_text()
            assert inner.y0 >= box.y0 - 0.5 and inner.y1 <= box.y1 + 0.5, text.get_text()
            seen.add(text.get_text().replace("\n", " "))
    every = {c for c in columns} | {c for row in rows for c in row}
    assert {" ".join(c.split()) for c in every} <= {" ".join(c.split()) for c in seen}
    path = tmp_path / "table.pdf"
    with PdfPages(path) as pdf:
        for page in pages:
            pdf.savefig(page)
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(path).pages)
    for row in rows:
        assert row[0] in text and row[-1].split(" (")[0] in text


def test_descriptions_show_backticks_as_code_and_cells_their_ci_on_a_line_of_its_own():
    from harness.report.render import _html_cell, _prose

    assert str(_prose("uses `beta` & <b>")) == "uses <code>beta</code> &amp; &lt;b&gt;"
    assert str(_prose("one ` alone")) == "one ` alone"  # unpaired: as written
    assert str(_html_cell("0.9412 ± 0.0098 (CI ±0.0103)")) == (
        '0.9412 ± 0.0098<br><span class="ci">(CI ±0.0103)</span>'
    )
    assert str(_html_cell("<3")) == "&lt;3"
