"""Adaptive seeds: the rounds' rule on synthetic values, then through the real study path
(workers, kill and resume), with every seed trained and counted once."""

import signal
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from harness import stats
from harness.config import AdaptiveSeeds, load_study
from harness.errors import ConfigError
from harness.study.runner import tag_stopped
from harness.study.scheduling import next_trial
from harness.study.seed_rounds import BEST, DECIDED, MAX, RESOLUTION, plan
from harness.study.settled import (
    EXTENDS,
    ROUND_SEED,
    configurations,
    grid_key,
    round_item,
    round_plan,
    settled_run_ids,
)
from harness.study.table import summary_rows
from harness.study.tags import DUPLICATE_TAG, STOPPED_TAG
from tests.helpers import run_cli, seed_runs, start_study, stores_of, write_study

RULE = AdaptiveSeeds(min=3, max=6, resolution=0.001)


def _values(means: dict[str, float], noise: dict[int, float], seeds: int = 10) -> dict:
    """Every configuration's value per seed: its mean plus a seed effect shared by all of
    them (common random numbers), and a small per-configuration wobble."""
    return {
        label: {s: mean + noise[s] + 0.0005 * ((s * 7 + i) % 3 - 1) for s in range(seeds)}
        for i, (label, mean) in enumerate(means.items())
    }


def _truncate(values: dict, targets: dict) -> dict:
    return {label: {s: v for s, v in by_seed.items() if s < targets[label]}
            for label, by_seed in values.items()}  # fmt: skip


def _race(values: dict, rule: AdaptiveSeeds = RULE):
    """Run the rounds to the end, giving each configuration the seeds the plan asks for."""
    known = {label: {s: v for s, v in by.items() if s < rule.min} for label, by in values.items()}
    for _ in range(100):
        step = plan(known, rule)
        if step.done:
            return step, known
        for label, seeds in step.pending.items():
            for seed in seeds:
                known[label][seed] = values[label][seed]
    raise AssertionError("the rounds did not end")


def test_a_clearly_worse_configuration_stops_after_min_and_a_close_one_races_on():
    noise = {s: (-0.02, 0.01, 0.015, -0.01, 0.0, 0.02, -0.015, 0.005, 0.01, -0.005)[s]
             for s in range(10)}  # fmt: skip
    values = _values({"good": 0.94, "close": 0.9395, "bad": 0.80}, noise)
    final, known = _race(values)
    assert final.best == "good" and final.stopped["good"] == BEST
    assert final.stopped["bad"] == DECIDED and final.targets["bad"] == 3
    assert final.targets["close"] > 3  # undecided after 3: more seeds
    assert final.stopped["close"] in (DECIDED, RESOLUTION, MAX)
    assert final.targets["good"] >= final.targets["close"]  # the best has the rival's seeds
    assert {label: sorted(by) for label, by in known.items()} == {
        label: list(range(final.targets[label])) for label in values
    }  # exactly the seeds asked for, no gaps
    verdicts = stats.vs_best(known, final.best, "maximize")
    for label, reason in final.stopped.items():  # decided by the rounds: significant by Holm
        assert reason != DECIDED or verdicts[label]["verdict"] == "worse"


def test_the_plan_is_the_same_from_any_point_and_asks_each_seed_once():
    noise = {s: 0.01 * ((s * 5) % 7 - 3) for s in range(10)}
    values = _values({"a": 0.93, "b": 0.929, "c": 0.931, "d": 0.85}, noise)
    final, known = _race(values)
    assert plan(known, RULE).targets == final.targets  # replaying the end gives the end
    # half-way: the pending seeds are exactly the ones missing from the next targets
    half = plan(_truncate(values, {k: 4 for k in values}), RULE)
    for label, seeds in half.pending.items():
        assert seeds == [s for s in range(half.targets[label]) if s >= 4]


def test_a_configuration_at_max_stops_there_and_resolution_ends_a_near_tie():
    noise = {s: 0.01 * ((s * 3) % 5 - 2) for s in range(10)}
    values = _values({"a": 0.93, "b": 0.9299}, noise)
    final, _ = _race(values, AdaptiveSeeds(min=3, max=4, resolution=1e-9))
    rival = "a" if final.best == "b" else "b"
    assert final.stopped[rival] in (MAX, DECIDED) and final.targets == {"a": 4, "b": 4}
    wide = _race(values, AdaptiveSeeds(min=3, max=10, resolution=0.5))[0]
    rival = "a" if wide.best == "b" else "b"
    assert wide.stopped[rival] == RESOLUTION and wide.targets == {"a": 3, "b": 3}


@pytest.mark.parametrize(
    ("seeds", "fragment"),
    [
        (
            {"min": 1, "max": 4, "resolution": 0.01},
            "invalid value for 'seeds.min': Input should be greater than or equal to 2",
        ),
        (
            {"min": 4, "max": 3, "resolution": 0.01},
            "invalid value for 'seeds': max (3) must be at least min (4)",
        ),
        ({"min": 3, "max": 4}, "missing key 'seeds.resolution' (adaptive seeds: min, max, "),
        ({"min": 3, "max": 4, "resolution": 0.01, "rounds": 2}, "unknown key 'seeds.rounds'"),
        ({"min": 3, "max": 4, "resolution": 0}, "'seeds.resolution': Input should be greater"),
        ("three", "'seeds': a count, a list of seeds, or {min, max, resolution} for adaptive"),
    ],
)
def test_bad_adaptive_seeds_are_one_line_errors(tmp_path, seeds, fragment):
    path = write_study(tmp_path, "bad", space={"beta": [0.9]}, seeds=seeds)
    with pytest.raises(ConfigError) as caught:
        load_study(str(path))
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_adaptive_seeds_need_one_objective_and_no_pruner(tmp_path):
    rule = {"min": 2, "max": 4, "resolution": 0.01}
    path = write_study(tmp_path, "s", space={"beta": {"low": 0.5, "high": 0.9}}, seeds=rule,
                       sampler="tpe", n_trials=4, pruner={"type": "median"})  # fmt: skip
    with pytest.raises(ConfigError, match="a pruner cannot stop them"):
        load_study(str(path))
    path = write_study(tmp_path, "m", space={"beta": [0.5]}, seeds=rule,
                       objectives=[{"metric": "test_accuracy"},
                                   {"metric": "test_loss", "direction": "minimize"}])  # fmt: skip
    with pytest.raises(ConfigError, match="several objectives"):
        load_study(str(path))


# Two workers and one seed, on Optuna's in-memory storage ---------------------------------

CLOSE = {0.9: [0.90, 0.92, 0.91], 0.95: [0.91, 0.91, 0.92]}  # undecided after seeds 0-2


def _settled_trial(
    beta: float, accuracies: dict[int, float], copy: int = 0, run_ids=None, **attrs
) -> optuna.trial.FrozenTrial:
    """A trial of beta as the runner leaves it once its seeds finished (its runs' ids made
    up, or `run_ids` by seed)."""
    run_ids = run_ids or {s: f"beta{beta}-seed{s}-copy{copy}" for s in accuracies}
    runs = [{"seed": s, "run_id": run_ids[s],
             "status": "finished", "test_accuracy": a, "test_loss": 0.3, "train_seconds": 1.0}
            for s, a in accuracies.items()]  # fmt: skip
    return optuna.trial.create_trial(
        params={"beta": beta},
        distributions={"beta": optuna.distributions.CategoricalDistribution([0.9, 0.95])},
        value=sum(accuracies.values()) / len(accuracies),
        user_attrs={"runs": runs, "mlflow_run_ids": [r["run_id"] for r in runs], **attrs},
    )


def _close_study(tmp_path):
    path = write_study(tmp_path, "close", space={"beta": [0.9, 0.95]},
                       seeds={"min": 3, "max": 6, "resolution": 0.0001})  # fmt: skip
    config = load_study(str(path))
    study = optuna.create_study(study_name="close", direction="maximize")
    for beta, accuracies in CLOSE.items():
        study.add_trial(_settled_trial(beta, dict(enumerate(accuracies)),
                                       grid_point=grid_key({"beta": beta})))  # fmt: skip
    return config, study


def test_a_second_worker_takes_the_other_seed_while_the_first_has_not_suggested_yet(
    tmp_path, monkeypatch
):
    config, study = _close_study(tmp_path)
    assert round_plan(study, config).pending == {grid_key({"beta": b}): [3] for b in CLOSE}
    queued = []
    enqueue = study.enqueue_trial

    def counting(*args, **kwargs):
        queued.append(kwargs["user_attrs"][ROUND_SEED])
        assert len(queued) <= 2, "a worker keeps queueing a seed another worker holds"
        return enqueue(*args, **kwargs)

    monkeypatch.setattr(study, "enqueue_trial", counting)
    first = next_trial(study, config)  # a worker took it; its params are not suggested yet
    assert first is not None and first.params == {}
    second = next_trial(study, config)
    assert second is not None
    assert {round_item(first), round_item(second)} == {(grid_key({"beta": b}), 3) for b in CLOSE}


def test_a_seed_two_workers_both_trained_counts_once(tmp_path):
    """Stores written before the fix above can hold one seed twice: it counts once, in the
    table, the rounds and the report's runs."""
    config, study = _close_study(tmp_path)
    label = grid_key({"beta": 0.9})
    first = study.trials[0].number
    for copy in (1, 2):  # as older workers left it: no round_configuration attribute
        study.add_trial(_settled_trial(0.9, {3: 0.93}, copy, **{EXTENDS: first, ROUND_SEED: 3}))
    seeds = [r["seed"] for t in configurations(study, config)[label] for r in t.user_attrs["runs"]]
    assert seeds == [0, 1, 2, 3]
    assert {r["label"]: r["seeds"] for r in summary_rows(study, config)} == {
        label: 4,
        grid_key({"beta": 0.95}): 3,
    }
    duplicate = study.trials[-1]
    assert settled_run_ids(study).isdisjoint(duplicate.user_attrs["mlflow_run_ids"])
    assert len(settled_run_ids(study)) == 7
    assert round_plan(study, config).pending == {grid_key({"beta": 0.95}): [3]}


def test_the_end_of_the_rounds_repairs_a_parent_run_that_counted_a_seed_twice(tmp_path):
    """On stores with a seed trained twice, the end of the rounds (any rerun of the study)
    writes the configuration's parent run again from the seeds that count, and tags the
    repeated seed's run with the run that counts instead."""
    path = write_study(tmp_path, "close", space={"beta": [0.9, 0.95]},
                       seeds={"min": 3, "max": 4, "resolution": 0.0001})  # fmt: skip
    config = load_study(str(path))
    _, client = stores_of(tmp_path / "out")
    experiment = client.create_experiment("close")

    def run(parent=None):
        tags = {"mlflow.parentRunId": parent} if parent else {}
        return client.create_run(experiment, tags=tags).info.run_id

    study = optuna.create_study(study_name="close", direction="maximize")
    parents, round_runs = {}, {}
    for beta, accuracies in CLOSE.items():
        parents[beta] = run()
        ids = {s: run(parents[beta]) for s in range(3)}
        study.add_trial(_settled_trial(beta, dict(enumerate(accuracies)), run_ids=ids,
                                       grid_point=grid_key({"beta": beta}),
                                       mlflow_parent_run_id=parents[beta]))  # fmt: skip
    first = {t.params["beta"]: t.number for t in study.trials}
    for beta, copies in ((0.9, 2), (0.95, 1)):  # beta 0.9's seed 3 trained twice
        for copy in range(copies):
            round_runs[beta, copy] = run(parents[beta])
            attrs = {EXTENDS: first[beta], ROUND_SEED: 3}
            study.add_trial(_settled_trial(beta, {3: 0.93}, copy, {3: round_runs[beta, copy]},
                                           **attrs))  # fmt: skip
    assert round_plan(study, config).done
    tag_stopped(study, config, client)
    repaired = client.get_run(parents[0.9]).data
    assert repaired.metrics["seeds"] == 4 and repaired.tags["harness.seeds"] == "4"
    assert repaired.metrics["test_accuracy_mean"] == pytest.approx((0.90 + 0.92 + 0.91 + 0.93) / 4)
    assert "seeds" not in client.get_run(parents[0.95]).data.metrics  # nothing to repair
    duplicate = client.get_run(round_runs[0.9, 1]).data.tags
    assert duplicate[DUPLICATE_TAG] == round_runs[0.9, 0]
    assert DUPLICATE_TAG not in client.get_run(round_runs[0.9, 0]).data.tags


# Through the real study path ----------------------------------------------------------------

# lr 1e-6 learns nothing in 20 iterations: clearly worse; beta 0.9 and 0.95 are close.
SPACE = {"lr": [5e-4, 1e-6], "beta": [0.9, 0.95]}
SEEDS = {"min": 3, "max": 5, "resolution": 0.0001}


def _check_stores(out, name: str) -> dict[str, int]:
    """The stores of a finished adaptive study are consistent: no trial or run left RUNNING,
    every (configuration, seed) trained and counted once, the seeds exactly those the rounds
    asked for, and each parent run saying how many seeds it got and why it stopped. Returns
    the seeds per configuration."""
    stores, client = stores_of(out)
    config = load_study(str(out.parent / f"{name}.yaml"))
    study = optuna.load_study(study_name=name, storage=stores.storage)
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    final = round_plan(study, config)
    assert final is not None and final.done
    runs = [r for r in seed_runs(client, name) if "harness.trial_failed" not in r.data.tags]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    keys = Counter(
        (r.data.params["lr"], r.data.params["beta"], r.data.params["seed"]) for r in finished
    )
    assert set(keys.values()) == {1}  # each seed once
    counted = {i for t in study.trials if t.state == TrialState.COMPLETE
               for i in t.user_attrs.get("mlflow_run_ids", [])}  # fmt: skip
    assert counted == {r.info.run_id for r in finished}  # and counted once
    per_config = Counter((lr, beta) for lr, beta, _ in keys)
    parents = seed_runs(client, name, parents=True)
    assert len(parents) == 4 and {p.info.status for p in parents} == {"FINISHED"}
    for parent in parents:
        point = (parent.data.params["lr"], parent.data.params["beta"])
        assert parent.data.tags["harness.seeds"] == str(per_config[point])
        assert parent.data.tags[STOPPED_TAG] in (DECIDED, RESOLUTION, MAX, BEST)
        assert parent.data.metrics["seeds"] == per_config[point]
    assert sorted(final.targets.values()) == sorted(per_config.values())
    return {f"lr={lr}, beta={beta}": n for (lr, beta), n in per_config.items()}


@pytest.fixture(scope="module")
def raced(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp("raced")
    path = write_study(folder, "raced", space=SPACE, seeds=SEEDS)
    out = folder / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir),
                   "--workers", "2", timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder, out, done.stdout


@pytest.mark.mnist
@pytest.mark.processes
def test_two_workers_spend_fewer_seeds_on_the_clearly_worse_configurations(raced):
    folder, out, stdout = raced
    seeds = _check_stores(out, "raced")
    worse = [n for label, n in seeds.items() if "lr=1e-06" in label]
    assert worse == [3, 3]  # decided after the first round
    assert max(seeds.values()) > 3  # the close ones raced on
    assert "stopped" in stdout and "decided" in stdout and "(seed round)" in stdout
    ran = sum(seeds.values())
    assert (
        f"adaptive seeds: {ran} runs, against 20 with 5 seeds for every configuration "
        f"({20 - ran} saved)" in stdout
    )


@pytest.mark.mnist
@pytest.mark.processes
def test_the_report_shows_the_seeds_and_why_they_stopped(raced, tmp_path):
    folder, out, _ = raced
    done = run_cli("report", str(folder / "raced.yaml"), "--output-dir", str(out),
                   "--reports-dir", str(tmp_path / "reports"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = (tmp_path / "reports" / "raced" / "index.html").read_text()
    assert '<th class="">stopped</th>' in body and ">decided<" in body


@pytest.mark.mnist
@pytest.mark.processes
def test_a_killed_adaptive_study_resumes_its_rounds(tmp_path, mnist_dir):
    path = write_study(tmp_path, "raced", space=SPACE, seeds=SEEDS)
    out = tmp_path / "out"
    process = start_study(path, out, mnist_dir)
    deadline = time.monotonic() + 300
    while "(seed round)" not in process.stdout and process.poll() is None:
        assert time.monotonic() < deadline, process.stdout  # kill -9 once a round is under way
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stores, _ = stores_of(out)
    study = optuna.load_study(study_name="raced", storage=stores.storage)
    assert any(EXTENDS in t.user_attrs for t in study.trials), "killed before the rounds"

    resumed = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir),
                      timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    seeds = _check_stores(out, "raced")
    assert [n for label, n in seeds.items() if "lr=1e-06" in label] == [3, 3]
    study = optuna.load_study(study_name="raced", storage=stores.storage)
    rounds = [
        (t.params["lr"], t.params["beta"], t.user_attrs[ROUND_SEED])
        for t in study.trials
        if t.state == TrialState.COMPLETE and EXTENDS in t.user_attrs
    ]
    assert len(rounds) == len(set(rounds))  # no seed of a round settled twice


@pytest.mark.mnist
@pytest.mark.processes
def test_a_search_with_adaptive_seeds_stops_worse_trials_by_wilcoxon(tmp_path, mnist_dir):
    """A search gets Optuna's WilcoxonPruner with seeds as its instances: a trial found worse
    than the best (one-sided Wilcoxon p < 0.1, at least `min` seeds) stops there, and its value
    is the mean of the seeds it ran."""
    path = write_study(
        tmp_path, "searched", sampler="random", sampler_seed=4, n_trials=4,
        space={"lr": {"choices": [5e-4, 1e-6]}, "beta": {"low": 0.85, "high": 0.95}},
        seeds={"min": 2, "max": 5, "resolution": 0.001},
    )  # fmt: skip
    out = tmp_path / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir))
    assert done.returncode == 0, done.stderr
    stores, client = stores_of(out)
    study = optuna.load_study(study_name="searched", storage=stores.storage)
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 4
    for trial in trials:
        seeds = sorted(int(r["seed"]) for r in trial.user_attrs["runs"])
        assert seeds == list(range(len(seeds))) and 2 <= len(seeds) <= 5
        assert sorted(trial.intermediate_values) == seeds  # one report per seed
        assert trial.value == pytest.approx(
            sum(r["test_accuracy"] for r in trial.user_attrs["runs"]) / len(seeds)
        )
        assert trial.user_attrs["stopped"] == ("max" if len(seeds) == 5 else "pruned")
    bad = [t for t in trials if t.params["lr"] == 1e-6]
    good = [t for t in trials if t.params["lr"] == 5e-4]
    assert bad and good and study.best_trial in good
    later = [t for t in bad if t.number > min(g.number for g in good)]
    assert later and all(t.user_attrs["stopped"] == "pruned" for t in later)
    assert "stopped" in done.stdout and "pruned" in done.stdout
