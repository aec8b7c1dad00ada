"""A network of your own (`model: "module:function"`): the contract, each way of breaking it
(one line, exit 2, nothing written), and a study of a module written outside the repository
whose saved weights load back into it and measure as NeuroBench measures them."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness.config import load_study, make_run_config
from harness.data.loading import Split, load
from harness.errors import ConfigError
from harness.network.model import build_model
from harness.network.user_model import dry_run
from harness.stores.opening import open_stores
from harness.training.loop import evaluate
from tests.helpers import TINY, run_cli
from tests.test_efficiency import _neurobench

GOOD = """
import snntorch as snn
from torch import nn


def build(inputs, outputs, beta, spike_grad, width=32, **settings):
    return nn.Sequential(
        nn.Linear(inputs, width),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),
        nn.Linear(width, outputs),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True, output=True),
    )
"""

# Neurons declared before the synapses they follow: the metrics go by the order of the calls.
DECLARED_OUT_OF_ORDER = """
import snntorch as snn
from torch import nn


class Net(nn.Module):
    def __init__(self, beta, spike_grad):
        super().__init__()
        self.lif2 = snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True, output=True)
        self.lif1 = snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True)
        self.fc2 = nn.Linear(24, 10)
        self.fc1 = nn.Linear(784, 24)

    def forward(self, x):
        return self.lif2(self.fc2(self.lif1(self.fc1(x))))


def build(beta, spike_grad, **settings):
    return Net(beta, spike_grad)
"""


SMALL = {k: v for k, v in TINY.items() if k != "hidden"}  # (hidden: the built-in networks')


def write_module(folder: Path, name: str, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def import_path(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A folder outside the repository, importable (as a study file's folder is)."""
    folder = tmp_path / "elsewhere"
    write_module(folder, "good_net", GOOD)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_user_model_trains_on_the_reference_loop_and_counts_every_layer(elsewhere, mnist_dir):
    config = make_run_config({**SMALL, "model": "good_net:build", "model_args": {"width": 24}})
    assert config.backend == "reference"  # what `fused` cannot run, unset
    dry_run(config)
    torch.manual_seed(0)
    model = build_model(config)
    assert [tuple(s.weight.shape) for s in model.synapses()] == [(24, 784), (10, 24)]
    assert model.neuron_shapes == [(24,), (10,)]
    assert list(model.state_dict()) == list(model.net.state_dict())  # the user module's own
    split = load(mnist_dir, torch.device("cpu"), test_subset=64).test
    metrics = evaluate(model, split, config)
    assert 0 < metrics["activation_sparsity"] < 1 and metrics["synops_effective_acs"] > 0
    # the image into the first synapse at every step: MACs, one per nonzero pixel and weight
    pixels = float((split.images != 0).sum()) / len(split)
    assert metrics["synops_effective_macs"] == pytest.approx(config.num_steps * pixels * 24)
    assert metrics["synops_dense"] == config.num_steps * (784 * 24 + 24 * 10)


def test_the_metrics_go_by_the_order_the_layers_are_called(elsewhere):
    write_module(elsewhere, "shuffled_net", DECLARED_OUT_OF_ORDER)
    config = make_run_config({**SMALL, "model": "shuffled_net:build"})
    dry_run(config)
    model = build_model(config)
    assert [tuple(s.weight.shape) for s in model.synapses()] == [(24, 784), (10, 24)]
    assert model.neuron_shapes == [(24,), (10,)]


RECURRENT = GOOD.replace(
    "snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),",
    "snn.RLeaky(beta=beta, linear_features=width, spike_grad=spike_grad, init_hidden=True),",
)


def test_a_recurrent_layer_of_your_own_counts_its_own_weights_as_a_synapse(elsewhere):
    write_module(elsewhere, "recurrent_net", RECURRENT)
    config = make_run_config({**SMALL, "model": "recurrent_net:build", "num_steps": 5})
    dry_run(config)
    torch.manual_seed(0)
    model = build_model(config)
    # input -> hidden, hidden -> hidden (RLeaky's own, on the layer's last spikes), -> output
    assert [tuple(s.weight.shape) for s in model.synapses()] == [(32, 784), (32, 32), (10, 32)]
    assert model.neuron_shapes == [(32,), (10,)]
    generator = torch.Generator().manual_seed(1)
    split = Split((torch.rand(16, 784, generator=generator) > 0.7).float() * 0.5,
                  torch.arange(16) % 10)  # fmt: skip
    metrics = evaluate(model, split, config)
    ops = [metrics[f"synops/synapse{i}"] for i in (1, 2, 3)]
    assert ops[1] > 0 and "synops/synapse4" not in metrics
    assert sum(ops) == pytest.approx(
        metrics["synops_effective_macs"] + metrics["synops_effective_acs"]
    )


BAD = {
    "a module that is not there": ("nowhere:build", None, "cannot import module 'nowhere'"),
    "a missing attribute": ("good_net:make", None, "module 'good_net' has no attribute 'make'"),
    "a factory that raises": (
        "broken:build",
        "def build(**settings):\n    raise ValueError('width must be even')\n",
        "broken:build(...) raised ValueError: width must be even",
    ),
    "output of the wrong shape": (
        "wide:build",
        GOOD.replace("nn.Linear(width, outputs)", "nn.Linear(width, 7)"),
        "a step returned spikes of shape (1, 7), not (1, 10)",
    ),
    "neurons that keep no state": (
        "stateless:build",
        GOOD.replace("init_hidden=True)", "init_hidden=False)"),
        "a neuron is built without init_hidden=True",
    ),
    "not a module": ("plain:build", "def build(**settings):\n    return 3\n", "returned int"),
}


@pytest.mark.processes
@pytest.mark.parametrize("case", list(BAD), ids=lambda c: c.replace(" ", "-"))
def test_each_breach_of_the_contract_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    spec, source, says = BAD[case]
    folder = tmp_path / "study"
    write_module(folder, "good_net", GOOD)
    if source is not None:
        write_module(folder, spec.split(":")[0], source)
    body = {"name": "own", "base": {**SMALL, "model": spec}, "space": {"beta": [0.9]}}
    (folder / "own.yaml").write_text(yaml.safe_dump(body))
    out = tmp_path / "out"
    done = run_cli("study", str(folder / "own.yaml"), "--output-dir", str(out))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert "the contract: build(**settings) returns an nn.Module" in done.stderr
    assert not out.exists()


def test_fused_with_a_user_model_and_settings_of_the_built_in_networks_are_refused(elsewhere):
    with pytest.raises(ConfigError, match="backend fused does not run model 'good_net:build'"):
        make_run_config({"model": "good_net:build", "backend": "fused"})
    with pytest.raises(ConfigError, match="hidden describes the built-in networks"):
        make_run_config({"model": "good_net:build", "hidden": 64})
    with pytest.raises(ConfigError, match="model_args are the keywords of a model's factory"):
        make_run_config({"model_args": {"width": 3}})
    with pytest.raises(ConfigError, match="'beta' is a setting the harness passes itself"):
        make_run_config({"model": "good_net:build", "model_args": {"beta": 0.5}})
    with pytest.raises(ConfigError, match='must be "module:function"'):
        make_run_config({"model": "good_net.build"})


def test_a_study_varies_a_keyword_of_the_model(tmp_path, elsewhere):
    body = {"name": "vary", "base": {"model": "good_net:build"},
            "space": {"model_args.width": [16, 32]}}  # fmt: skip
    (tmp_path / "vary.yaml").write_text(yaml.safe_dump(body))
    study = load_study(str(tmp_path / "vary.yaml"))
    widths = [study.run_config(p, 0).model_args for p in study.grid()]
    assert widths == [{"width": 16}, {"width": 32}]
    body["base"] = {}
    (tmp_path / "vary.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="model_args vary a model of your own: set model"):
        load_study(str(tmp_path / "vary.yaml"))


@pytest.mark.mnist
@pytest.mark.processes
def test_a_study_of_a_module_outside_the_repository_saves_weights_that_load_back_into_it(
    tmp_path, mnist_dir
):
    pytest.importorskip("neurobench")
    folder = tmp_path / "my_research"
    write_module(folder, "my_net", GOOD)
    base = {**SMALL, "model": "my_net:build", "save_model": True, "num_steps": 8}
    body = {"name": "mine", "base": base, "space": {"model_args.width": [20]}}
    (folder / "mine.yaml").write_text(yaml.safe_dump(body))
    out = tmp_path / "out"
    done = run_cli(
        "study", str(folder / "mine.yaml"), "--output-dir", str(out), "--data-dir", str(mnist_dir)
    )
    assert done.returncode == 0, done.stderr
    stores = open_stores(out)
    client = MlflowClient(stores.tracking_uri)
    study = optuna.load_study(study_name="mine", storage=stores.storage)
    run_id = study.trials[0].user_attrs["mlflow_run_ids"][0]
    logged = client.get_run(run_id).data
    assert logged.params["model"] == "my_net:build" and logged.params["backend"] == "reference"
    assert logged.params["model_args.width"] == "20" and "model_args" not in logged.params
    assert logged.metrics["parameter_count"] == 784 * 20 + 20 + 20 * 10 + 10
    # the weights load into what the user's own factory builds, every key in place
    import snntorch as snn

    mine = import_path(folder / "my_net.py")
    net = mine.build(inputs=784, outputs=10, beta=0.95, spike_grad=None, width=20)
    state = torch.load(client.download_artifacts(run_id, "model.pt", str(tmp_path)))
    net.load_state_dict(state)  # strict
    snn.SpikingNeuron.init()
    # NeuroBench on that module and the run's test images measures what the run logged
    config = make_run_config({**base, "model_args": {"width": 20}})
    split = load(mnist_dir, torch.device("cpu"), test_subset=SMALL["test_subset"],
                 sampling="stratified").test  # fmt: skip
    theirs = _neurobench(net, config, split, len(split), as_snntorch=lambda model, _: model)
    same = dict(rel=1e-6)
    for ours, name in [
        ("rate_accuracy", "ClassificationAccuracy"),
        ("activation_sparsity", "ActivationSparsity"),
        ("synops_effective_macs", "Effective_MACs"),
        ("synops_effective_acs", "Effective_ACs"),
        ("synops_dense", "Dense"),
        ("membrane_updates", "MembraneUpdates"),
        ("footprint_bytes", "Footprint"),
        ("parameter_count", "ParameterCount"),
    ]:
        assert theirs[name] > 0 or name == "ClassificationAccuracy", name
        assert logged.metrics[ours] == pytest.approx(theirs[name], **same), name
    # and the report reads the study as any other, the model's keyword as its parameter
    reports = tmp_path / "reports"
    done = run_cli("report", str(folder / "mine.yaml"), "--output-dir", str(out),
                   "--reports-dir", str(reports))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "model_args.width" in (reports / "mine" / "configurations.csv").read_text()
    assert (reports / "mine" / "activity_per_layer.png").stat().st_size > 10_000
    layers = {k for k in logged.metrics if "/" in k}
    expected = {f"firing_rate/layer{i}" for i in (1, 2)} | {f"synops/synapse{i}" for i in (1, 2)}
    assert layers == expected
    assert sum(logged.metrics[f"synops/synapse{i}"] for i in (1, 2)) == pytest.approx(
        logged.metrics["synops_effective_macs"] + logged.metrics["synops_effective_acs"]
    )
