"""Studies of several objectives: the file forms, bad input, Optuna's directions and metric
names, NSGA-II and multi-objective TPE, the Pareto-marked table, the report's front."""

import json
import re

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from pypdf import PdfReader

from harness.cli import main
from harness.config import StudyConfig, comparable_dump, load_study
from harness.errors import ConfigError
from harness.report import aggregate, build_report
from harness.report.compare import direction_of
from harness.stores.opening import open_stores
from harness.study.runner import open_study, run_study
from harness.study.samplers import population_size
from harness.study.scheduling import next_trial
from harness.study.settled import pareto_trials
from harness.study.table import format_table
from harness.training.metrics import METRICS, OBJECTIVE_METRICS
from tests.helpers import ROOT, assert_refused, seed_runs, write_study

TWO = [
    {"metric": "test_accuracy", "direction": "maximize"},
    {"metric": "test_loss", "direction": "minimize"},
]


def _config(**fields) -> StudyConfig:
    return StudyConfig.model_validate({"name": "m", "space": {"beta": [0.8, 0.9]}, **fields})


# The file: one objective or several ----------------------------------------------------------


def test_one_objective_keeps_its_form_and_several_are_a_list():
    single = _config(objective={"metric": "test_loss", "direction": "minimize"})
    assert single.objective.metric == "test_loss" and not single.multi_objective
    dump = single.model_dump(mode="json")
    assert "objectives" not in dump  # stored as before several were possible
    assert dump["objective"] == {"metric": "test_loss", "direction": "minimize"}
    assert _config().model_dump(mode="json")["objective"]["metric"] == "test_accuracy"
    several = _config(objectives=TWO)
    assert several.multi_objective and several.metric_names == ["test_accuracy", "test_loss"]
    assert several.objective.metric == "test_accuracy"  # the first leads
    dump = several.model_dump(mode="json")
    assert "objective" not in dump and dump["objectives"] == TWO
    assert StudyConfig.model_validate(dump) == several  # a stored config reads back
    assert StudyConfig.model_validate(single.model_dump(mode="json")) == single
    # `objectives` of one is the single form
    assert _config(objectives=TWO[:1]).model_dump(mode="json") == _config().model_dump(mode="json")
    assert comparable_dump(_config().model_dump(mode="json"))["objectives"] == TWO[:1]


def test_the_legacy_stored_config_is_the_same_file_read_now():
    """An Optuna store of an older version keeps `objective:` (no `objectives`): the same file
    read now dumps equal to it, so open_study does not see a changed file."""
    journal = (ROOT / "tests" / "fixtures" / "legacy_store" / "optuna.journal").read_text()
    stored = next(
        json.loads(line)["user_attr"]["config"]
        for line in journal.splitlines()
        if '"config"' in line
    )
    now = load_study(str(ROOT / "tests" / "fixtures" / "legacy_store" / "legacy.yaml"))
    assert now.model_dump(mode="json") == stored


def test_shipped_multi_objective_studies():
    efficiency = load_study("efficiency", ROOT / "studies")
    assert efficiency.metric_names == ["test_accuracy", "synops_effective_acs"]
    assert [o.direction for o in efficiency.objectives] == ["maximize", "minimize"]
    assert efficiency.sampler == "grid" and len(efficiency.grid()) == 12
    assert efficiency.seed_list == [0, 1]
    assert {p["beta"] for p in efficiency.grid()} == {0.7, 0.9, 0.95}
    assert {p["num_steps"] for p in efficiency.grid()} == {5, 10, 25, 50}
    search = load_study("pareto_search", ROOT / "studies")
    assert search.sampler in ("nsga2", "tpe") and search.multi_objective
    assert search.sampler_seed == 0 and search.pruner.type == "none"
    assert set(search.space) == {"beta", "num_steps", "slope", "lr", "decoding"}
    for name in efficiency.metric_names:  # objectives come from the table of metrics
        assert name in OBJECTIVE_METRICS


BAD = [
    ({"objectives": [TWO[0], {"metric": "synops_total"}]}, "unknown metric 'synops_total'"),
    ({"objectives": [TWO[0], {"metric": "train_seconds"}]}, "objectives.1.metric"),
    ({"objective": {"metric": "accuracy"}}, "invalid value for 'objective.metric'"),
    ({"objectives": [{"metric": "test_loss", "direction": "down"}]}, "'maximize' or 'minimize'"),
    ({"objective": {"metric": "test_loss", "direction": "lower"}}, "'objective.direction'"),
    ({"objective": TWO[0], "objectives": TWO}, "not both"),
    ({"objectives": []}, "'objectives'"),
    ({"objectives": [TWO[1], TWO[1]]}, "test_loss named more than once"),
    (
        {"objectives": TWO, "sampler": "tpe", "n_trials": 4, "pruner": {"type": "median"}},
        "Optuna cannot prune a multi-objective study",
    ),  # fmt: skip
    ({"objectives": TWO, "pruner": {"type": "hyperband", "interval": 5}}, "pruner 'hyperband'"),
    ({"objectives": TWO, "sampler": "nsga2"}, "'n_trials' is required for sampler 'nsga2'"),
]


@pytest.mark.parametrize(("fields", "fragment"), BAD)
def test_bad_objectives_are_one_line_exit_2_and_nothing_written(tmp_path, fields, fragment, capsys):
    path = write_study(tmp_path, "bad", space={"beta": [0.9]}, **fields)
    out = tmp_path / "out"
    for command in ("study", "report"):
        err = assert_refused(main([command, str(path), "--output-dir", str(out)]), capsys, out)
        assert fragment in err and str(path) in err


# Optuna's study: directions, metric names, changed files ---------------------------------------


def test_open_study_names_both_axes_and_refuses_a_changed_objective(tmp_path, capsys):
    stores = open_stores(tmp_path / "out")
    several = _config(objectives=TWO)
    study = open_study(several, stores)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["test_accuracy", "test_loss"]
    assert study.user_attrs["config"]["objectives"] == TWO
    open_study(several, stores)  # the same file again: fine
    with pytest.raises(ConfigError) as err:
        open_study(_config(), stores)
    assert "\n" not in str(err.value)
    assert 'objectives [{"metric": "test_accuracy", "direction": "maximize"}, ' in str(err.value)
    flipped = [TWO[0], {**TWO[1], "direction": "maximize"}]
    with pytest.raises(ConfigError, match=r"objectives \[.*\] -> \[.*maximize"):
        open_study(_config(objectives=flipped), stores)
    # and through the CLI: exit 2, the store as it was
    path = write_study(tmp_path, "m", space={"beta": [0.8, 0.9]}, objective=TWO[0])
    assert main(["study", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "was run with another version of its file" in capsys.readouterr().err
    study = optuna.load_study(study_name="m", storage=stores.storage)
    assert study.user_attrs["config"]["objectives"] == TWO and not study.trials


def test_a_single_objective_study_stored_by_an_older_version_opens(tmp_path):
    stores = open_stores(tmp_path / "out")
    config = _config()
    old = {k: v for k, v in config.model_dump(mode="json").items()}
    assert "objectives" not in old  # what versions before several objectives wrote
    study = optuna.create_study(study_name="m", storage=stores.storage, direction="maximize")
    study.set_user_attr("config", old)
    study = open_study(config, stores)
    assert study.user_attrs["config"] == old and study.metric_names == ["test_accuracy"]
    assert study.direction.name == "MAXIMIZE"


def test_compare_takes_each_objectives_own_direction():
    config = _config(objectives=[TWO[0], {"metric": "test_loss", "direction": "maximize"}])
    assert direction_of("test_accuracy", config) == "maximize"
    assert direction_of("test_loss", config) == "maximize"  # the study's, not the table's
    assert direction_of("train_seconds", config) == "minimize"


# Searches: NSGA-II and TPE over several objectives, without training ---------------------------


def _fake_values(params: dict) -> list[float]:
    """Accuracy up with beta, cost up with steps: a front along both."""
    return [params["beta"], float(params["num_steps"])]


def _drawn(tmp_path, sampler: str, folder: str, n_trials: int = 10) -> list[dict]:
    config = StudyConfig.model_validate(
        {
            "name": "ga", "space": {"beta": {"low": 0.5, "high": 0.99},
                                    "num_steps": {"low": 5, "high": 50, "step": 5}},
            "sampler": sampler, "sampler_seed": 3, "n_trials": n_trials, "objectives": TWO,
        }
    )  # fmt: skip
    study = open_study(config, open_stores(tmp_path / folder))
    while (trial := next_trial(study, config)) is not None:
        trial.set_user_attr("outcome", "finished")
        study.tell(trial, _fake_values(trial.params))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n_trials and all(len(t.values) == 2 for t in complete)
    front = pareto_trials(study)
    assert front and all(
        not any(
            o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
            for o in complete
        )
        for t in front
    )
    return [t.params for t in complete]


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_searches_of_several_objectives_are_distinct_and_repeatable(tmp_path, sampler):
    first = _drawn(tmp_path, sampler, "a")
    assert len({json.dumps(p, sort_keys=True) for p in first}) == len(first)
    assert _drawn(tmp_path, sampler, "b") == first  # sampler_seed: the same draws again


def test_nsga2_breeds_generations_of_a_third_of_the_trials(tmp_path):
    config = _config(sampler="nsga2", n_trials=24, objectives=TWO)
    assert population_size(config) == 8
    assert population_size(_config(sampler="nsga2", n_trials=6, objectives=TWO)) == 4
    assert population_size(_config(sampler="nsga2", n_trials=1000, objectives=TWO)) == 50
    _drawn(tmp_path, "nsga2", "g", n_trials=12)
    study = optuna.load_study(study_name="ga", storage=open_stores(tmp_path / "g").storage)
    generations = [t.system_attrs.get("NSGAIISampler:generation") for t in study.trials]
    assert max(g for g in generations if g is not None) >= 1


# The end-of-study table ----------------------------------------------------------------------


def test_the_table_marks_the_pareto_optimal_configurations():
    config = _config(objectives=TWO, space={"beta": [0.5, 0.7, 0.8, 0.9]})
    study = optuna.create_study(directions=["maximize", "minimize"])
    points = {0.5: (0.90, 1.0), 0.7: (0.95, 2.0), 0.8: (0.93, 3.0), 0.9: (0.96, 2.5)}
    for beta, (accuracy, loss) in points.items():
        run = {m: 1.0 for m in METRICS} | {"test_accuracy": accuracy, "test_loss": loss}
        study.add_trial(
            create_trial(
                params={"beta": beta},
                distributions={"beta": CategoricalDistribution(list(points))},
                values=[accuracy, loss],
                user_attrs={"outcome": "finished", "runs": [run | {"seed": 0}]},
            )
        )
    table = format_table(study, config)
    lines = table.splitlines()
    rows = [line for line in lines if re.match(r"[* ] +\d+  beta=", line)]
    assert len(rows) == 4 and lines[0].startswith("  ")  # the header keeps its place
    marked = {re.search(r"beta=([\d.]+)", line)[1] for line in rows if line.startswith("*")}
    assert marked == {"0.5", "0.7", "0.9"}  # 0.8: beaten by 0.7 in both
    assert "best:" not in table
    assert "* Pareto-optimal (test_accuracy max, test_loss min): 3 of 4 configurations" in table
    listed = [line for line in lines if re.match(r"  trial \d+ ", line)]
    assert [re.search(r"beta=([\d.]+)", line)[1] for line in listed] == ["0.9", "0.7", "0.5"]
    assert "test_accuracy 0.9600, test_loss 2.500" in listed[0]  # the table's digits
    # one objective: the single best, as before
    single = optuna.create_study(direction="maximize")
    for t in study.trials:
        single.add_trial(
            create_trial(
                params=t.params, distributions=t.distributions, value=t.values[0],
                user_attrs=t.user_attrs,
            )
        )  # fmt: skip
    one = format_table(single, _config(space={"beta": list(points)}))
    assert "best: trial 3 beta=0.9 test_accuracy 0.9600" in one and "Pareto" not in one


def test_pareto_mask_ignores_missing_and_ineligible_rows():
    import pandas as pd

    config = _config(objectives=TWO)
    table = pd.DataFrame(
        {"test_accuracy_mean": [0.9, 0.95, 0.99, float("nan")],
         "test_loss_mean": [1.0, 2.0, 0.5, 0.1]}
    )  # fmt: skip
    assert list(aggregate.pareto_mask(table, config.objectives)) == [False, False, True, False]
    eligible = pd.Series([True, True, False, True])
    assert list(aggregate.pareto_mask(table, config.objectives, eligible)) == [
        True, True, False, False
    ]  # fmt: skip


# End to end on tiny subsets --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory, mnist_dir):
    """A 2 x 2 grid (beta x steps), 2 seeds, test accuracy against test loss, run and
    reported for real."""
    folder = tmp_path_factory.mktemp("mo")
    path = write_study(
        folder, "mo", space={"beta": [0.8, 0.95], "num_steps": [4, 8]}, seeds=2,
        objectives=TWO, description="accuracy against loss",
    )  # fmt: skip
    config = load_study(str(path))
    stores = open_stores(folder / "out")
    study = run_study(config, stores, mnist_dir, progress=False)
    page = build_report(config, stores, folder / "reports" / "mo")
    return config, stores, study, page


@pytest.mark.mnist
def test_a_grid_of_two_objectives_tells_both_means(tiny_grid):
    config, stores, study, _ = tiny_grid
    assert study.metric_names == ["test_accuracy", "test_loss"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    for trial in trials:
        runs = trial.user_attrs["runs"]
        assert len(runs) == 2
        for index, name in enumerate(config.metric_names):
            assert trial.values[index] == pytest.approx(sum(r[name] for r in runs) / 2)
    experiment = MlflowClient(stores.tracking_uri).get_experiment_by_name("mo")
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "test_accuracy"


@pytest.mark.mnist
def test_the_report_draws_the_front_and_lists_it(tiny_grid):
    config, _, study, page = tiny_grid
    body = page.read_text()
    front = {json.dumps(t.params, sort_keys=True) for t in pareto_trials(study)}
    table = body[body.index('<table id="pareto">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    labels = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[0] for row in rows]
    assert len(labels) == len(front)
    parsed = [dict(part.split("=") for part in label.split(", ")) for label in labels]
    assert {
        json.dumps({"beta": float(p["beta"]), "num_steps": int(p["num_steps"])}, sort_keys=True)
        for p in parsed
    } == front
    assert "Pareto-optimal configurations" in body and ">Pareto</th>" in body
    assert "test_accuracy (maximize), test_loss (minimize)" in body
    figure = page.parent / "pareto_test_accuracy_vs_test_loss.png"
    assert figure.is_file() and figure.stat().st_size > 10_000
    assert "heatmap_test_loss_beta_num_steps.png" in body
    summary = json.loads((page.parent / "summary.json").read_text())
    assert summary["objective"] == TWO[0] and summary["objectives"] == TWO
    assert len(summary["pareto"]) == len(front)
    assert set(summary["pareto"][0]["means"]) == {"test_accuracy", "test_loss"}
    reader = PdfReader(page.parent / "report.pdf")
    assert "Pareto-optimal:" in reader.pages[0].extract_text()
    assert any("against" in p.extract_text() for p in reader.pages[1:])


@pytest.mark.mnist
def test_a_tiny_nsga2_search_reports_history_and_importances(tmp_path, mnist_dir):
    path = write_study(
        tmp_path, "ga", sampler="nsga2", sampler_seed=0, n_trials=4, objectives=TWO,
        space={"beta": {"low": 0.6, "high": 0.99}, "num_steps": {"choices": [4, 6, 8]}},
        base={"train_subset": 320, "hidden": 50},
    )  # fmt: skip
    out = tmp_path / "out"
    config = load_study(str(path))
    study = run_study(config, open_stores(out), mnist_dir, progress=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    reports = tmp_path / "reports"
    code = main(["report", str(path), "--output-dir", str(out), "--reports-dir", str(reports)])
    assert code == 0
    names = {p.stem for p in (reports / "ga").glob("*.png")}
    assert {"optimisation_history", "parameter_importances",
            "pareto_test_accuracy_vs_test_loss"} <= names  # fmt: skip
    index = (reports / "index.html").read_text()
    assert "first of 2 objectives" in index and "Pareto-optimal" in index


@pytest.mark.mnist
@pytest.mark.parametrize("cost", ["synops_effective_acs", "energy_estimate_pj"])
def test_accuracy_against_synaptic_operations(tmp_path, mnist_dir, cost):
    """The issue's pair: accuracy (max) against effective synaptic accumulates (min), or
    against the energy estimate made of them."""
    objectives = [TWO[0], {"metric": cost, "direction": "minimize"}]
    path = write_study(
        tmp_path, "ops", space={"num_steps": [4, 8]}, objectives=objectives,
        base={"train_subset": 320, "hidden": 50},
    )  # fmt: skip
    config = load_study(str(path))
    stores = open_stores(tmp_path / "out")
    study = run_study(config, stores, mnist_dir, progress=False)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    ops = {t.params["num_steps"]: t.values[1] for t in trials}
    assert ops[4] > 0 and ops[8] > 0
    page = build_report(config, stores, tmp_path / "reports" / "ops")
    assert (page.parent / f"pareto_test_accuracy_vs_{cost}.png").is_file()
    for run in seed_runs(MlflowClient(stores.tracking_uri), "ops"):
        m = run.data.metrics  # 45 nm, 32-bit float: 4.6 pJ a MAC, 0.9 pJ an AC
        expected = 4.6 * m["synops_effective_macs"] + 0.9 * m["synops_effective_acs"]
        assert m["energy_estimate_pj"] == pytest.approx(expected, rel=1e-9)
    if cost == "synops_effective_acs":
        studied = yaml.safe_load((ROOT / "studies" / "efficiency.yaml").read_text())
        assert studied["objectives"] == objectives


def test_the_dashboard_names_both_objectives_and_shows_the_front(tmp_path):
    """optuna-dashboard (through the harness's read-only storage, in this process) sees the
    two directions, the two metric names and the Pareto front."""
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    from harness.ui.dashboard import open_storage

    config = StudyConfig.model_validate(
        {"name": "dash", "space": {"beta": [0.5, 0.9]}, "objectives": TWO}
    )
    study = open_study(config, open_stores(tmp_path / "out"))
    for beta, values in ((0.5, [0.9, 1.0]), (0.9, [0.95, 2.0])):
        study.enqueue_trial({"beta": beta})
        trial = study.ask()
        trial.suggest_categorical("beta", [0.5, 0.9])
        study.tell(trial, values)
    storage, _ = open_storage(tmp_path / "out", None)
    app = wsgi(storage)
    answer = {}

    def start(status, headers, exc_info=None):
        answer["status"] = status

    environ = {"PATH_INFO": f"/api/studies/{study._study_id}", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    detail = json.loads(b"".join(app(environ, start)))
    assert answer["status"].startswith("200")
    assert detail["objective_names"] == ["test_accuracy", "test_loss"]
    assert detail["directions"] == ["maximize", "minimize"]
    assert len(detail["best_trials"]) == 2  # neither beats the other in both
