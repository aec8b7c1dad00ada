"""The decodings' functions (their table: harness/network/decodings.py): losses and
predictions from the output layer's (T, B, C) spikes and membranes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.network.decodings import spec


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
    entry = spec(decoding)
    output = membranes if entry.loss_reads == "membranes" else spikes
    return globals()[entry.loss](output, targets)


def predict(decoding: str, spikes: torch.Tensor) -> torch.Tensor:
    """The predicted class of each sample under `decoding`."""
    return globals()[spec(decoding).predict](spikes)
