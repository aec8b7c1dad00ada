"""NeuroBench 2.3's efficiency metrics of the network, computed by the harness itself.

The same numbers for both backends, from activity the evaluation already has: in eval mode
the model counts its layers' spikes and membrane updates as it runs (`NetOutput.layers`;
the fused backend inside its CPU kernel, without snnTorch or hooks), and fc1's operations
come from its input (the images, or their spikes). No second pass over the test set.

Definitions (NeuroBench 2.3, `neurobench.metrics`), for any network of the harness: synapses
(nn.Linear, nn.Conv2d) in order, each followed by a layer of neurons (tutorial 5's
Linear(784, H) -> LIF -> Linear(H, 10) -> LIF, an mlp of any depth, tutorial 6's csnn), run for
T steps on N test images; workload metrics are per sample. Below, "fc1" is the first synapse,
"fc2" any later one (its input: the spikes of the layer before). A model of your own
(harness/network/user_model.py) is wired as it likes: its synapses' inputs are counted as they
come, each as the rules for fc1 below say, and every synapse is applied at every step (the
harness calls the model once a step), as NeuroBench counts it:

- synaptic operations of a linear layer: each nonzero input entry costs one operation per
  nonzero weight in its column (biases are not counted). An input vector whose entries are
  all 0, 1 or -1 is binary (spikes): its operations are accumulates (ACs); any other input
  (the image into fc1) costs multiply-accumulates (MACs). The harness decides this per
  image; NeuroBench decides it per batch (a batch is binary only if all its images are), so
  the two agree when NeuroBench runs one image at a time, and on any batch without a binary
  image (MNIST's test set has one: image 9051, every pixel 0 or 255).
  A convolution's input entry costs one operation per nonzero weight of every output
  position that reads it (fewer at the borders; `synapse_fan_out`), as NeuroBench's binary
  copy of the layer counts it.
  `synops_effective_macs` and `synops_effective_acs` sum them over the layers;
  `synops_dense` counts every input and every weight (in x out per layer application).
  fc1 depends on the input encoding (harness.network.encodings). Direct: its input is the static
  image, so fc1 is applied once per sample (as the fused backend runs it), not once per
  step (a deliberate difference: NeuroBench on the reference network, which recomputes fc1
  at every step, counts its MACs and dense operations T times). Rate or latency: its input
  is a binary spike vector at every step, so fc1 is applied T times and costs ACs, one per
  input spike and nonzero weight of its column (as NeuroBench counts it, both backends).
- `activation_sparsity`: 1 - spikes / (neuron-steps), over every layer of neurons' outputs, all
  steps and samples.
- `membrane_updates`: every neuron's membrane at the first step, then each step at which it
  changed (U[t] != U[t-1], exactly), summed over every layer. A membrane stops
  changing only at a floating-point fixed point (no spikes, beta U + I == U in float32),
  which small beta reaches within the steps: then the count depends on the last bits of
  fc1's output, which can differ with the batch size or the device.
  Synaptic neurons: the membrane's updates (NeuroBench follows `mem` only), not the
  synaptic current's.
- `energy_estimate_pj` (not NeuroBench's): effective MACs x a MAC's energy + effective ACs x
  an AC's, per sample, from the run's `energy_model` (harness/training/energy.py; default
  45 nm CMOS, 32-bit float: 4.6 pJ a MAC, 0.9 pJ an AC). Arithmetic only: an estimate that
  leaves out memory traffic.
- static: `parameter_count` (weights and biases), `connection_sparsity` (zero weights /
  weights, biases excluded; NeuroBench rounds it to 4 decimals, the harness does not) and
  `footprint_bytes`: the parameters' bytes plus the neurons' state and constants as
  snnTorch's neuron holds them for one sample (harness/network/neurons.py; Leaky: a membrane
  per neuron, and beta, threshold and graded_spikes_factor in float32 and
  reset_mechanism_val in int64 per layer; Synaptic: a synaptic current too, and alpha).
  NeuroBench's `Footprint` counts the state buffers of the last batch it ran, so it equals
  this after a forward pass of one sample and grows by 4 (H + 10) bytes per state variable
  per further sample in a batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.network import neurons
from harness.network.kernels.activity import input_operations
from harness.network.model import NetOutput
from harness.training.energy import DEFAULT_ENERGY_MODEL, energy_pj
from harness.training.metrics import EFFICIENCY_METRICS, METRICS, layer_metric


def fan_out(weight: torch.Tensor) -> torch.Tensor:
    """The operations one nonzero input entry costs a linear layer: the nonzero weights in its
    column of `weight` (out, in) -> (in,) int64."""
    return (weight != 0).sum(0)


def synapse_fan_out(synapse: nn.Module, input_shape: tuple[int, ...], dense: bool = False):
    """The operations each entry of one sample's input costs a synapse, flattened: a linear
    layer's column counts; a convolution's, per input position, the nonzero weights of every
    output position that reads it (fewer at the borders), as NeuroBench counts them. `dense`:
    every weight counts, zero or not. int64."""
    weight = torch.ones_like(synapse.weight) if dense else (synapse.weight != 0)
    if isinstance(synapse, nn.Conv2d):
        ones = torch.ones((1, *input_shape), device=weight.device)
        outputs = nn.functional.conv2d(
            ones,
            weight.float(),
            stride=synapse.stride,
            padding=synapse.padding,
            dilation=synapse.dilation,
        )
        reads = nn.functional.conv_transpose2d(
            torch.ones_like(outputs), weight.float(), stride=synapse.stride,
            padding=synapse.padding, dilation=synapse.dilation,
        )  # fmt: skip
        return reads.round().to(torch.int64).flatten()
    return fan_out(weight)


def exact_dtype(fan_out: torch.Tensor) -> torch.dtype:
    """The fastest type in which sums of `fan_out` are exact: float32 below 2**24, else
    float64 (int64 on MPS, which has no float64)."""
    if int(fan_out.sum()) < 2**24:
        return torch.float32
    return torch.int64 if fan_out.device.type == "mps" else torch.float64


def is_binary(inputs: torch.Tensor) -> torch.Tensor:
    """(..., in) -> (...,): True where every entry is 0, 1 or -1 (NeuroBench's "spiking")."""
    magnitude = inputs.abs()
    return (magnitude == (inputs != 0)).all(-1)


def synaptic_operations(
    inputs: torch.Tensor, fan_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Effective (MACs, ACs) of a linear layer applied to each input vector of `inputs`
    (..., in), given its `fan_out` (in,): binary vectors cost ACs, the others MACs. int64.

    `fan_out` in the type its sums are added in: int64 always exact; float32 or float64
    (faster; see `exact_dtype`) exact while its sum is below 2**24 or 2**53.
    """
    numba = inputs.dim() == 2 and inputs.device.type == "cpu" and inputs.dtype == torch.float32
    if numba and fan_out.dtype in (torch.float32, torch.float64):
        ops, odd = input_operations(inputs, fan_out)  # one pass, in the CPU kernel
        binary = odd == 0
    else:  # (products, not a matrix product: that may run in TF32 on a GPU)
        ops = ((inputs != 0) * fan_out).sum(-1)
        binary = is_binary(inputs)
    ops = ops.to(torch.int64)
    return (ops * ~binary).sum(), (ops * binary).sum()  # (no boolean indexing: no sync)


def spike_operations(spike_counts: torch.Tensor, fan_out: torch.Tensor) -> torch.Tensor:
    """Effective ACs of a linear layer fed by spikes, from each input neuron's spike count
    over steps and samples (in,): a spike costs one AC per nonzero weight of its column."""
    return (spike_counts * fan_out).sum()


def activation_sparsity(spikes: float, neuron_steps: float) -> float:
    """The share of neuron-steps without a spike (0 where nothing ran, as NeuroBench)."""
    return 1.0 - spikes / neuron_steps if neuron_steps else 0.0


class Workload:
    """One evaluation's activity over a split, batch by batch (`add`), read once (`metrics`).

    The totals stay on the evaluation's device as int64, so adding a batch never waits for
    it; the weights' fan-outs are read once, when the evaluation starts.
    """

    def __init__(self, model: nn.Module, num_steps: int, energy_model: str = DEFAULT_ENERGY_MODEL):
        synapses = model.synapses()
        shapes = getattr(model, "synapse_input_shapes", None)  # a user model's, as it ran
        if shapes is None:  # a chain: each synapse takes the layer before's spikes
            shapes = [tuple(model.input_shape), *(tuple(s) for s in model.neuron_shapes[:-1])]
        self.num_steps = num_steps
        self.energy_model = energy_model
        self.neurons = sum(math.prod(shape) for shape in model.neuron_shapes)
        pairs = list(zip(synapses, shapes, strict=True))
        self.fan_outs = [synapse_fan_out(s, shape) for s, shape in pairs]
        self.fan_outs[0] = self.fan_outs[0].to(exact_dtype(self.fan_outs[0]))  # (faster)
        self.dense = [int(synapse_fan_out(s, shape, dense=True).sum()) for s, shape in pairs]
        # MACs, ACs, spikes, membrane updates after each sample's first step
        device = synapses[0].weight.device
        self.totals = torch.zeros(4, dtype=torch.int64, device=device)
        self.layer_neurons = [math.prod(shape) for shape in model.neuron_shapes]
        self.layer_spikes = torch.zeros(len(self.layer_neurons), dtype=torch.int64, device=device)
        self.synapse_ops = torch.zeros(len(synapses), dtype=torch.int64, device=device)
        self.samples = 0
        self.first_applications = 1  # per sample: once for images, every step for spikes
        # A user model's wiring is its own: it shows each synapse's input as it runs, and
        # every synapse is applied at every step.
        self.observed = hasattr(model, "observe_synapses")
        self.operations = torch.zeros(len(synapses), 2, dtype=torch.int64, device=device)
        if self.observed:
            model.observe_synapses(self._observe)

    def _observe(self, index: int, inputs: torch.Tensor) -> None:
        """Count one application of synapse `index` to a batch of inputs."""
        vectors = inputs.reshape(inputs.shape[0], -1)
        self.operations[index] += torch.stack(synaptic_operations(vectors, self.fan_outs[index]))

    def add(self, inputs: torch.Tensor, out: NetOutput) -> None:
        """Count one evaluated batch: the model's input, images (B, 784) or spikes
        (T, B, 784), and its eval-mode output."""
        if out.layers is None:
            raise ValueError("the model's output has no activity counts: run it in eval mode")
        if self.observed:
            operations, self.operations = self.operations, torch.zeros_like(self.operations)
            macs, acs = operations.sum(0)
            self.synapse_ops += operations.sum(1)
            self.first_applications = self.num_steps
        else:
            self.first_applications = inputs.shape[0] if inputs.dim() == 3 else 1
            vectors = inputs.reshape(-1, inputs.shape[-1])  # the first synapse's input, each time
            macs, acs = synaptic_operations(vectors, self.fan_outs[0])
            later = [  # spikes in
                spike_operations(layer.spikes.reshape(-1), fan)
                for layer, fan in zip(out.layers[:-1], self.fan_outs[1:], strict=True)
            ]
            self.synapse_ops += torch.stack([macs + acs, *later])
            acs = acs + sum(later)
        spikes = torch.stack([layer.spikes.sum() for layer in out.layers])
        self.layer_spikes += spikes
        updates = sum(layer.membrane_updates for layer in out.layers)
        self.totals += torch.stack([macs, acs, spikes.sum(), updates])
        self.samples += inputs.shape[-2]

    def metrics(self) -> dict[str, float]:
        """The workload metrics, per sample, over every batch added."""
        macs, acs, spikes, updates = (int(v) for v in self.totals.tolist())
        n = self.samples
        per_sample = (lambda v: v / n) if n else (lambda v: 0.0)
        dense = self.first_applications * self.dense[0] + self.num_steps * sum(self.dense[1:])
        return {
            "activation_sparsity": activation_sparsity(spikes, n * self.num_steps * self.neurons),
            "synops_effective_macs": per_sample(macs),
            "synops_effective_acs": per_sample(acs),
            "synops_dense": float(dense) if n else 0.0,
            "membrane_updates": self.neurons + per_sample(updates) if n else 0.0,
            "energy_estimate_pj": energy_pj(per_sample(macs), per_sample(acs), self.energy_model),
        }

    def layer_metrics(self) -> dict[str, float]:
        """Each layer's firing rate and each synapse's effective operations per sample
        (`harness.training.metrics.LAYER_METRICS`), over every batch added."""
        n = self.samples
        rates = {
            layer_metric("firing_rate", i): spikes / (n * self.num_steps * neurons) if n else 0.0
            for i, (spikes, neurons) in enumerate(
                zip(self.layer_spikes.tolist(), self.layer_neurons, strict=True), 1
            )
        }
        ops = {
            layer_metric("synops", i): ops / n if n else 0.0
            for i, ops in enumerate(self.synapse_ops.tolist(), 1)
        }
        return {**rates, **ops}


def static_metrics(model: nn.Module, neuron: str = neurons.DEFAULT_NEURON) -> dict[str, float]:
    """Footprint in bytes, parameter count and connection sparsity of any network of
    `neuron` models (harness/network/neurons.py), from its synapses and layers of neurons."""
    spec = neurons.spec(neuron)
    parameters = list(model.parameters())
    weights = [synapse.weight for synapse in model.synapses()]
    zeros = sum(int((w == 0).sum()) for w in weights)
    neuron_count = sum(math.prod(shape) for shape in model.neuron_shapes)
    # a user model's neurons: their buffers after one sample, as NeuroBench counts them
    state = getattr(model, "measured_state_bytes", None)
    if state is None:
        state = spec.state_tensors * neuron_count * weights[0].element_size()
        state += len(model.neuron_shapes) * spec.constant_bytes
    return {
        "footprint_bytes": float(sum(p.numel() * p.element_size() for p in parameters) + state),
        "parameter_count": float(sum(p.numel() for p in parameters)),
        "connection_sparsity": zeros / sum(w.numel() for w in weights),
    }


def table_columns(values: list[dict[str, float]]) -> tuple[str, list[str]]:
    """The study table's efficiency columns: those metrics whose mean, at the table's digits,
    differs between rows (`values`: one {metric: mean} per row; missing or NaN shows "-").
    Returns the header's cells and each row's, as text to append."""

    def cell(name: str, value: float | None) -> str:
        if value is None or math.isnan(value):
            return "-"
        return f"{value:,.{METRICS[name].digits}f}"

    names = [
        name
        for name in EFFICIENCY_METRICS
        if len({cell(name, row.get(name)) for row in values} - {"-"}) > 1
    ]
    widths = {
        name: 2 + max(len(METRICS[name].label), *(len(cell(name, r.get(name))) for r in values))
        for name in names
    }
    header = "".join(f"{METRICS[name].label:>{widths[name]}}" for name in names)
    rows = ["".join(f"{cell(name, r.get(name)):>{widths[name]}}" for name in names) for r in values]
    return header, rows
