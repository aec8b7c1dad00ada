"""Leaky integrate-and-fire neurons: surrogate gradients and a fused scan over time steps.

Semantics (snnTorch's `Leaky`, reset by subtraction, the default), for each step t:
    reset = H(U[t-1] - thr)                  (detached: no gradient flows through it)
    U[t]  = beta * U[t-1] + I[t] - reset * thr
    S[t]  = H(U[t] - thr), H(x) = 1 if x > 0  (backward: the surrogate's derivative)
Since reset = S[t-1], the backward pass has a closed form that runs backwards in time:
    G[t]  = dL/dS[t] * surrogate'(U[t] - thr) + dL/dU[t] + beta * G[t+1],   dL/dI[t] = G[t]
so no per-step autograd graph is built. `lif_scan` runs it as a short loop of tensor
operations on any device (CUDA, MPS, CPU); `kernels` fuses both layers of the net into one
CPU kernel with the same arithmetic.
"""

from __future__ import annotations

import math

import torch

SURROGATES = ("atan", "fast_sigmoid")


def surrogate_grad(x: torch.Tensor, surrogate: str, slope: float) -> torch.Tensor:
    """dS/dU at x = U - thr, as snnTorch defines it (atan: alpha = slope; fast_sigmoid: slope)."""
    if surrogate == "atan":
        return slope / 2 / (1 + (math.pi / 2 * slope * x).pow(2))
    if surrogate == "fast_sigmoid":
        return 1.0 / (slope * x.abs() + 1.0).pow(2)
    raise ValueError(f"unknown surrogate {surrogate!r} (allowed: {', '.join(SURROGATES)})")


def snntorch_surrogate(surrogate: str, slope: float):
    """The matching snnTorch surrogate, for the reference backend."""
    from snntorch import surrogate as sg

    if surrogate == "atan":
        return sg.atan(alpha=slope)
    if surrogate == "fast_sigmoid":
        return sg.fast_sigmoid(slope=slope)
    raise ValueError(f"unknown surrogate {surrogate!r} (allowed: {', '.join(SURROGATES)})")


def _forward_torch(current, num_steps, beta, thr, spikes, membranes) -> None:
    u = torch.zeros_like(current[0])
    s = torch.zeros_like(current[0])
    static = current.shape[0] == 1
    for t in range(num_steps):
        u = beta * u + current[0 if static else t] - s * thr
        s = (u > thr).to(u.dtype)
        membranes[t] = u
        spikes[t] = s


def _backward_torch(membranes, grad_spikes, grad_membranes, beta, thr, surrogate, slope, out):
    local = grad_spikes * surrogate_grad(membranes - thr, surrogate, slope) + grad_membranes
    g = torch.zeros_like(local[0])
    static = out.shape[0] == 1
    for t in range(local.shape[0] - 1, -1, -1):
        g = local[t] + beta * g
        if static:
            out[0] += g
        else:
            out[t] = g


class _LIFScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, num_steps, beta, thr, surrogate, slope):
        shape = (num_steps, *current.shape[1:])
        spikes = current.new_empty(shape)
        membranes = current.new_empty(shape)
        _forward_torch(current.detach(), num_steps, beta, thr, spikes, membranes)
        ctx.save_for_backward(membranes)
        ctx.settings = (beta, thr, surrogate, slope, current.shape[0])
        return spikes, membranes

    @staticmethod
    def backward(ctx, grad_spikes, grad_membranes):
        (membranes,) = ctx.saved_tensors
        beta, thr, surrogate, slope, steps_in = ctx.settings
        out = membranes.new_zeros((steps_in, *membranes.shape[1:]))
        _backward_torch(membranes, grad_spikes, grad_membranes, beta, thr, surrogate, slope, out)
        return out, None, None, None, None, None


def lif_scan(
    current: torch.Tensor,
    num_steps: int,
    beta: float,
    threshold: float = 1.0,
    surrogate: str = "atan",
    slope: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a layer of LIF neurons for `num_steps` steps from zero membrane.

    `current` is (B, N) for a static input current (the same at every step) or (T, B, N) for
    one per step. Returns spikes and membranes, both (T, B, N). Runs on any device.
    """
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r} (allowed: {', '.join(SURROGATES)})")
    if current.dim() == 2:
        current = current.unsqueeze(0)
    elif current.dim() != 3 or current.shape[0] != num_steps:
        raise ValueError(f"current must be (B, N) or ({num_steps}, B, N), got {current.shape}")
    return _LIFScan.apply(current, num_steps, beta, threshold, surrogate, slope)
