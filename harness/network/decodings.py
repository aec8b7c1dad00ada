"""Output decodings: how the output layer's spikes and membranes become a loss and a class.

- rate: loss = sum over steps of CrossEntropy(U_out[t], y) (the seed's eq. 10);
  prediction = argmax of the spike counts.
- latency: prediction = the neuron that fires first (never firing counts as step T - 1; ties
  go to the lower class index); loss = CrossEntropy(-first_spike_time, y), with gradient -1 on
  the spike at the first-spike step, which then flows through the surrogate to the membranes
  (snntorch.functional.ce_temporal_loss and accuracy_temporal semantics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DECODINGS = ("rate", "latency")


class _FirstSpikeTime(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spikes):
        num_steps = spikes.shape[0]
        fired = spikes > 0
        first = torch.where(fired.any(0), fired.to(torch.uint8).argmax(0), num_steps - 1)
        ctx.save_for_backward(first)
        ctx.num_steps = num_steps
        return first.to(spikes.dtype)

    @staticmethod
    def backward(ctx, grad_first):
        (first,) = ctx.saved_tensors
        grad = grad_first.new_zeros((ctx.num_steps, *grad_first.shape))
        grad.scatter_(0, first.unsqueeze(0), -grad_first.unsqueeze(0))
        return grad


def first_spike_time(spikes: torch.Tensor) -> torch.Tensor:
    """(T, B, C) spikes -> (B, C) step of each neuron's first spike, T - 1 if it never fires."""
    return _FirstSpikeTime.apply(spikes)


def rate_loss(membranes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over steps of the batch-mean cross-entropy, in one call ((B, C, T) layout: the
    class dimension is not the last one, which PyTorch's CPU kernel handles faster)."""
    num_steps, batch, _ = membranes.shape
    per_step = targets[:, None].expand(batch, num_steps)
    return F.cross_entropy(membranes.permute(1, 2, 0), per_step, reduction="sum") / batch


def latency_loss(spikes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(-first_spike_time(spikes), targets)


def rate_predict(spikes: torch.Tensor) -> torch.Tensor:
    return spikes.sum(0).argmax(1)


def latency_predict(spikes: torch.Tensor) -> torch.Tensor:
    return first_spike_time(spikes).argmin(1)


def loss(
    decoding: str, spikes: torch.Tensor, membranes: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The training loss of `decoding` for output spikes and membranes, both (T, B, C)."""
    if decoding == "rate":
        return rate_loss(membranes, targets)
    if decoding == "latency":
        return latency_loss(spikes, targets)
    raise ValueError(f"unknown decoding {decoding!r} (allowed: {', '.join(DECODINGS)})")


def predict(decoding: str, spikes: torch.Tensor) -> torch.Tensor:
    """The predicted class of each sample under `decoding`."""
    if decoding == "rate":
        return rate_predict(spikes)
    if decoding == "latency":
        return latency_predict(spikes)
    raise ValueError(f"unknown decoding {decoding!r} (allowed: {', '.join(DECODINGS)})")
