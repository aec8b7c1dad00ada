"""The tutorial-5 network, Linear(784, H) -> neurons -> Linear(H, 10) -> neurons, in two backends.

Both layers use the run's neuron model (harness/network/neurons.py: snnTorch's Leaky, the
tutorial's, or Synaptic). The input is the image (B, 784), the same current at every step
(direct encoding), or spikes (T, B, 784) from harness.network.encodings.

- `reference`: snnTorch's neurons in a Python loop over steps, fc1 applied at every step
  (to x[step] for spike input), exactly as the tutorial writes it. The yardstick for
  correctness and speed.
- `fused`: the same mathematics restructured: fc1 once (a static image) or on all steps in
  one matrix product (spikes); then, on the CPU, one kernel for the rest
  (`kernels.lif_scan.fused_lif_net`: both layers and fc2, a sample at a time in cache,
  closed-form backward); otherwise the hidden layer as one scan, fc2 as one matrix product
  over all steps, the output layer as a second scan (the model's scan in `scans`, on any
  device).
Both build fc1 then fc2 with nn.Linear, so the same seed gives the same initial weights
(the fused backend keeps fc1's weight transposed, `TransposedLinear`).
In eval mode both count what their layers did (`NetOutput.activity`, for the efficiency
metrics of `harness.training.efficiency`), the same counts on the same weights and inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from torch import nn

from harness.config import RunConfig
from harness.network import neurons
from harness.network.backends import BACKENDS
from harness.network.kernels.lif_scan import fused_lif_net
from harness.network.kernels.sparse_linear import sparse_linear
from harness.network.surrogates import snntorch_surrogate

NUM_INPUTS = 28 * 28
NUM_OUTPUTS = 10


class Activity(NamedTuple):
    """What the layers did over an evaluated batch, int64 (for `harness.training.efficiency`)."""

    hidden_neuron_spikes: torch.Tensor  # (H,) spikes of each hidden neuron over the steps
    hidden_membrane_updates: torch.Tensor  # how many U1[t] != U1[t-1], t >= 1
    output_spikes: torch.Tensor  # output spikes over the steps
    output_membrane_updates: torch.Tensor  # how many U2[t] != U2[t-1], t >= 1


class NetOutput(NamedTuple):
    spikes: torch.Tensor  # output layer, (T, B, 10)
    membranes: torch.Tensor  # output layer, (T, B, 10)
    hidden_spikes: torch.Tensor | None  # total hidden spikes in the batch (eval mode only)
    activity: Activity | None = None  # eval mode only


def layer_activity(spikes: torch.Tensor, membranes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A layer's (T, B, N) spikes and membranes -> each neuron's spike count (N,) and its
    membrane updates after the first step (how many U[t] != U[t-1], t >= 1), over the batch,
    int64. Spikes are 0 or 1, so sums count them (exact in float32 over a batch; the faster
    reductions on the CPU: bool sums over leading dimensions are ~20x slower)."""
    counts = spikes.sum(1).to(torch.int64).sum(0)
    return counts, torch.count_nonzero(membranes[1:] != membranes[:-1])


def _eval_output(spikes, membranes, hidden_counts, hidden_updates) -> NetOutput:
    """The eval-mode output: the hidden layer's counts, and the output layer's from its
    spikes and membranes."""
    output_counts, output_updates = layer_activity(spikes, membranes)
    activity = Activity(hidden_counts, hidden_updates, output_counts.sum(), output_updates)
    return NetOutput(spikes, membranes, hidden_counts.sum(), activity)


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
        self.kernel = kernel
        self.scan = self.neuron.scan_function()
        self.fc1 = TransposedLinear(NUM_INPUTS, config.hidden)
        self.fc2 = nn.Linear(config.hidden, NUM_OUTPUTS)
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
            activity = Activity(counts, *tallies)
            return NetOutput(spikes, membranes, counts.sum(), activity)
        spikes1, membranes1 = self.scan(cur1, **self.lif)
        spikes, membranes = self.scan(self.fc2(spikes1), **self.lif)
        if self.training:
            return NetOutput(spikes, membranes, None)
        return _eval_output(spikes, membranes, *layer_activity(spikes1, membranes1))


class ReferenceNet(nn.Module):
    def __init__(self, config: RunConfig):
        import snntorch as snn

        super().__init__()
        snn.SpikingNeuron.init()  # snnTorch keeps every neuron ever built (its issue #328)
        self.neuron = neurons.spec(config.neuron)
        neuron = getattr(snn, self.neuron.snntorch)
        grad = snntorch_surrogate(config.surrogate, config.surrogate_slope)
        self.num_steps = config.num_steps
        self.fc1 = nn.Linear(NUM_INPUTS, config.hidden)
        self.lif1 = neuron(**config.neuron_parameters, spike_grad=grad)
        self.fc2 = nn.Linear(config.hidden, NUM_OUTPUTS)
        self.lif2 = neuron(**config.neuron_parameters, spike_grad=grad)

    def _initial_state(self, layer: nn.Module) -> tuple[torch.Tensor, ...]:
        """The layer's state variables from snnTorch's init method (the membrane last)."""
        state = getattr(layer, self.neuron.snntorch_init)()
        return state if isinstance(state, tuple) else (state,)

    def forward(self, x: torch.Tensor) -> NetOutput:
        state1, state2 = self._initial_state(self.lif1), self._initial_state(self.lif2)
        spk2_rec, mem2_rec = [], []
        counts = updates = None
        if not self.training:  # the hidden layer's activity, counted as it goes
            counts = x.new_zeros(self.fc1.out_features, dtype=torch.int64)
            updates = x.new_zeros((), dtype=torch.int64)
        for step in range(self.num_steps):
            cur1 = self.fc1(x[step] if x.dim() == 3 else x)
            previous = state1[-1]
            spk1, *state1 = self.lif1(cur1, *state1)
            cur2 = self.fc2(spk1)
            spk2, *state2 = self.lif2(cur2, *state2)
            spk2_rec.append(spk2)
            mem2_rec.append(state2[-1])
            if counts is not None:  # (as `layer_activity`)
                counts += spk1.sum(0).to(torch.int64)
                if step:
                    updates += torch.count_nonzero(state1[-1] != previous)
        spikes, membranes = torch.stack(spk2_rec), torch.stack(mem2_rec)
        if counts is None:
            return NetOutput(spikes, membranes, None)
        return _eval_output(spikes, membranes, counts, updates)


def build_model(config: RunConfig) -> nn.Module:
    """The network of `config.backend` (its class named by harness.network.backends),
    initialised from the current torch seed."""
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
    model.load_state_dict(state, strict=config.backend == "fused")
    return model
