"""`harness compare`: known answers on synthetic stores, bad input, and one tiny real pair."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from scipy import stats
from statsmodels.stats.power import TTestPower

from harness.cli import main
from harness.config import load_study
from harness.stores.opening import open_stores
from harness.study.runner import open_study, run_study
from harness.study.settled import grid_key
from tests.helpers import run_cli, write_study

SEEDS = [0, 1, 2]
# Per study, per beta: (test_accuracy, test_loss, train_seconds) of each finished seed; a
# None ends the trial there as diverged (the harness stops a configuration at such a run).
A_RUNS = {
    0.5: [(0.85, 0.70, 10.0), (0.86, 0.69, 11.0), (0.87, 0.68, 12.0)],
    0.8: [(0.90, 0.50, 10.0), (0.91, 0.52, 11.0), (0.92, 0.54, 12.0)],
    0.9: [(0.93, 0.40, 10.0), (0.94, 0.41, 11.0), (0.95, 0.42, 12.0)],
    0.95: [(0.94, 0.35, 10.0), (0.95, 0.36, 11.0), (0.96, 0.37, 12.0)],
}
B_RUNS = {
    0.5: [(0.88, 0.60, 100.0), None],
    0.8: [(0.95, 0.30, 100.0), (0.965, 0.31, 101.0), (0.935, 0.33, 102.0)],
    0.9: [(0.95, 0.41, 100.0), (0.93, 0.40, 101.0), (0.97, 0.42, 102.0)],
    0.99: [(0.90, 0.45, 100.0), (0.91, 0.46, 101.0), (0.92, 0.47, 102.0)],
}


def _fill(
    out: Path, path: Path, runs: dict[float, list], rate_share: float,
    stored_path: Path | None = None,
) -> None:  # fmt: skip
    """Create the study of the file `path` in the stores under `out` (Optuna trials and
    MLflow runs as `harness study` leaves them) with the given metric values, and a hidden
    firing rate of `rate_share` times the accuracy; `stored_path`: create it from another
    version of the file (as if it had been edited since)."""
    config = load_study(str(stored_path or path))
    stores = open_stores(out)
    with stores.setup_lock():
        stores.create_tracking_tables()
    client = MlflowClient(stores.tracking_uri)
    location = (out / "mlartifacts" / config.name).resolve().as_uri()
    experiment = client.create_experiment(config.name, artifact_location=location)
    study = open_study(config, stores)
    distribution = CategoricalDistribution(config.space["beta"])
    for number, (beta, seeds) in enumerate(runs.items()):
        ids, finished = [], []
        for seed, values in zip(SEEDS, seeds, strict=False):
            tags = {"harness.trial": str(number), "harness.seed": str(seed)}
            run_id = client.create_run(experiment, run_name=f"t{number}/s{seed}", tags=tags)
            run_id = run_id.info.run_id
            ids.append(run_id)
            settings = config.run_config({"beta": beta}, seed).model_dump()
            params = [Param(k, str(v)) for k, v in settings.items()]
            status = "finished" if values is not None else "diverged"
            metrics = []
            if values is not None:
                finished.append(values[0])
                names = ("test_accuracy", "test_loss", "train_seconds")
                metrics = [Metric(k, v, 0, 1) for k, v in zip(names, values, strict=True)]
                metrics.append(Metric("hidden_firing_rate", values[0] * rate_share, 0, 1))
            client.log_batch(
                run_id, metrics=metrics, params=params, tags=[RunTag("harness.status", status)]
            )
            client.set_terminated(run_id, "FINISHED" if values is not None else "FAILED")
        diverged = len(finished) < len(seeds)
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.FAIL if diverged else TrialState.COMPLETE,
                value=None if diverged else float(np.mean(finished)),
                params={"beta": beta},
                distributions={"beta": distribution},
                user_attrs={
                    "mlflow_run_ids": ids,
                    "outcome": "diverged" if diverged else "finished",
                    "grid_point": grid_key({"beta": beta}),
                },
            )
        )


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Store `one`: study alpha (A) and bravo (B, the reference backend); store `two`: alpha
    again, with B's values, created from an older file (epochs 2); `empty`: no runs."""
    root = tmp_path_factory.mktemp("compare")
    alpha = write_study(root, "alpha", space={"beta": [0.5, 0.8, 0.9, 0.95]}, seeds=SEEDS)
    bravo = write_study(
        root, "bravo", space={"beta": [0.5, 0.8, 0.9, 0.99]}, seeds=SEEDS,
        base={"backend": "reference"},
    )  # fmt: skip
    older = root / "older"
    older.mkdir()
    alpha_older = write_study(
        older, "alpha", space={"beta": [0.5, 0.8, 0.9, 0.99]}, seeds=SEEDS, base={"epochs": 2}
    )
    empty = write_study(root, "empty", space={"beta": [0.9]})
    _fill(root / "one", alpha, A_RUNS, 0.25)
    _fill(root / "one", bravo, B_RUNS, 0.5)
    _fill(root / "two", alpha, B_RUNS, 0.5, stored_path=alpha_older)
    open_study(load_study(str(empty)), open_stores(root / "one"))  # created, never run
    return root


def _compare(root: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compare", *args, "--reports-dir", str(root / "reports")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _by_config(document: dict) -> dict[str, dict]:
    return {c["configuration"]: c for c in document["configurations"]}


def _ab(root: Path, capsys, *extra: str) -> dict:
    code, out, err = _compare(
        root, capsys, str(root / "alpha.yaml"), str(root / "bravo.yaml"),
        "--output-dir", str(root / "one"), "--json", *extra,
    )  # fmt: skip
    assert code == 0, err
    return _json(out)


def _welch_by_hand(a: list[float], b: list[float], confidence: float = 0.95) -> dict:
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    difference = np.mean(b) - np.mean(a)
    se = math.sqrt(va + vb)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(difference / se), df)
    return {
        "difference": difference,
        "df": df,
        "p": p,
        "ci": (difference - half, difference + half),
    }


def test_a_significant_difference_has_the_hand_computed_p_and_interval(stores, capsys):
    document = _ab(stores, capsys, "--unpaired")
    row = _by_config(document)["beta=0.8"]
    assert row["test"] == "welch" and document["test"].startswith("Welch's t-test (--unpaired)")
    a, b = [0.90, 0.91, 0.92], [0.95, 0.965, 0.935]  # unequal spreads: Welch is not pooled
    hand = _welch_by_hand(a, b)
    assert row["a"]["values"] == a and row["b"]["values"] == b
    assert row["a"]["n"] == 3 and row["b"]["n"] == 3
    assert row["a"]["mean"] == pytest.approx(0.91) and row["b"]["mean"] == pytest.approx(0.95)
    assert row["a"]["sd"] == pytest.approx(0.01) and row["b"]["sd"] == pytest.approx(0.015)
    assert row["difference"] == pytest.approx(0.04)
    assert row["df"] == pytest.approx(hand["df"]) and row["df"] == pytest.approx(3.4845361)
    assert row["p"] == pytest.approx(hand["p"], rel=1e-9)
    assert row["p"] == pytest.approx(0.0237461, rel=1e-5)  # pooled variances: 0.0184
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(hand["ci"], rel=1e-9)
    # Holm over the two configurations with a p (beta 0.9: 0.496): 2 x 0.0237 < 0.05
    assert row["p_holm"] == pytest.approx(2 * hand["p"], rel=1e-9)
    assert row["verdict"] == "better"
    assert document["metric"] == "test_accuracy" and document["direction"] == "maximize"
    assert document["alpha"] == 0.05 and document["confidence"] == pytest.approx(0.95)
    # each side's own interval: Student's t around its mean
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert row["a"]["ci_low"] == pytest.approx(0.91 - half)


def test_an_insignificant_difference_and_too_few_seeds(stores, capsys):
    rows = _by_config(_ab(stores, capsys, "--unpaired"))
    same = rows["beta=0.9"]
    hand = _welch_by_hand([0.93, 0.94, 0.95], [0.95, 0.93, 0.97])
    assert same["difference"] == pytest.approx(0.01)
    assert same["p"] == pytest.approx(hand["p"]) and same["p"] == pytest.approx(0.4960554)
    assert same["ci_low"] < 0 < same["ci_high"]
    assert same["verdict"] == "no significant difference"
    few = rows["beta=0.5"]  # B: one finished seed, then a diverged run
    assert few["b"]["n"] == 1 and few["b"]["values"] == [0.88]
    assert few["p"] is None and few["ci_low"] is None
    assert few["difference"] == pytest.approx(0.02)
    assert few["verdict"] == "too few seeds"


def test_a_configuration_of_one_study_only_is_listed(stores, capsys):
    document = _ab(stores, capsys)
    rows = _by_config(document)
    assert list(rows) == ["beta=0.5", "beta=0.8", "beta=0.9", "beta=0.95", "beta=0.99"]
    assert rows["beta=0.95"]["verdict"] == "only in A"
    assert rows["beta=0.95"]["a"]["mean"] == pytest.approx(0.95)
    assert rows["beta=0.95"]["b"] == {
        "n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None, "values": []
    }  # fmt: skip
    assert rows["beta=0.99"]["verdict"] == "only in B" and rows["beta=0.99"]["b"]["n"] == 3
    assert document["counts"] == {
        "no significant difference": 2, "too few seeds": 1, "only in A": 1, "only in B": 1,
    }  # fmt: skip
    assert document["summary"] == (
        "B better in 0, worse in 0, no significant difference in 2, too few seeds in 1 of 3 "
        "configurations in both studies at alpha 0.05; 1 only in A, 1 only in B"
    )
    assert document["matched_on"] == ["beta"]
    assert document["settings_differ"] == {"backend": ["fused", "reference"]}


def test_terminal_table_says_the_level_and_the_verdicts(stores, capsys):
    code, out, _ = _compare(
        stores, capsys, str(stores / "alpha.yaml"), str(stores / "bravo.yaml"),
        "--output-dir", str(stores / "one"),
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert "settings that differ (A | B): backend fused | reference" in lines
    assert (
        "test_accuracy (higher is better), B - A per configuration matched on beta: "
        "paired t-test over common seeds (Welch's where fewer than 2 are common), 95 % CI, "
        "alpha 0.05"
    ) in lines
    row = next(line for line in lines if line.startswith("beta=0.8 "))
    differences = np.array([0.95, 0.965, 0.935]) - np.array([0.90, 0.91, 0.92])
    paired = stats.ttest_rel([0.95, 0.965, 0.935], [0.90, 0.91, 0.92])
    low, high = paired.confidence_interval(0.95)
    other = stats.ttest_rel([0.95, 0.93, 0.97], [0.93, 0.94, 0.95]).pvalue  # beta 0.9: 0.42
    holm = 2 * paired.pvalue  # Holm: the smaller of 2 p-values times 2
    assert paired.pvalue < other
    mde = TTestPower().solve_power(nobs=3, alpha=0.05, power=0.8) * differences.std(ddof=1)
    assert row.split() == [
        "beta=0.8", "3", "0.9100", "±", "0.0100", "3", "0.9500", "±", "0.0150", "paired",
        "(3)", "+0.0400", f"[{low:+.4f},", f"{high:+.4f}]", f"{paired.pvalue:.4f}",
        f"{holm:.4f}", f"{mde:.4f}", "no", "significant", "difference",
    ]  # fmt: skip
    only = next(line for line in lines if line.startswith("beta=0.99 "))
    assert only.split()[1:3] == ["0", "-"] and only.endswith("only in B")
    assert lines[-2].startswith("B better in 0, worse in 0, no significant difference in 2")
    assert lines[-1] == f"page: {stores / 'reports' / 'compare-alpha-vs-bravo' / 'index.html'}"
    code, out, _ = _compare(
        stores, capsys, str(stores / "alpha.yaml"), str(stores / "bravo.yaml"),
        "--output-dir", str(stores / "one"), "--unpaired",
    )  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("beta=0.8 "))
    assert row.split()[9:16] == ["welch", "+0.0400", "[+0.0093,", "+0.0707]", "0.0237",
                                 "0.0475", row.split()[15]]  # fmt: skip
    assert row.endswith("better") and "compare-alpha-vs-bravo-unpaired" in out


def test_lower_is_better_for_loss_and_time_and_alpha_changes_the_verdict(stores, capsys):
    loss = _by_config(_ab(stores, capsys, "--metric", "test_loss"))
    assert loss["beta=0.8"]["difference"] == pytest.approx(0.31333333 - 0.52)
    assert loss["beta=0.8"]["verdict"] == "better"  # lower loss
    seconds = _ab(stores, capsys, "--metric", "train_seconds")
    assert seconds["direction"] == "minimize"
    assert _by_config(seconds)["beta=0.8"]["verdict"] == "worse"  # the reference is slower
    assert seconds["summary"].startswith("B better in 0, worse in 2,")
    rates = _ab(stores, capsys, "--metric", "hidden_firing_rate")  # neither way is better
    assert rates["direction"] is None
    assert _by_config(rates)["beta=0.8"]["difference"] == pytest.approx(0.95 / 2 - 0.91 / 4)
    assert [c["verdict"] for c in rates["configurations"]][1:3] == ["higher", "higher"]
    assert rates["summary"].startswith("B higher in 2, lower in 0,")
    strict = _ab(stores, capsys, "--alpha", "0.001", "--unpaired")
    assert strict["confidence"] == pytest.approx(0.999)
    row = _by_config(strict)["beta=0.8"]
    assert row["p"] == pytest.approx(0.0237461, rel=1e-5)
    assert row["verdict"] == "no significant difference"
    hand = _welch_by_hand([0.90, 0.91, 0.92], [0.95, 0.965, 0.935], 0.999)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(hand["ci"], rel=1e-9)
    assert row["ci_low"] < 0 < row["ci_high"]
    assert strict["summary"].endswith("at alpha 0.001; 1 only in A, 1 only in B")


def _text(cell: str) -> str:
    """A cell's text as a reader sees it (tags out)."""
    return html.unescape(re.sub(r"<[^>]+>", "", cell.replace("<br>", " ")))


def test_the_page_lists_the_configurations(stores, capsys):
    _ab(stores, capsys)
    folder = stores / "reports" / "compare-alpha-vs-bravo"
    body = (folder / "index.html").read_text()
    table = body[body.index('<table id="comparison">') : body.index("</table>")]
    rows = [
        [_text(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r)]
        for r in re.findall(r"<tr>(.*?)</tr>", table, re.S)
    ]
    assert rows[0][:3] == ["configuration", "n A", "A mean ± sd"] and "95 % CI" in rows[0]
    assert [(r[0], r[-1]) for r in rows[1:]] == [
        ("beta=0.5", "too few seeds"), ("beta=0.8", "no significant difference"),
        ("beta=0.9", "no significant difference"), ("beta=0.95", "only in A"),
        ("beta=0.99", "only in B"),
    ]  # fmt: skip
    assert "alpha 0.05" in body and "B better in 0, worse in 0" in body
    assert '<img src="comparison.png"' in body
    assert (folder / "comparison.png").stat().st_size > 10_000
    saved = json.loads((folder / "comparison.json").read_text())
    assert saved["counts"]["no significant difference"] == 2
    assert "comparison.csv" in body and (folder / "comparison.csv").read_text().count("\n") == 6
    assert not list(folder.parent.glob(".compare-*"))  # staging folders are gone


def test_one_study_on_two_stores(stores, capsys):
    code, out, err = _compare(
        stores, capsys, str(stores / "alpha.yaml"), str(stores / "alpha.yaml"),
        "--output-dir", str(stores / "one"), "--b-output-dir", str(stores / "two"), "--json",
    )  # fmt: skip
    assert code == 0, err
    # store two's alpha was created from another version of the file: its stored config counts
    assert err.strip().splitlines() == [
        "note: study 'alpha' was run with another version of its file (base, space differ): "
        "its runs are read with the settings they ran with"
    ]
    document = _json(out)
    assert document["settings_differ"] == {"epochs": [1, 2]}
    assert str(stores / "two") in document["b"]["stores"]
    rows = _by_config(document)
    assert rows["beta=0.8"]["test"] == "paired"  # the same seeds on both stores
    assert rows["beta=0.8"]["verdict"] == "no significant difference"
    assert rows["beta=0.99"]["verdict"] == "only in B"
    assert (stores / "reports" / "compare-alpha-vs-alpha" / "index.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere", "alpha"], "no study 'nowhere'"),
        (["STUDIES/alpha.yaml", "STUDIES/empty.yaml"], "study 'empty' (B) has no finished runs"),
        (["STUDIES/alpha.yaml", "STUDIES/bravo.yaml", "--b-output-dir", "STUDIES/missing"],
         "study 'bravo' (B) is not in the stores"),
        (["STUDIES/alpha.yaml", "STUDIES/bravo.yaml", "--metric", "accuracy"],
         "--metric: unknown metric 'accuracy' (known: test_accuracy,"),
        (["STUDIES/alpha.yaml", "STUDIES/bravo.yaml", "--metric", "output_firing_rate"],
         "no finished run of study 'alpha' (A) has the metric 'output_firing_rate'"),
        (["STUDIES/alpha.yaml", "STUDIES/bravo.yaml", "--alpha", "0"], "--alpha must be"),
        (["STUDIES/alpha.yaml", "STUDIES/bravo.yaml", "--alpha", "1"], "--alpha must be"),
        (["STUDIES/alpha.yaml", "STUDIES/bravo.yaml", "--alpha", "nan"], "--alpha must be"),
        (["STUDIES/alpha.yaml", "STUDIES/bravo.yaml", "--b-tracking-uri", "nope://x"],
         "--b-tracking-uri: 'nope' is not an MLflow tracking URI"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(stores, capsys, tmp_path, args, message):
    args = [a.replace("STUDIES", str(stores)) for a in args]
    code = main(["compare", *args, "--output-dir", str(stores / "one"),
                 "--reports-dir", str(tmp_path / "reports")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: ") and message in captured.err
    assert not (tmp_path / "reports").exists() and not (stores / "missing").exists()


@pytest.mark.mnist
@pytest.mark.processes
def test_a_tiny_real_pair_end_to_end(tmp_path, mnist_dir):
    """The fused backend against the reference on a tiny real study, through `python -m`."""
    fused = write_study(tmp_path, "tiny_fused", space={"beta": [0.95]}, seeds=[0, 1])
    reference = write_study(
        tmp_path, "tiny_reference", space={"beta": [0.95]}, seeds=[0, 1],
        base={"backend": "reference"},
    )  # fmt: skip
    out = tmp_path / "out"
    for path in (fused, reference):
        run_study(load_study(str(path)), open_stores(out), mnist_dir, progress=False)
    done = run_cli(
        "compare", str(fused), str(reference), "--output-dir", str(out),
        "--reports-dir", str(tmp_path / "reports"), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = _json(done.stdout)
    (row,) = document["configurations"]
    stores = open_stores(out, read_only=True)
    client = MlflowClient(stores.tracking_uri)
    for side, name in (("a", "tiny_fused"), ("b", "tiny_reference")):
        (trial,) = optuna.load_study(study_name=name, storage=stores.storage).trials
        runs = [client.get_run(i) for i in trial.user_attrs["mlflow_run_ids"]]  # seeds 0, 1
        values = [r.data.metrics["test_accuracy"] for r in runs]
        assert row[side]["values"] == pytest.approx(values) and row[side]["n"] == 2
    assert row["configuration"] == "beta=0.95"
    assert row["verdict"] in ("better", "worse", "no significant difference")
    assert document["settings_differ"] == {"backend": ["fused", "reference"]}
    assert "beta=0.95" in (tmp_path / "reports" / "compare-tiny_fused-vs-tiny_reference"
                           / "index.html").read_text()  # fmt: skip


def test_paired_pairs_runs_by_seed_with_the_hand_computed_test(stores, capsys):
    document = _ab(stores, capsys, "--paired")
    assert document["test"].startswith("paired t-test over common seeds")
    rows = _by_config(document)
    row = rows["beta=0.8"]  # seeds 0, 1, 2 on both sides
    differences = np.array([0.95, 0.965, 0.935]) - np.array([0.90, 0.91, 0.92])
    mean, sd = differences.mean(), differences.std(ddof=1)
    t = mean / (sd / math.sqrt(3))
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert row["pairs"] == 3 and row["df"] == pytest.approx(2)
    assert row["difference"] == pytest.approx(mean)
    assert row["t"] == pytest.approx(t)
    assert row["p"] == pytest.approx(2 * stats.t.sf(abs(t), 2))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert row["verdict"] == "no significant difference"  # p = 0.086 here; Welch says better
    assert rows["beta=0.5"]["test"] == "welch"  # one common seed: nothing to pair
    assert rows["beta=0.5"]["verdict"] == "too few seeds"
    code, out, _ = _compare(
        stores, capsys, str(stores / "alpha.yaml"), str(stores / "bravo.yaml"),
        "--output-dir", str(stores / "one"), "--paired",
    )  # fmt: skip
    assert code == 0 and "paired t-test over common seeds (Welch's where fewer" in out
    assert _ab(stores, capsys) == document | {"page": document["page"]}  # --paired: the default
