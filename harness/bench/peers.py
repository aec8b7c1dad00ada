"""`harness bench --peers` times rows of the tutorial-5 case (batch 128) that show where the
speed comes from and against whom, all from one seeded nn.Linear pair's weights, interleaved in
rounds on the same batches, each with its rate loss on the first batch before any step:

- snnTorch as written (the `reference` backend: fc1 at every step);
- snnTorch with fc1 computed once before the step loop (the input is static);
- snnTorch under `torch.compile` (`--compile` only: it compiles for minutes);
- SpikingJelly's multi-step `LIFNode` (its CPU path is plain PyTorch), fc1 once, fc2 over
  all steps in one product (its multi-step idiom);
- Norse's `LIFBoxCell` (the LIF without a synaptic current), fc1 once, a step loop;
- the fused backend's torch-ops path (`FusedNet(kernel="torch")`);
- the fused backend's CPU kernel (`FusedNet(kernel="numba")`, the `fused` backend).

The peers come as close to snnTorch's Leaky (U[t] = beta U[t-1] + I[t] - S[t-1] thr,
S[t] = U[t] > thr, the reset detached, ATan surrogate) as each allows; what differs:

- SpikingJelly: tau = 1 / (1 - beta), decay_input=False (H[t] = beta V[t-1] + I[t]),
  v_reset=None (soft reset V[t] = H[t] - S[t] thr), detach_reset=True, ATan(alpha=slope),
  whose gradient alpha / 2 / (1 + (pi alpha x / 2)^2) is snnTorch's. Its reset happens
  within the step, so the next step decays it: it subtracts beta thr where snnTorch
  subtracts thr. It fires on H >= thr (snnTorch on U > thr). The loss reads H[t] (snnTorch's
  membrane, before the reset), rebuilt as V[t] + S[t] thr with the spike detached.
- Norse: its decay scales the input, v + dt/tau (I - v); dt = 1, 1/tau = 1 - beta and the
  input current scaled by 1/(1 - beta) give beta v + I. Its own `reset_subtract`
  (v - z thr, within the step) would be decayed like SpikingJelly's, with the gradient
  flowing through the spike; its parameters take any reset function, so this one subtracts
  thr / beta with the spike detached, which its decay at the next step turns into
  snnTorch's reset exactly. It fires on v > thr, like snnTorch. It has no ATan surrogate:
  "circ" with alpha = 2 / (pi slope) has the gradient (1 + (pi slope x / 2)^2)^(-3/2)
  (snnTorch's: (slope / 2) / (1 + (pi slope x / 2)^2)): the same peak and scale at slope 2,
  thinner tails. The loss reads the membrane before the reset, v + z thr / beta.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch
from torch import nn

from harness.bench.timing import ROUND, time_steps, training_step
from harness.config import RunConfig, make_run_config
from harness.errors import ConfigError
from harness.network import readout
from harness.network.model import (
    NUM_INPUTS,
    NUM_OUTPUTS,
    FusedNet,
    NetOutput,
    ReferenceNet,
)

PEERS = ("spikingjelly", "norse")  # the packages of the `peers` extra (pyproject.toml)
PEERS_INSTALL = "pip install '.[peers]'"


class SnnTorchStaticNet(ReferenceNet):
    """snnTorch's Leaky neurons built as the reference builds them, but fc1 computed once
    before the step loop: the input is the same image at every step."""

    def forward(self, x: torch.Tensor) -> NetOutput:
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        cur1 = self.fc1(x)
        spk2_rec, mem2_rec = [], []
        for _ in range(self.num_steps):
            spk1, mem1 = self.lif1(cur1, mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return NetOutput(torch.stack(spk2_rec), torch.stack(mem2_rec), None)


def _atan_only(config: RunConfig, library: str) -> None:
    if config.surrogate != "atan":
        raise ConfigError(f"the {library} row is set up for the atan surrogate only")


class SpikingJellyNet(nn.Module):
    """SpikingJelly's multi-step LIFNode, set as close to snnTorch's Leaky as it allows
    (module docstring): fc1 once, each LIF layer over all steps in one call."""

    def __init__(self, config: RunConfig):
        from spikingjelly.activation_based import neuron, surrogate

        super().__init__()
        _atan_only(config, "SpikingJelly")
        self.num_steps = config.num_steps
        self.threshold = config.threshold
        lif = dict(
            tau=1 / (1 - config.beta),
            decay_input=False,
            v_threshold=config.threshold,
            v_reset=None,
            surrogate_function=surrogate.ATan(alpha=config.surrogate_slope),
            detach_reset=True,
            step_mode="m",
        )
        self.fc1 = nn.Linear(NUM_INPUTS, config.hidden)
        self.lif1 = neuron.LIFNode(**lif)
        self.fc2 = nn.Linear(config.hidden, NUM_OUTPUTS)
        self.lif2 = neuron.LIFNode(**lif, store_v_seq=True)

    def forward(self, x: torch.Tensor) -> NetOutput:
        from spikingjelly.activation_based import functional

        functional.reset_net(self)  # its neurons keep their membranes between calls
        cur1 = self.fc1(x)
        spikes1 = self.lif1(cur1.expand(self.num_steps, *cur1.shape))
        spikes = self.lif2(self.fc2(spikes1))
        membranes = self.lif2.v_seq + spikes.detach() * self.threshold  # before the reset
        return NetOutput(spikes, membranes, None)


def _snntorch_reset(beta: float) -> Callable:
    """A Norse ResetMethod that, after Norse's decay at the next step, is snnTorch's reset:
    subtract thr / beta now (beta thr / beta = thr then), the spike detached."""

    def reset(z: torch.Tensor, v: torch.Tensor, v_reset, v_th: torch.Tensor) -> torch.Tensor:
        return v - z.detach() * (v_th / beta)

    return reset


class NorseNet(nn.Module):
    """Norse's LIFBoxCell, set as close to snnTorch's Leaky as it allows (module docstring):
    fc1 once, a loop over steps."""

    def __init__(self, config: RunConfig):
        from norse.torch import LIFBoxCell, LIFBoxParameters

        super().__init__()
        _atan_only(config, "Norse")
        self.num_steps = config.num_steps
        self.scale = 1 / (1 - config.beta)  # its decay multiplies the input by 1 - beta
        self.reset_step = config.threshold / config.beta
        params = LIFBoxParameters(
            tau_mem_inv=torch.as_tensor(1 - config.beta),
            v_th=torch.as_tensor(config.threshold),
            method="circ",
            alpha=torch.as_tensor(2 / (math.pi * config.surrogate_slope)),
            reset_method=_snntorch_reset(config.beta),
        )
        self.fc1 = nn.Linear(NUM_INPUTS, config.hidden)
        self.lif1 = LIFBoxCell(params, dt=1.0)
        self.fc2 = nn.Linear(config.hidden, NUM_OUTPUTS)
        self.lif2 = LIFBoxCell(params, dt=1.0)

    def forward(self, x: torch.Tensor) -> NetOutput:
        cur1 = self.fc1(x) * self.scale
        state1 = state2 = None
        spk2_rec, mem2_rec = [], []
        for _ in range(self.num_steps):
            spk1, state1 = self.lif1(cur1, state1)
            spk2, state2 = self.lif2(self.fc2(spk1) * self.scale, state2)
            spk2_rec.append(spk2)
            mem2_rec.append(state2.v + spk2.detach() * self.reset_step)  # before the reset
        return NetOutput(torch.stack(spk2_rec), torch.stack(mem2_rec), None)


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    build: Callable[[RunConfig], nn.Module]
    compiled: bool = False  # under torch.compile (`--compile` only)


ROWS = (
    Row("reference", "snnTorch as written (reference)", ReferenceNet),
    Row("snntorch_fc1_once", "snnTorch, fc1 once", SnnTorchStaticNet),
    Row("snntorch_compile", "snnTorch, torch.compile", ReferenceNet, compiled=True),
    Row("spikingjelly", "SpikingJelly LIFNode multi-step", SpikingJellyNet),
    Row("norse", "Norse LIFBoxCell", NorseNet),
    Row("fused_torch", "fused, torch ops", lambda config: FusedNet(config, kernel="torch")),
    Row("fused", "fused, numba kernel (fused)", lambda config: FusedNet(config, kernel="numba")),
)


def peer_versions() -> dict[str, str]:
    """The installed version of each package of the `peers` extra; a ConfigError naming
    those missing and the install command when any is."""
    versions, missing = {}, []
    for package in PEERS:
        try:
            with warnings.catch_warnings():  # Norse's import warns about torch.jit.script
                warnings.simplefilter("ignore")
                __import__(package)
            versions[package] = metadata.version(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ConfigError(f"--peers needs {' and '.join(missing)} (not installed): {PEERS_INSTALL}")
    return versions


def _model_with_weights(row: Row, config: RunConfig, fc1: nn.Linear, fc2: nn.Linear) -> nn.Module:
    """`row`'s network with fc1 and fc2 copied from the given pair (before any compile)."""
    model = row.build(config)
    with torch.no_grad():
        for mine, theirs in ((model.fc1, fc1), (model.fc2, fc2)):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    return torch.compile(model) if row.compiled else model


def initial_loss(
    model: nn.Module, config: RunConfig, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """The loss on a batch before any step; its backward runs too (gradients dropped,
    weights untouched), so compiled graphs and kernels are built before timing."""
    out = model(images)
    loss = readout.loss(config.decoding, out.spikes, out.membranes, labels)
    value = float(loss.detach())
    loss.backward()
    for param in model.parameters():
        param.grad = None
    return value


def peer_rows(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    compiled: bool = False,
    round_size: int = ROUND,
) -> list[dict]:
    """Every row of the tutorial-5 case: ms per iteration (median, interleaved in rounds),
    x snnTorch (the reference's ms over the row's) and the initial loss, on the same
    weights."""
    config = make_run_config({"device": str(device)})
    rows = [row for row in ROWS if compiled or not row.compiled]
    torch.manual_seed(config.seed)
    fc1, fc2 = nn.Linear(NUM_INPUTS, config.hidden), nn.Linear(config.hidden, NUM_OUTPUTS)
    images, labels = batches[0]
    steps, losses = {}, {}
    for row in rows:
        model = _model_with_weights(row, config, fc1, fc2).to(device)
        losses[row.name] = initial_loss(model, config, images, labels)
        steps[row.name] = training_step(model, config, device)
    ms = time_steps(steps, batches, device, warmup, round_size)
    return [
        {
            "name": row.name,
            "label": row.label,
            "ms_per_iteration": ms[row.name],
            "x_snntorch": ms["reference"] / ms[row.name],
            "initial_loss": losses[row.name],
        }
        for row in rows
    ]
