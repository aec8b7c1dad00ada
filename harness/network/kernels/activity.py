"""Activity counters of the CPU kernel: spikes per neuron, membrane updates, and the
synaptic operations an input costs fc1 (the efficiency metrics).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from harness.network.kernels.primitives import F32

# Activity counts (eval mode): sums of 0s and 1s in float32, vectorised and exact (at most
# T per neuron, N per step), gathered into int64 / float64 per sample.


@njit(fastmath={"reassoc", "nsz", "arcp"}, error_model="numpy", cache=True)
def spike_counts(s, counts, scratch):
    """Adds each neuron's spikes over one sample's steps, s (T, N), to `counts` (N,)."""
    scratch[:] = 0
    for t in range(s.shape[0]):
        row = s[t]
        for n in range(row.shape[0]):
            scratch[n] += row[n]
    for n in range(scratch.shape[0]):
        counts[n] += scratch[n]


@njit(fastmath={"reassoc", "nsz", "arcp"}, error_model="numpy", cache=True)
def membrane_changes(u):
    """How many of one sample's membranes u (T, N) changed from one step to the next
    (U[t] != U[t-1], t >= 1: NeuroBench's membrane updates after the first step)."""
    zero, one = F32(0.0), F32(1.0)
    changed = 0
    for t in range(1, u.shape[0]):
        now, before = u[t], u[t - 1]
        step = zero
        for n in range(now.shape[0]):
            step += one if now[n] != before[n] else zero
        changed += np.int64(step)
    return changed


@njit(parallel=True, fastmath={"reassoc", "nsz", "arcp"}, error_model="numpy", cache=True)
def _input_operations(inputs, fan_out, zero, ops, odd):
    """Per input vector (row): the sum of `fan_out` over its nonzero entries (in `zero`'s
    type), and how many of its entries are neither 0, 1 nor -1 (float32). Sums of whole
    numbers, so exact while below 2**24 in float32 and 2**53 in float64."""
    none, one = F32(0.0), F32(1.0)
    for b in prange(inputs.shape[0]):
        row = inputs[b]
        total, count = zero, none
        for j in range(row.shape[0]):
            v = row[j]
            a = abs(v)
            total += fan_out[j] if v != 0 else zero
            count += one if (a != 0) & (a != 1) else none
        ops[b] = total
        odd[b] = count


def input_operations(inputs: torch.Tensor, fan_out: torch.Tensor):
    """`_input_operations` on CPU tensors: inputs (B, in) float32, fan_out (in,) float32 or
    float64 -> ops (B,) of fan_out's type and the count of odd entries (B,) float32."""
    inputs = inputs.detach().contiguous()
    ops = fan_out.new_empty(inputs.shape[0])
    odd = inputs.new_empty(inputs.shape[0])
    zero = np.float32(0) if fan_out.dtype == torch.float32 else np.float64(0)
    _input_operations(inputs.numpy(), fan_out.numpy(), zero, ops.numpy(), odd.numpy())
    return ops, odd
