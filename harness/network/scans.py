"""Scans of a layer of spiking neurons over all time steps, with closed-form backward passes.

The neuron models of harness/network/neurons.py, as snnTorch defines them (reset by
subtraction, the default), for each step t:

Leaky (`lif_scan`):
    reset = H(U[t-1] - thr)                  (detached: no gradient flows through it)
    U[t]  = beta * U[t-1] + I[t] - reset * thr
    S[t]  = H(U[t] - thr), H(x) = 1 if x > 0  (backward: the surrogate's derivative)
Synaptic (`synaptic_scan`): a synaptic current between input and membrane,
    reset = H(U[t-1] - thr)                  (detached)
    J[t]  = alpha * J[t-1] + I[t]
    U[t]  = beta * U[t-1] + J[t] - reset * thr
    S[t]  = H(U[t] - thr)
Since reset = S[t-1] is detached, the backward pass has a closed form that runs backwards in
time (for Leaky, G_J = G_U):
    G_U[t] = dL/dS[t] * surrogate'(U[t] - thr) + dL/dU[t] + beta * G_U[t+1]
    G_J[t] = G_U[t] + alpha * G_J[t+1],   dL/dI[t] = G_J[t]  (summed over t for a static I)
so no per-step autograd graph is built. The scans run as short loops of tensor operations on
any device (CUDA, MPS, CPU), each step in snnTorch's order of operations, so spikes and
membranes match it; `kernels` fuses both layers of the net into one CPU kernel with the
same arithmetic (for a static input, with the recurrences' sum over steps in closed form).
"""

from __future__ import annotations

import torch

from harness.network import surrogates


def _forward_torch(current, num_steps, alpha, beta, thr, spikes, membranes) -> None:
    u = torch.zeros_like(current[0])
    s = torch.zeros_like(current[0])
    j = torch.zeros_like(current[0]) if alpha is not None else None
    static = current.shape[0] == 1
    for t in range(num_steps):
        i = current[0 if static else t]
        if j is not None:
            j = alpha * j + i
            i = j
        u = beta * u + i - s * thr
        s = (u > thr).to(u.dtype)
        membranes[t] = u
        spikes[t] = s


def _backward_torch(membranes, grad_spikes, grad_membranes, alpha, beta, settings, out):
    thr, surrogate, slope = settings
    local = grad_spikes * surrogates.derivative(membranes - thr, surrogate, slope) + grad_membranes
    g = torch.zeros_like(local[0])
    gj = torch.zeros_like(local[0]) if alpha is not None else None
    static = out.shape[0] == 1
    for t in range(local.shape[0] - 1, -1, -1):
        g = local[t] + beta * g
        if gj is not None:
            gj = g + alpha * gj
        grad_input = g if gj is None else gj
        if static:
            out[0] += grad_input
        else:
            out[t] = grad_input


class _Scan(torch.autograd.Function):
    """A layer over all steps; `alpha` None: Leaky, else Synaptic."""

    @staticmethod
    def forward(ctx, current, num_steps, alpha, beta, thr, surrogate, slope):
        shape = (num_steps, *current.shape[1:])
        spikes = current.new_empty(shape)
        membranes = current.new_empty(shape)
        _forward_torch(current.detach(), num_steps, alpha, beta, thr, spikes, membranes)
        ctx.save_for_backward(membranes)
        ctx.settings = (alpha, beta, (thr, surrogate, slope), current.shape[0])
        return spikes, membranes

    @staticmethod
    def backward(ctx, grad_spikes, grad_membranes):
        (membranes,) = ctx.saved_tensors
        alpha, beta, settings, steps_in = ctx.settings
        out = membranes.new_zeros((steps_in, *membranes.shape[1:]))
        _backward_torch(membranes, grad_spikes, grad_membranes, alpha, beta, settings, out)
        return out, None, None, None, None, None, None


def _scan(current, num_steps, alpha, beta, threshold, surrogate, slope):
    if surrogate not in surrogates.SURROGATES:
        allowed = ", ".join(surrogates.SURROGATES)
        raise ValueError(f"unknown surrogate {surrogate!r} (allowed: {allowed})")
    if current.dim() == 2:
        current = current.unsqueeze(0)
    elif current.dim() != 3 or current.shape[0] != num_steps:
        raise ValueError(f"current must be (B, N) or ({num_steps}, B, N), got {current.shape}")
    return _Scan.apply(current, num_steps, alpha, beta, threshold, surrogate, slope)


def lif_scan(
    current: torch.Tensor,
    num_steps: int,
    beta: float,
    threshold: float = 1.0,
    surrogate: str = "atan",
    slope: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a layer of Leaky neurons for `num_steps` steps from zero membrane.

    `current` is (B, N) for a static input current (the same at every step) or (T, B, N) for
    one per step. Returns spikes and membranes, both (T, B, N). Runs on any device.
    """
    return _scan(current, num_steps, None, beta, threshold, surrogate, slope)


def synaptic_scan(
    current: torch.Tensor,
    num_steps: int,
    alpha: float,
    beta: float,
    threshold: float = 1.0,
    surrogate: str = "atan",
    slope: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a layer of Synaptic neurons for `num_steps` steps from zero current and membrane.

    `current` as for `lif_scan`. Returns spikes and membranes, both (T, B, N).
    """
    return _scan(current, num_steps, alpha, beta, threshold, surrogate, slope)
