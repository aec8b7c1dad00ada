"""The efficiency metrics (NeuroBench 2.3's definitions): hand-made activity with known
answers, both backends agreeing, and the real `neurobench` package on the same weights."""

import pytest
import torch
from torch import nn

from harness.config import make_run_config
from harness.data.loading import Split, load, read_split
from harness.network import neurons
from harness.network.model import FusedNet, LayerActivity, NetOutput, build_model, layer_activity
from harness.training import efficiency
from harness.training.energy import ENERGY_MODELS
from harness.training.loop import encoder, evaluate, train
from harness.training.metrics import EFFICIENCY_METRICS, METRICS


class Tiny(nn.Module):
    """Linear(4, 3) -> LIF -> Linear(3, 2) -> LIF, with hand-set weights (some zero)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 0, 2, 0], [3, 0, 0, 0], [4, 5, 0, 0]]))
            self.fc2.weight.copy_(torch.tensor([[1.0, 0, 2], [0, 0, 3]]))
        self.input_shape, self.neuron_shapes = (4,), [(3,), (2,)]

    def synapses(self) -> list[nn.Module]:
        return [self.fc1, self.fc2]


def test_synaptic_operations_count_nonzero_inputs_times_nonzero_weights():
    model = Tiny()
    fan_out = efficiency.fan_out(model.fc1.weight)
    assert fan_out.tolist() == [3, 1, 1, 0]  # nonzero weights in each input's column
    images = torch.tensor(
        [
            [0.5, 0.0, 0.25, 7.0],  # not binary: inputs 0, 2 (and 3, no weights) -> 3 + 1 MACs
            [1.0, 1.0, 0.0, 0.0],  # binary: inputs 0, 1 -> 3 + 1 ACs
            [-1.0, 0.0, 1.0, 1.0],  # binary: inputs 0, 2, 3 -> 3 + 1 + 0 ACs
            [0.0, 0.0, 0.0, 0.0],  # binary, silent: nothing
        ]
    )
    assert efficiency.is_binary(images).tolist() == [False, True, True, True]
    # int64 (elementwise), float32 / float64 (the CPU kernel, or a matrix product elsewhere)
    for dtype in (torch.int64, torch.float32, torch.float64):
        for rows in (images, images.unsqueeze(0)):  # (B, in): the kernel; (1, B, in): torch
            macs, acs = efficiency.synaptic_operations(rows, fan_out.to(dtype))
            assert (macs.dtype, int(macs), int(acs)) == (torch.int64, 4, 8)
    assert efficiency.exact_dtype(fan_out) == torch.float32
    assert efficiency.exact_dtype(torch.full((784,), 30_000)) == torch.float64  # > 2**24


def test_spike_operations_from_counts_equal_those_of_the_spike_tensor():
    weight = Tiny().fc2.weight  # fan-out per hidden neuron: 1, 0, 2
    spikes = torch.zeros(3, 2, 3)  # (T, B, H)
    spikes[0, 0] = torch.tensor([1.0, 1, 1])  # 1 + 0 + 2
    spikes[1, 1] = torch.tensor([0.0, 1, 1])  # 0 + 2
    spikes[2, 0] = torch.tensor([1.0, 0, 0])  # 1
    fan_out = efficiency.fan_out(weight)
    counts, _ = layer_activity(spikes, torch.zeros_like(spikes))
    assert counts.tolist() == [2, 2, 2]
    assert int(efficiency.spike_operations(counts, fan_out)) == 6
    macs, acs = efficiency.synaptic_operations(spikes, fan_out)  # every vector binary
    assert (int(macs), int(acs)) == (0, 6)


def test_layer_activity_counts_spikes_and_membranes_that_changed():
    membranes = torch.tensor(
        [  # (T=4, B=1, N=3)
            [[0.5, 0.0, 1.2]],
            [[0.5, 0.1, 0.2]],  # neuron 0 unchanged
            [[0.7, 0.1, 0.2]],  # neurons 1, 2 unchanged
            [[0.7, 0.1, 0.3]],  # neurons 0, 1 unchanged
        ]
    )
    spikes = (membranes > 1.0).float()
    counts, updates = layer_activity(spikes, membranes)
    assert (counts.tolist(), int(updates)) == ([0, 0, 1], 2 + 1 + 1)


def test_activation_sparsity_is_the_share_of_silent_neuron_steps():
    assert efficiency.activation_sparsity(3, 12) == 0.75
    assert efficiency.activation_sparsity(0, 0) == 0.0  # nothing ran, as NeuroBench


def test_workload_per_sample_on_hand_made_activity():
    model = Tiny()
    workload = efficiency.Workload(model, num_steps=2)
    images = torch.tensor([[0.5, 0.0, 0.25, 0.0], [1.0, 1.0, 0.0, 0.0]])  # 4 MACs, 4 ACs
    out_spikes = torch.zeros(2, 2, 2)
    out_spikes[1, 0, 1] = 1
    out_membranes = torch.tensor([[[0.1, 0.2], [0.0, 0.0]], [[0.1, 1.2], [0.3, 0.0]]])
    hidden_counts = torch.tensor([1, 1, 2])  # spikes into fc2: 1 * 1 + 1 * 0 + 2 * 2 = 5 ACs
    output_counts, output_updates = layer_activity(out_spikes, out_membranes)  # 1 and 2
    layers = (
        LayerActivity(hidden_counts, torch.tensor(3)),
        LayerActivity(output_counts, output_updates),
    )
    workload.add(images, NetOutput(out_spikes, out_membranes, hidden_counts.sum(), layers))
    metrics = workload.metrics()
    workload_names = [n for n in EFFICIENCY_METRICS if METRICS[n].efficiency == "workload"]
    assert set(workload_names) <= set(metrics)  # the table names what the workload computes
    assert metrics["synops_effective_macs"] == 4 / 2
    assert metrics["synops_effective_acs"] == (4 + 5) / 2
    assert metrics["synops_dense"] == 4 * 3 + 2 * 3 * 2  # fc1 once, fc2 every step
    # neuron-steps: 2 samples x 2 steps x 5 neurons; spikes: 4 hidden + 1 output
    assert metrics["activation_sparsity"] == 1 - 5 / 20
    # every neuron at the first step, then 3 hidden and 2 output membrane changes in 2 samples
    assert metrics["membrane_updates"] == 5 + (3 + 2) / 2
    # 45 nm CMOS, 32-bit float: a MAC is a multiply (3.7 pJ) and an add (0.9 pJ), an AC an add
    assert metrics["energy_estimate_pj"] == pytest.approx(2 * (3.7 + 0.9) + 4.5 * 0.9)


def test_the_energy_estimate_follows_the_chosen_energy_model():
    model = Tiny()
    images = torch.tensor([[0.5, 0.0, 0.25, 0.0]])  # fc1 fan-outs 3, 1, 1, 0: 4 MACs
    quiet = torch.zeros(2, 1, 2)
    layers = (LayerActivity(torch.tensor([0, 0, 2]), torch.tensor(0)),) + (
        LayerActivity(torch.tensor(0), torch.tensor(0)),
    )
    out = NetOutput(quiet, quiet, torch.tensor(2), layers)  # 2 spikes into fc2: 4 ACs
    expected = {  # Horowitz, ISSCC 2014: (multiply, add) in pJ
        "horowitz45_fp32": 4 * (3.7 + 0.9) + 4 * 0.9,
        "horowitz45_fp16": 4 * (1.1 + 0.4) + 4 * 0.4,
        "horowitz45_int32": 4 * (3.1 + 0.1) + 4 * 0.1,
        "horowitz45_int8": 4 * (0.2 + 0.03) + 4 * 0.03,
    }
    assert set(expected) == set(ENERGY_MODELS)
    for name, pj in expected.items():
        workload = efficiency.Workload(model, num_steps=2, energy_model=name)
        workload.add(images, out)
        metrics = workload.metrics()
        assert (metrics["synops_effective_macs"], metrics["synops_effective_acs"]) == (4, 4)
        assert metrics["energy_estimate_pj"] == pytest.approx(pj), name


def test_spike_input_costs_fc1_accumulates_at_every_step():
    model = Tiny()  # fc1 fan-outs 3, 1, 1, 0
    workload = efficiency.Workload(model, num_steps=2)
    spikes = torch.tensor([[[1.0, 1, 0, 0], [0, 0, 1, 1]], [[1.0, 0, 1, 0], [0, 0, 0, 0]]])
    quiet = torch.zeros(2, 2, 2)
    layers = (LayerActivity(torch.tensor([1, 0, 0]), torch.tensor(0)),
              LayerActivity(torch.tensor(0), torch.tensor(0)))  # fmt: skip
    workload.add(spikes, NetOutput(quiet, quiet, torch.tensor(1), layers))
    metrics = workload.metrics()
    assert metrics["synops_effective_macs"] == 0
    # fc1: (3 + 1) + (1 + 0) at step 0, (3 + 1) at step 1; fc2: one hidden spike, fan-out 1
    assert metrics["synops_effective_acs"] == (4 + 1 + 4 + 1) / 2
    assert metrics["synops_dense"] == 2 * 4 * 3 + 2 * 3 * 2  # both layers at every step


def test_static_metrics_of_synaptic_neurons_hold_their_current_too():
    leaky = efficiency.static_metrics(Tiny())["footprint_bytes"]
    synaptic = efficiency.static_metrics(Tiny(), "synaptic")["footprint_bytes"]
    assert synaptic - leaky == 4 * 5 + 2 * 4  # a current per neuron, alpha per layer


def test_static_metrics_of_a_net_with_zero_weights():
    metrics = efficiency.static_metrics(Tiny())
    assert metrics["parameter_count"] == 4 * 3 + 3 + 3 * 2 + 2
    assert metrics["connection_sparsity"] == (7 + 3) / (12 + 6)  # biases not counted
    # 4 bytes per parameter and per neuron's membrane, 20 bytes of constants per LIF layer
    assert metrics["footprint_bytes"] == 4 * 23 + 4 * 5 + 2 * 20


def test_the_metric_table_lists_every_efficiency_metric():
    static = [n for n in EFFICIENCY_METRICS if METRICS[n].efficiency == "static"]
    assert static == list(efficiency.static_metrics(Tiny()))


SETTINGS = [
    dict(hidden=64, num_steps=10),
    dict(hidden=48, num_steps=40, beta=0.5, decoding="latency"),  # membranes reach fixed points
    dict(hidden=32, num_steps=1, threshold=0.25),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_both_backends_report_identical_metrics(settings):
    config = make_run_config(settings)
    torch.manual_seed(3)
    reference = build_model(config.model_copy(update={"backend": "reference"}))
    with torch.no_grad():
        reference.fc1.weight[:, ::5] = 0  # zero weights: fan-outs differ between columns
        reference.fc2.weight[::3, ::2] = 0
    generator = torch.Generator().manual_seed(4)
    split = Split(torch.rand(96, 784, generator=generator) * 1.2, torch.arange(96) % 10)
    split.images[5] = (split.images[5] > 0.5).float()  # a binary image: its fc1 ops are ACs
    results = [evaluate(reference, split, config)]
    for kernel in ("numba", "torch"):
        fused = FusedNet(config, kernel=kernel)
        fused.load_state_dict(reference.state_dict(), strict=False)
        results.append(evaluate(fused, split, config))
    names = [*EFFICIENCY_METRICS, *(k for k in results[0] if "/" in k)]  # and per layer
    ours = {name: results[0][name] for name in names}
    assert all({name: r[name] for name in names} == ours for r in results[1:])
    assert 0 < ours["activation_sparsity"] < 1 and ours["synops_effective_acs"] > 0
    assert ours["connection_sparsity"] > 0
    neurons, steps = settings["hidden"] + 10, settings["num_steps"]
    if steps == 40:
        assert neurons < ours["membrane_updates"] < neurons * steps


def test_per_layer_rates_and_operations_add_up_to_the_network_s():
    config = make_run_config({"backend": "reference", "hidden": [48, 24], "num_steps": 6})
    torch.manual_seed(0)
    model = build_model(config)
    generator = torch.Generator().manual_seed(1)
    split = Split(torch.rand(40, 784, generator=generator), torch.arange(40) % 10)
    metrics = evaluate(model, split, config)
    widths = [48, 24, 10]
    rates = [metrics[f"firing_rate/layer{i}"] for i in (1, 2, 3)]
    assert all(0 < rate < 1 for rate in rates[:2])
    spikes = sum(rate * width for rate, width in zip(rates, widths, strict=True))
    assert spikes == pytest.approx((1 - metrics["activation_sparsity"]) * sum(widths))
    assert metrics["hidden_firing_rate"] == pytest.approx((rates[0] * 48 + rates[1] * 24) / 72)
    ops = [metrics[f"synops/synapse{i}"] for i in (1, 2, 3)]
    assert ops[0] == metrics["synops_effective_macs"]  # the image into the first synapse
    assert sum(ops) == pytest.approx(
        metrics["synops_effective_macs"] + metrics["synops_effective_acs"]
    )
    assert "synops/synapse4" not in metrics and "firing_rate/layer4" not in metrics


# --- the real NeuroBench on the same weights and images ------------------------------------

CROSS_CHECKS = [
    dict(hidden=1000, num_steps=25),  # the tutorial's network
    dict(hidden=300, num_steps=10, beta=0.8, decoding="latency"),
    dict(hidden=128, num_steps=40, beta=0.5),  # membranes reach fixed points
]


def _neurobench_net(model: nn.Module, config) -> nn.Module:
    """The tutorial's network as NeuroBench's snnTorch wrapper wants it: single-step neurons
    holding their state (init_hidden), forward(x[:, t]) -> (spikes, membranes)."""
    import snntorch as snn

    neuron = getattr(snn, neurons.spec(config.neuron).snntorch)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            lif = dict(**config.neuron_parameters, init_hidden=True)
            self.fc1, self.lif1 = nn.Linear(784, config.hidden), neuron(**lif)
            self.fc2, self.lif2 = nn.Linear(config.hidden, 10), neuron(**lif, output=True)

        def forward(self, x):
            out = self.lif2(self.fc2(self.lif1(self.fc1(x))))
            return out[0], out[-1]  # spikes, membranes (Synaptic's current between)

        def reset(self):
            for layer in (self.lif1, self.lif2):
                layer.reset_mem()

    net = Net()
    net.fc1.load_state_dict(model.fc1.state_dict())
    net.fc2.load_state_dict(model.fc2.state_dict())
    return net


def _over_steps(steps: int):
    """NeuroBench's input (B, T, 784): the image at every step, or spikes as they are."""

    def process(data):
        images = data[0]
        return (images if images.dim() == 3 else images.unsqueeze(1).expand(-1, steps, -1)), data[1]

    return process


def _neurobench(model: nn.Module, config, split: Split, batch_size: int, as_snntorch=None) -> dict:
    """NeuroBench's metrics of `model` (`as_snntorch`: how to write it for NeuroBench's
    wrapper; the tutorial's network by default)."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import (
        ActivationSparsity,
        ClassificationAccuracy,
        MembraneUpdates,
        SynapticOperations,
    )
    from neurobench.models import SNNTorchModel
    from neurobench.processors.postprocessors import ChooseMaxCount
    from torch.utils.data import DataLoader, TensorDataset

    steps = config.num_steps
    wrapped = SNNTorchModel((as_snntorch or _neurobench_net)(model, config))
    benchmark = Benchmark(
        wrapped,
        None,
        [_over_steps(steps)],
        [ChooseMaxCount()],
        [
            [Footprint, ParameterCount, ConnectionSparsity],
            [ClassificationAccuracy, ActivationSparsity, SynapticOperations, MembraneUpdates],
        ],
    )
    loader = DataLoader(TensorDataset(split.images, split.labels), batch_size=batch_size)
    one = DataLoader(TensorDataset(split.images[:1], split.labels[:1]), batch_size=1)
    unrun = benchmark.run(dataloader=one, quiet=True)["Footprint"]  # no membranes yet
    results = benchmark.run(dataloader=loader, quiet=True)  # Footprint after one sample
    results.update(results.pop("SynapticOperations"))  # Effective_MACs, Effective_ACs, Dense
    results["footprint_before_a_forward_pass"] = unrun
    results["footprint_after_the_batch"] = benchmark.run(dataloader=one, quiet=True)["Footprint"]
    return results


@pytest.fixture(scope="module")
def mnist_64(mnist_dir):
    """256 MNIST training images (for a few iterations of training) and 64 test images."""
    return load(mnist_dir, torch.device("cpu"), train_subset=256, test_subset=64)


@pytest.mark.mnist
@pytest.mark.parametrize("settings", CROSS_CHECKS, ids=lambda s: "-".join(map(str, s.values())))
def test_the_metrics_are_neurobench_s_on_the_same_weights_and_images(mnist_64, settings):
    pytest.importorskip("neurobench")
    config = make_run_config({**settings, "batch_size": 64, "save_model": True})
    trained = train(config, mnist_64)  # 4 iterations: weights with a learned structure
    assert trained.status == "finished"
    model = build_model(config.model_copy(update={"backend": "reference"}))
    model.load_state_dict(trained.state_dict, strict=False)  # (its neurons' buffers stay)
    with torch.no_grad():  # and pruned, so that fan-outs and connection sparsity matter
        model.fc1.weight[model.fc1.weight.abs() < 0.005] = 0
        model.fc2.weight[:, ::7] = 0
    split = mnist_64.test
    ours = evaluate(model, split, config)  # one batch of 64, as NeuroBench's below
    theirs = _neurobench(model, config, split, batch_size=len(split))
    steps, hidden, n = config.num_steps, config.hidden, len(split)

    # NeuroBench reports 0 for a metric that failed: these must be there and nonzero.
    for name in ("Effective_MACs", "Effective_ACs", "Dense", "MembraneUpdates", "Footprint"):
        assert theirs[name] > 0, name
    assert 0 < theirs["ActivationSparsity"] < 1
    assert theirs["ConnectionSparsity"] > 0

    same = dict(rel=1e-6)
    assert ours["rate_accuracy"] == pytest.approx(theirs["ClassificationAccuracy"], **same)
    assert ours["activation_sparsity"] == pytest.approx(theirs["ActivationSparsity"], **same)
    assert ours["synops_effective_acs"] == pytest.approx(theirs["Effective_ACs"], **same)
    assert ours["membrane_updates"] == pytest.approx(theirs["MembraneUpdates"], **same)
    assert ours["parameter_count"] == theirs["ParameterCount"]
    assert round(ours["connection_sparsity"], 4) == theirs["ConnectionSparsity"]  # it rounds
    # fc1 runs once per sample here, once per step in the reference network NeuroBench runs
    assert steps * ours["synops_effective_macs"] == pytest.approx(theirs["Effective_MACs"], **same)
    assert ours["synops_dense"] == 784 * hidden + steps * hidden * 10
    assert theirs["Dense"] == steps * (784 * hidden + hidden * 10)
    # Footprint: snnTorch's membrane buffers of the last forward pass's batch
    assert ours["footprint_bytes"] == theirs["Footprint"]  # after a pass of one sample
    membranes = 4 * (hidden + 10)
    assert theirs["footprint_before_a_forward_pass"] == ours["footprint_bytes"] - membranes
    assert theirs["footprint_after_the_batch"] == ours["footprint_bytes"] + (n - 1) * membranes
    if config.beta == 0.5:  # some membranes stop changing: fewer updates than neuron-steps
        assert ours["membrane_updates"] < (hidden + 10) * steps
    # the counts are the fused backend's too
    fused = build_model(config)
    fused.load_state_dict(model.state_dict(), strict=False)
    fused_metrics = evaluate(fused, split, config)
    for name in EFFICIENCY_METRICS:
        assert fused_metrics[name] == ours[name], name


@pytest.mark.mnist
def test_a_binary_image_costs_acs_as_in_neurobench_one_image_at_a_time(mnist_dir):
    """NeuroBench calls a layer's input spiking when the whole batch is 0/1/-1; the harness
    decides per image, so it equals NeuroBench run one image at a time (batch size 1)."""
    pytest.importorskip("neurobench")
    test = read_split(mnist_dir, "t10k")
    split = Split(test.images[9048:9054], test.labels[9048:9054])  # MNIST's one binary test image
    binary = efficiency.is_binary(split.images)
    assert binary.tolist() == [False, False, False, True, False, False]
    config = make_run_config({"hidden": 100, "num_steps": 1})  # one step: fc1 once either way
    model = build_model(config.model_copy(update={"backend": "reference"}))
    ours = evaluate(model, split, config)
    one_by_one = _neurobench(model, config, split, batch_size=1)
    together = _neurobench(model, config, split, batch_size=len(split))
    assert one_by_one["Effective_MACs"] == ours["synops_effective_macs"] > 0
    assert one_by_one["Effective_ACs"] == ours["synops_effective_acs"] > 0
    moved = int(efficiency.fan_out(model.fc1.weight)[split.images[3] != 0].sum()) / len(split)
    assert together["Effective_MACs"] == pytest.approx(ours["synops_effective_macs"] + moved)
    assert together["Effective_ACs"] == pytest.approx(ours["synops_effective_acs"] - moved)


def test_the_study_table_shows_the_efficiency_metrics_that_vary():
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from harness.config import StudyConfig
    from harness.study.table import format_table

    config = StudyConfig.model_validate({"name": "e", "space": {"num_steps": [10, 25]}})
    study = optuna.create_study(direction="maximize")
    base = {name: 1.0 for name in METRICS}
    for steps, acs in ((10, 1234.4), (25, 5678.6)):
        run = base | {"seed": 0, "num_steps": steps, "synops_effective_acs": acs}
        study.add_trial(
            create_trial(
                params={"num_steps": steps},
                distributions={"num_steps": CategoricalDistribution([10, 25])},
                value=0.9,
                user_attrs={"outcome": "finished", "runs": [run]},
            )
        )
    lines = format_table(study, config).splitlines()
    assert lines[0].endswith("  eff. ACs") and "eff. MACs" not in lines[0]  # only what varies
    assert lines[1].endswith("   1,234") and lines[2].endswith("   5,679")
    header, cells = efficiency.table_columns([{"activation_sparsity": 0.5}, {}])
    assert (header, cells) == ("", ["", ""])  # one value and a missing one: nothing varies


def test_spikes_into_synaptic_neurons_count_as_neurobench_counts_them():
    """Rate-encoded input (fc1 at every step, accumulates) into Synaptic neurons: the
    counts are NeuroBench's, fc1 included, and the same for both backends."""
    pytest.importorskip("neurobench")
    settings = {"hidden": 32, "num_steps": 5, "neuron": "synaptic", "alpha": 0.8}
    config = make_run_config({**settings, "encoding": "rate", "threshold": 0.5})
    torch.manual_seed(3)
    model = build_model(config.model_copy(update={"backend": "reference"}))
    with torch.no_grad():
        model.fc1.weight[:, ::5] = 0
    generator = torch.Generator().manual_seed(4)
    split = Split(torch.rand(16, 784, generator=generator), torch.arange(16) % 10)
    ours = evaluate(model, split, config)  # one batch: its spikes are these
    spikes = encoder(config, "evaluation", torch.device("cpu"))(split.images)
    theirs = _neurobench(model, config, Split(spikes.transpose(0, 1), split.labels), 16)
    assert theirs["Effective_ACs"] > 0 and theirs["Effective_MACs"] == 0
    assert ours["synops_effective_macs"] == 0
    assert ours["synops_effective_acs"] == pytest.approx(theirs["Effective_ACs"], rel=1e-6)
    assert ours["synops_dense"] == theirs["Dense"] == 5 * (784 * 32 + 32 * 10)
    assert ours["membrane_updates"] == pytest.approx(theirs["MembraneUpdates"], rel=1e-6)
    assert ours["activation_sparsity"] == pytest.approx(theirs["ActivationSparsity"], rel=1e-6)
    assert ours["footprint_bytes"] == theirs["Footprint"]  # syn and mem of one sample, alpha
    fused = build_model(config)
    fused.load_state_dict(model.state_dict(), strict=False)
    fused_metrics = evaluate(fused, split, config)
    for name in EFFICIENCY_METRICS:
        assert fused_metrics[name] == ours[name], name


# --- every architecture: the same metrics as NeuroBench's ------------------------------------


def _neurobench_layers(model: nn.Module, config) -> nn.Module:
    """Any ReferenceNet as NeuroBench's snnTorch wrapper wants it: its own synapses (the same
    weights), pools, and single-step neurons holding their state (init_hidden)."""
    import snntorch as snn

    neuron = getattr(snn, neurons.spec(config.neuron).snntorch)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.synapses = nn.ModuleList(model.synapses())
            count = len(model.synapses())
            lif = dict(**config.neuron_parameters, init_hidden=True)
            self.lifs = nn.ModuleList(neuron(**lif, output=i == count - 1) for i in range(count))

        def forward(self, x):
            x = x.reshape(x.shape[0], *model.input_shape)
            for synapse, pool, lif in zip(self.synapses, model.pools, self.lifs, strict=True):
                if isinstance(synapse, nn.Linear):
                    x = x.flatten(1)
                x = synapse(x)
                x = lif(nn.functional.max_pool2d(x, pool) if pool else x)
            return x[0], x[-1]

    return Net()


ARCHITECTURES_CHECKED = [
    dict(architecture="mlp", hidden=[64, 32], num_steps=6),
    dict(architecture="csnn", num_steps=6, beta=0.9, threshold=0.5),
]


@pytest.mark.mnist
@pytest.mark.parametrize("settings", ARCHITECTURES_CHECKED, ids=lambda s: s["architecture"])
def test_every_architecture_trains_and_its_metrics_are_neurobench_s(mnist_64, settings):
    pytest.importorskip("neurobench")
    config = make_run_config(
        {**settings, "backend": "reference", "batch_size": 64, "save_model": True}
    )
    trained = train(config, mnist_64)  # 4 iterations through every layer
    assert trained.status == "finished"
    torch.manual_seed(config.seed)
    model = build_model(config)  # the initial weights; every synapse learned from them
    learned = [s.weight.clone() for s in model.synapses()]
    model.load_state_dict(trained.state_dict)
    assert all(not torch.equal(a, s.weight) for a, s in zip(learned, model.synapses(), strict=True))
    with torch.no_grad():  # pruned: fan-outs and connection sparsity matter
        for synapse in model.synapses():
            synapse.weight[synapse.weight.abs() < 0.01] = 0
    split = mnist_64.test
    ours = evaluate(model, split, config)
    theirs = _neurobench(model, config, split, len(split), as_snntorch=_neurobench_layers)
    steps = config.num_steps
    same = dict(rel=1e-6)
    for name in ("Effective_MACs", "Effective_ACs", "Dense", "MembraneUpdates", "Footprint"):
        assert theirs[name] > 0, name
    assert ours["rate_accuracy"] == pytest.approx(theirs["ClassificationAccuracy"], **same)
    assert ours["activation_sparsity"] == pytest.approx(theirs["ActivationSparsity"], **same)
    assert ours["synops_effective_acs"] == pytest.approx(theirs["Effective_ACs"], **same)
    assert ours["membrane_updates"] == pytest.approx(theirs["MembraneUpdates"], **same)
    assert ours["parameter_count"] == theirs["ParameterCount"]
    assert round(ours["connection_sparsity"], 4) == theirs["ConnectionSparsity"]
    assert ours["footprint_bytes"] == theirs["Footprint"]
    # the first synapse once per sample here (a static image), at every step in NeuroBench
    assert steps * ours["synops_effective_macs"] == pytest.approx(theirs["Effective_MACs"], **same)
    first = model.synapses()[0]
    once = efficiency.synapse_fan_out(first, model.input_shape, dense=True).sum()
    assert theirs["Dense"] == pytest.approx(ours["synops_dense"] + (steps - 1) * float(once))
    assert ours["energy_estimate_pj"] == pytest.approx(
        4.6 * ours["synops_effective_macs"] + 0.9 * ours["synops_effective_acs"]
    )
