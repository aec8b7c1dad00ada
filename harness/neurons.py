"""Leaky integrate-and-fire neurons: surrogate gradients and a fused scan over time steps.

Semantics (snnTorch's `Leaky`, reset by subtraction, the default), for each step t:
    reset = H(U[t-1] - thr)                  (detached: no gradient flows through it)
    U[t]  = beta * U[t-1] + I[t] - reset * thr
    S[t]  = H(U[t] - thr), H(x) = 1 if x > 0  (backward: the surrogate's derivative)
Since reset = S[t-1], the backward pass has a closed form that runs backwards in time:
    G[t]  = dL/dS[t] * surrogate'(U[t] - thr) + dL/dU[t] + beta * G[t+1],   dL/dI[t] = G[t]
so no per-step autograd graph is built. On the CPU both directions run as one numba kernel
(parallel over the batch, the time loop innermost in registers); elsewhere as a short loop
of tensor operations, which needs no compiler and runs on CUDA and MPS unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

SURROGATES = ("atan", "fast_sigmoid")
_SURROGATE_CODE = {"atan": 0, "fast_sigmoid": 1}


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


@njit(parallel=True, cache=True)
def _forward_numba(current, num_steps, beta, thr, spikes, membranes):
    static = current.shape[0] == 1
    batch, width = current.shape[1], current.shape[2]
    for b in prange(batch):
        u = np.zeros(width, np.float32)
        s = np.zeros(width, np.float32)
        for t in range(num_steps):
            ti = 0 if static else t
            for n in range(width):
                un = beta * u[n] + current[ti, b, n] - s[n] * thr
                sn = np.float32(1.0) if un > thr else np.float32(0.0)
                u[n] = un
                s[n] = sn
                membranes[t, b, n] = un
                spikes[t, b, n] = sn


@njit(parallel=True, cache=True)
def _backward_numba(membranes, grad_spikes, grad_membranes, beta, thr, code, slope, grad_current):
    num_steps, batch, width = membranes.shape
    static = grad_current.shape[0] == 1
    half = np.float32(slope / 2.0)
    k = np.float32(math.pi / 2.0 * slope)
    one = np.float32(1.0)
    for b in prange(batch):
        g = np.zeros(width, np.float32)
        total = np.zeros(width, np.float32)
        for t in range(num_steps - 1, -1, -1):
            for n in range(width):
                x = membranes[t, b, n] - thr
                if code == 0:
                    kx = k * x
                    d = half / (one + kx * kx)
                else:
                    q = slope * abs(x) + one
                    d = one / (q * q)
                gn = grad_spikes[t, b, n] * d + grad_membranes[t, b, n] + beta * g[n]
                g[n] = gn
                if static:
                    total[n] += gn
                else:
                    grad_current[t, b, n] = gn
        if static:
            for n in range(width):
                grad_current[0, b, n] = total[n]


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


def _use_numba(tensor: torch.Tensor, kernel: str) -> bool:
    if kernel not in ("auto", "numba", "torch"):
        raise ValueError(f"unknown kernel {kernel!r} (allowed: auto, numba, torch)")
    if kernel == "auto":
        return tensor.device.type == "cpu" and tensor.dtype == torch.float32
    return kernel == "numba"


class _LIFScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, num_steps, beta, thr, surrogate, slope, kernel):
        shape = (num_steps, *current.shape[1:])
        spikes = current.new_empty(shape)
        membranes = current.new_empty(shape)
        numba = _use_numba(current, kernel)
        if numba:
            _forward_numba(
                current.detach().contiguous().numpy(), num_steps, np.float32(beta),
                np.float32(thr), spikes.numpy(), membranes.numpy(),
            )  # fmt: skip
        else:
            _forward_torch(current.detach(), num_steps, beta, thr, spikes, membranes)
        ctx.save_for_backward(membranes)
        ctx.settings = (beta, thr, surrogate, slope, numba, current.shape[0])
        return spikes, membranes

    @staticmethod
    def backward(ctx, grad_spikes, grad_membranes):
        (membranes,) = ctx.saved_tensors
        beta, thr, surrogate, slope, numba, steps_in = ctx.settings
        out = membranes.new_zeros((steps_in, *membranes.shape[1:]))
        if numba:
            _backward_numba(
                membranes.numpy(), grad_spikes.contiguous().numpy(),
                grad_membranes.contiguous().numpy(), np.float32(beta), np.float32(thr),
                _SURROGATE_CODE[surrogate], np.float32(slope), out.numpy(),
            )  # fmt: skip
        else:
            _backward_torch(
                membranes, grad_spikes, grad_membranes, beta, thr, surrogate, slope, out
            )
        return out, None, None, None, None, None, None


def lif_scan(
    current: torch.Tensor,
    num_steps: int,
    beta: float,
    threshold: float = 1.0,
    surrogate: str = "atan",
    slope: float = 2.0,
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a layer of LIF neurons for `num_steps` steps from zero membrane.

    `current` is (B, N) for a static input current (the same at every step) or (T, B, N) for
    one per step. Returns spikes and membranes, both (T, B, N). `kernel` picks the
    implementation: numba (CPU), torch (any device), or auto (numba on the CPU).
    """
    if surrogate not in _SURROGATE_CODE:
        raise ValueError(f"unknown surrogate {surrogate!r} (allowed: {', '.join(SURROGATES)})")
    if current.dim() == 2:
        current = current.unsqueeze(0)
    elif current.dim() != 3 or current.shape[0] != num_steps:
        raise ValueError(f"current must be (B, N) or ({num_steps}, B, N), got {current.shape}")
    return _LIFScan.apply(current, num_steps, beta, threshold, surrogate, slope, kernel)
