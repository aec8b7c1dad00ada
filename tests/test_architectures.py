"""The architecture axis: tutorial 5's mlp of any depth and tutorial 6's csnn, trained by the
same loop, logged and compared by the same study."""

import optuna
import pytest
import torch
from optuna.trial import TrialState

from harness.config import load_study, make_run_config
from harness.network.model import build_model
from harness.stores.opening import open_stores
from harness.study.runner import run_study
from harness.training.loop import train
from tests.helpers import run_cli, seed_runs, stores_of, write_study


def test_one_hidden_width_is_tutorial_5_however_it_is_written():
    assert make_run_config({"hidden": [1000]}) == make_run_config({"hidden": 1000})
    assert make_run_config({"hidden": [1000]}).hidden == 1000  # logged as tutorial 5's
    config = make_run_config({"hidden": [500, 250], "backend": "reference"})
    model = build_model(config)
    shapes = [tuple(s.weight.shape) for s in model.synapses()]
    assert shapes == [(500, 784), (250, 500), (10, 250)]
    assert model.neuron_shapes == [(500,), (250,), (10,)]


def test_the_convolutional_network_is_tutorial_6s():
    model = build_model(make_run_config({"architecture": "csnn", "backend": "reference"}))
    shapes = [tuple(s.weight.shape) for s in model.synapses()]
    assert shapes == [(12, 1, 5, 5), (64, 12, 5, 5), (10, 1024)]
    assert model.neuron_shapes == [(12, 12, 12), (64, 4, 4), (10,)]
    assert sum(p.numel() for p in model.parameters()) == 312 + 19264 + 10250


@pytest.mark.parametrize("neuron", ["leaky", "synaptic"])
@pytest.mark.parametrize(
    "settings", [{"hidden": [40, 20]}, {"architecture": "csnn"}], ids=["mlp-2", "csnn"]
)
def test_every_architecture_trains_with_every_neuron(tiny_dataset, settings, neuron):
    config = make_run_config(
        {**settings, "neuron": neuron, "backend": "reference", "num_steps": 4,
         "batch_size": 64, "train_subset": 128, "test_subset": 64, "encoding": "rate"}
    )  # fmt: skip
    result = train(config, tiny_dataset)
    assert result.status == "finished"
    assert all(torch.isfinite(torch.tensor(result.train_loss)))
    assert 0 <= result.metrics["activation_sparsity"] <= 1
    assert result.metrics["synops_effective_acs"] > 0  # rate spikes into the first synapse


@pytest.mark.mnist
def test_a_study_varies_the_architecture(tmp_path, mnist_dir):
    path = write_study(
        tmp_path, "shapes", space={"architecture": ["mlp", "csnn"]},
        base={"backend": "reference", "num_steps": 4, "hidden": [30, 20]},
    )  # fmt: skip
    config = load_study(str(path))
    study = run_study(config, open_stores(tmp_path / "out"), mnist_dir, progress=False)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    _, client = stores_of(tmp_path / "out")
    counts = {
        run.data.params["architecture"]: run.data.metrics["parameter_count"]
        for run in seed_runs(client, "shapes")
    }
    assert counts == {"mlp": 784 * 30 + 30 + 30 * 20 + 20 + 20 * 10 + 10, "csnn": 29826}


@pytest.mark.mnist
@pytest.mark.processes
def test_a_grid_of_hidden_widths_runs_quietly_and_resumes(tmp_path, mnist_dir):
    path = write_study(
        tmp_path, "depths", space={"hidden": [[12, 8], 16]},
        base={"backend": "reference", "num_steps": 4},
    )  # fmt: skip
    out = tmp_path / "out"
    args = ["study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir)]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr  # Optuna's about lists as choices: they persist
    again = run_cli(*args)  # the stored lists read back as the grid's points
    assert again.returncode == 0 and "nothing left to train" in again.stdout, again.stdout
    assert "Warning" not in again.stderr
    study = optuna.load_study(study_name="depths", storage=open_stores(out).storage)
    assert sorted(map(str, (t.params["hidden"] for t in study.trials))) == ["16", "[12, 8]"]
    reports = tmp_path / "reports"  # and the report draws the widths as categories
    done = run_cli("report", str(path), "--output-dir", str(out), "--reports-dir", str(reports))
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    assert "hidden=[12, 8]" in (reports / "depths" / "configurations.csv").read_text()
