"""Reports from a tiny real study: numbers equal MLflow's, the PDF, the page in Chromium."""

import html
import re
import statistics
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from pypdf import PdfReader
from scipy import stats

from harness.cli import main
from harness.config import load_study
from harness.report import build_report
from harness.stores import open_stores
from harness.study import run_study
from tests.conftest import chromium_page
from tests.test_study import seed_runs, write_study


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


def _table(page: Path) -> list[list[str]]:
    body = page.read_text()
    table = body[body.index('<table id="configurations">') : body.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    return [[html.unescape(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r)] for r in rows]


def test_table_numbers_equal_what_mlflow_holds(tiny_study):
    config, stores, page = tiny_study
    client = MlflowClient(stores.tracking_uri)
    runs = seed_runs(client, "tiny")
    assert len(runs) == 14
    header, *rows = _table(page)
    assert header[:4] == ["configuration", "seeds", "p vs best", "test accuracy"]
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
    for row in rows:  # Welch's t-test against the best configuration
        expected = stats.ttest_ind(accuracies[row[0]], accuracies[best], equal_var=False).pvalue
        assert row[2] == ("best" if row[0] == best else f"{expected:.3f}")


def test_page_says_what_is_missing_and_escapes_user_text(tiny_study):
    _, _, page = tiny_study
    body = page.read_text()
    assert "1 of 8 grid points not done: beta=0.95, decoding=latency, num_steps=12" in body
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "14 finished" in body and "git commit:" in body and "data checksum (mnist):" in body


def test_pdf_has_a_page_per_figure_with_text(tiny_study):
    _, _, page = tiny_study
    figures = sorted(p.stem for p in page.parent.glob("*.png"))
    assert {"accuracy_vs_beta", "accuracy_vs_decoding", "accuracy_vs_num_steps", "loss_curves",
            "heatmap_beta_decoding", "rate_vs_latency"} <= set(figures)  # fmt: skip
    reader = PdfReader(page.parent / "report.pdf")
    assert len(reader.pages) == 1 + len(figures)
    assert "Study tiny" in reader.pages[0].extract_text()
    titles = [reader.pages[i].extract_text() for i in range(1, len(reader.pages))]
    assert any("Train and test loss curves" in t for t in titles)
    assert any("Rate against latency decoding" in t for t in titles)


def test_page_renders_in_headless_chromium(tiny_study, tmp_path):

    _, _, page_path = tiny_study
    with chromium_page(1200, 900) as page:
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) == len(list(page_path.parent.glob("*.png")))
        assert all(done and width > 0 for done, width in images)
        assert page.locator("#configurations tbody tr").count() == 7
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
