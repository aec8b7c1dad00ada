"""The networks, in two backends, behind one interface.

Every network takes a batch of inputs, images (B, 784) or spikes (T, B, 784), and returns a
`NetOutput`: the output layer's spikes and membranes over the steps and, in eval mode, what
each layer of neurons did (`LayerActivity`, for the efficiency metrics of
`harness.training.efficiency`). It lists its synapses in order (`synapses()`), the shape of
each layer of neurons (`neuron_shapes`) and of one input sample (`input_shape`); training,
evaluation and the metrics read nothing else. Every layer uses the run's neuron model
(harness/network/neurons.py: snnTorch's Leaky, the tutorial's, or Synaptic).

- `reference`: any architecture of harness/network/architectures.py (its blocks: `mlp_blocks`,
  `csnn_blocks`) as snnTorch's tutorials write it: snnTorch's neurons in a Python loop over
  steps, every synapse applied at every step (to x[step] for spike input). The yardstick for
  correctness and speed.
- `fused`: tutorial 5's network, Linear(784, H) -> neurons -> Linear(H, 10) -> neurons, with
  the same mathematics restructured: fc1 once (a static image) or on all steps in one matrix
  product (spikes); then, on the CPU, one kernel for the rest (`kernels.lif_scan.fused_lif_net`:
  both layers and fc2, a sample at a time in cache, closed-form backward); otherwise the hidden
  layer as one scan, fc2 as one matrix product over all steps, the output layer as a second
  scan (the model's scan in `scans`, on any device).
Both build their synapses in order with nn.Linear, so the same seed gives tutorial 5's network
the same initial weights in both (the fused backend keeps fc1's weight transposed,
`TransposedLinear`), and both count the same activity on the same weights and inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from torch import nn

from harness.config import RunConfig
from harness.network import neurons
from harness.network.architectures import ARCHITECTURES, FUSED_ONLY
from harness.network.backends import BACKENDS
from harness.network.kernels.lif_scan import fused_lif_net
from harness.network.kernels.sparse_linear import sparse_linear
from harness.network.surrogates import snntorch_surrogate

NUM_INPUTS = 28 * 28
NUM_OUTPUTS = 10


class LayerActivity(NamedTuple):
    """What one layer of neurons did over an evaluated batch, int64 (for
    `harness.training.efficiency`)."""

    spikes: torch.Tensor  # each neuron's spikes over the steps (its shape), or the layer's total
    membrane_updates: torch.Tensor  # how many U[t] != U[t-1], t >= 1


class NetOutput(NamedTuple):
    spikes: torch.Tensor  # output layer, (T, B, 10)
    membranes: torch.Tensor  # output layer, (T, B, 10)
    hidden_spikes: torch.Tensor | None  # total spikes of the hidden layers (eval mode only)
    layers: tuple[LayerActivity, ...] | None = None  # each layer of neurons (eval mode only)


def layer_activity(spikes: torch.Tensor, membranes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A layer's (T, B, *N) spikes and membranes -> each neuron's spike count (N) and its
    membrane updates after the first step (how many U[t] != U[t-1], t >= 1), over the batch,
    int64. Spikes are 0 or 1, so sums count them (exact in float32 over a batch; the faster
    reductions on the CPU: bool sums over leading dimensions are ~20x slower)."""
    counts = spikes.sum(1).to(torch.int64).sum(0)
    return counts, torch.count_nonzero(membranes[1:] != membranes[:-1])


def _eval_output(spikes, membranes, hidden: list[LayerActivity]) -> NetOutput:
    """The eval-mode output: the hidden layers' counts, and the output layer's from its
    spikes and membranes."""
    output = LayerActivity(*layer_activity(spikes, membranes))
    total = sum(layer.spikes.sum() for layer in hidden)
    return NetOutput(spikes, membranes, total, (*hidden, output))


def _weight_as_linear(module, state_dict, prefix, local_metadata) -> None:
    bias = state_dict.pop(prefix + "bias")
    state_dict[prefix + "weight"] = state_dict.pop(prefix + "weight_t").t().contiguous()
    state_dict[prefix + "bias"] = bias


def _weight_from_linear(module, state_dict, prefix, *args) -> None:
    if prefix + "weight" in state_dict:
        state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "weight").t()


class TransposedLinear(nn.Module):
    """The fused backend's fc1: nn.Linear with its weight stored transposed, `weight_t`
    (in, out) contiguous. The CPU kernel's sparse products read it a row per nonzero input,
    and PyTorch's fused CPU Adam updates it in place (it copies a parameter that is not
    contiguous, so storing nn.Linear's weight as a transposed view would cost a copy an
    iteration). Initialised as nn.Linear, from the same draws of the seed; `weight` is the
    (out, in) view, and the state dict holds it under nn.Linear's names, so weights move
    between the backends and load from earlier runs."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        linear = nn.Linear(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous())
        self.bias = linear.bias
        self.register_state_dict_post_hook(_weight_as_linear)
        self.register_load_state_dict_pre_hook(_weight_from_linear)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # nn.Linear's product, as snnTorch's: activity counts match it
            return nn.functional.linear(x, self.weight.contiguous(), self.bias)
        # zero pixels and absent spikes skipped (on the CPU); spike input (T, B, in) takes
        # every step in one product
        flat = sparse_linear(x.reshape(-1, self.in_features), self.weight_t, self.bias)
        return flat.reshape(*x.shape[:-1], self.out_features)


class FusedNet(nn.Module):
    """`kernel`: "numba" (the CPU kernel of `kernels.lif_scan`), "torch"
    (the neuron model's scan, tensor ops, any device), or "auto" (numba where it supports
    the neuron model and the input, for float32 on the CPU; else torch)."""

    def __init__(self, config: RunConfig, kernel: str = "auto"):
        super().__init__()
        if kernel not in ("auto", "numba", "torch"):
            raise ValueError(f"unknown kernel {kernel!r} (allowed: auto, numba, torch)")
        self.neuron = neurons.spec(config.neuron)
        if kernel not in ("auto", "torch") and kernel not in self.neuron.kernels:
            supported = [n for n, s in neurons.NEURONS.items() if kernel in s.kernels]
            raise ValueError(
                f"kernel {kernel!r} does not run neuron {config.neuron} (it runs: "
                f"{', '.join(supported)}); use kernel 'torch' or 'auto'"
            )
        if config.architecture != "mlp" or len(config.hidden_layers) != 1:
            raise ValueError(f"the fused backend runs one hidden layer: {FUSED_ONLY}")
        self.kernel = kernel
        self.scan = self.neuron.scan_function()
        (hidden,) = config.hidden_layers
        self.input_shape, self.neuron_shapes = (NUM_INPUTS,), [(hidden,), (NUM_OUTPUTS,)]
        self.fc1 = TransposedLinear(NUM_INPUTS, hidden)
        self.fc2 = nn.Linear(hidden, NUM_OUTPUTS)
        self.lif = dict(
            num_steps=config.num_steps,
            **config.neuron_parameters,
            surrogate=config.surrogate,
            slope=config.surrogate_slope,
        )

    def _numba(self, x: torch.Tensor) -> bool:
        """Does this input run on the numba kernel?"""
        if self.kernel != "auto":
            return self.kernel == "numba"
        cpu = x.device.type == "cpu" and x.dtype == torch.float32
        return cpu and "numba" in self.neuron.kernels

    def forward(self, x: torch.Tensor) -> NetOutput:
        numba = self._numba(x)
        cur1 = self.fc1(x)
        if numba:  # the kernel counts the activity too, in eval mode
            spikes, membranes, counts, tallies = fused_lif_net(
                cur1, self.fc2.weight, self.fc2.bias, **self.lif, activity=not self.training
            )
            if self.training:
                return NetOutput(spikes, membranes, None)
            layers = (LayerActivity(counts, tallies[0]), LayerActivity(*tallies[1:]))
            return NetOutput(spikes, membranes, counts.sum(), layers)
        spikes1, membranes1 = self.scan(cur1, **self.lif)
        spikes, membranes = self.scan(self.fc2(spikes1), **self.lif)
        if self.training:
            return NetOutput(spikes, membranes, None)
        hidden = LayerActivity(*layer_activity(spikes1, membranes1))
        return _eval_output(spikes, membranes, [hidden])

    def synapses(self) -> list[nn.Module]:
        """Its synaptic layers in order (for the efficiency metrics)."""
        return [self.fc1, self.fc2]


class Block(NamedTuple):
    """One layer of a network: a synapse (nn.Linear or nn.Conv2d, named as snnTorch's
    tutorials name it), a max-pool after it (0: none), and its neurons' shape per sample."""

    name: str
    synapse: Callable[[], nn.Module]
    pool: int
    neurons: tuple[int, ...]


def mlp_blocks(config: RunConfig) -> list[Block]:
    """Linear -> neurons per hidden width, then Linear -> neurons for the classes."""
    widths = [NUM_INPUTS, *config.hidden_layers, NUM_OUTPUTS]
    return [
        Block(f"fc{i + 1}", partial(nn.Linear, a, b), 0, (b,))
        for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False))
    ]


def csnn_blocks(config: RunConfig) -> list[Block]:
    """snnTorch tutorial 6: 12C5-MP2-64C5-MP2-FC10 on 28x28 images."""
    return [
        Block("conv1", partial(nn.Conv2d, 1, 12, 5), 2, (12, 12, 12)),
        Block("conv2", partial(nn.Conv2d, 12, 64, 5), 2, (64, 4, 4)),
        Block("fc1", partial(nn.Linear, 64 * 4 * 4, NUM_OUTPUTS), 0, (NUM_OUTPUTS,)),
    ]


class ReferenceNet(nn.Module):
    """Any architecture of harness/network/architectures.py as snnTorch's tutorials write it:
    snnTorch's neurons, a Python loop over the steps, every synapse applied at every step (to
    x[step] for spike input). Synapses are built in order from the torch seed, so tutorial 5's
    network starts from the fused backend's weights."""

    def __init__(self, config: RunConfig):
        import snntorch as snn

        super().__init__()
        snn.SpikingNeuron.init()  # snnTorch keeps every neuron ever built (its issue #328)
        self.neuron = neurons.spec(config.neuron)
        neuron = getattr(snn, self.neuron.snntorch)
        grad = snntorch_surrogate(config.surrogate, config.surrogate_slope)
        self.num_steps = config.num_steps
        architecture = ARCHITECTURES[config.architecture]
        self.input_shape = architecture.input_shape
        blocks = globals()[architecture.layers](config)
        self.names = [block.name for block in blocks]
        self.pools = [block.pool for block in blocks]
        self.neuron_shapes = [block.neurons for block in blocks]
        for block in blocks:  # the synapses first, in order: the seed's draws as the fused's
            setattr(self, block.name, block.synapse())
        for i in range(len(blocks)):
            setattr(self, f"lif{i + 1}", neuron(**config.neuron_parameters, spike_grad=grad))

    def synapses(self) -> list[nn.Module]:
        """Its synaptic layers in order (for the efficiency metrics)."""
        return [getattr(self, name) for name in self.names]

    def _initial_state(self, layer: nn.Module) -> list[torch.Tensor]:
        """The layer's state variables from snnTorch's init method (the membrane last)."""
        state = getattr(layer, self.neuron.snntorch_init)()
        return list(state) if isinstance(state, tuple) else [state]

    def forward(self, x: torch.Tensor) -> NetOutput:
        layers = [getattr(self, f"lif{i + 1}") for i in range(len(self.names))]
        states = [self._initial_state(layer) for layer in layers]
        synapses = self.synapses()
        spk_rec, mem_rec = [], []
        counts = updates = None
        if not self.training:  # every layer's activity, counted as it goes
            counts = [x.new_zeros(shape, dtype=torch.int64) for shape in self.neuron_shapes]
            updates = [x.new_zeros((), dtype=torch.int64) for _ in layers]
        for step in range(self.num_steps):
            h = x[step] if x.dim() == 3 else x
            h = h.reshape(h.shape[0], *self.input_shape)
            for i, (synapse, layer) in enumerate(zip(synapses, layers, strict=True)):
                if isinstance(synapse, nn.Linear) and h.dim() > 2:
                    h = h.flatten(1)
                h = synapse(h)
                if self.pools[i]:
                    h = nn.functional.max_pool2d(h, self.pools[i])
                previous = states[i][-1]
                h, *states[i] = layer(h, *states[i])  # h: this layer's spikes, the next's input
                if counts is not None:  # (as `layer_activity`)
                    counts[i] += h.sum(0).to(torch.int64)
                    if step:
                        updates[i] += torch.count_nonzero(states[i][-1] != previous)
            spk_rec.append(h)
            mem_rec.append(states[-1][-1])
        spikes, membranes = torch.stack(spk_rec), torch.stack(mem_rec)
        if counts is None:
            return NetOutput(spikes, membranes, None)
        hidden = [LayerActivity(c, u) for c, u in zip(counts[:-1], updates[:-1], strict=True)]
        return _eval_output(spikes, membranes, hidden)


def build_model(config: RunConfig) -> nn.Module:
    """The network of `config.backend` (its class named by harness.network.backends), or the
    user's own (`config.model`: harness.network.user_model), initialised from the current
    torch seed."""
    if config.model is not None:
        from harness.network.user_model import UserNet

        return UserNet(config)
    return globals()[BACKENDS[config.backend].model](config)


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, config: RunConfig) -> None:
    """Write a run's weights to `path` and its run config beside it (`path` with `.yaml`),
    each to a temporary file first and renamed into place, so a kill leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_suffix(".yaml")
    for target, write in (
        (path, lambda tmp: torch.save(state_dict, tmp)),
        (sidecar, lambda tmp: tmp.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))),
    ):
        partial = target.with_name(f".{target.name}.partial")
        write(partial)
        os.replace(partial, target)


def load_weights(path: str, config: RunConfig) -> nn.Module:
    """A network of `config` with weights saved by a run (`harness train --save-model`, or a
    study's `save_model`: MLflow's model.pt); `harness train` writes the config beside them.

    Only tensors are read (`weights_only=True`): a weights file cannot run code.
    """
    model = build_model(config)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=config.backend == "fused" or config.model is not None)
    return model
