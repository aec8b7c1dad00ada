"""CPU kernel of the fused backend: everything after fc1, one sample at a time, in cache.

After fc1 every sample is independent: its hidden LIF scan, fc2 and its output LIF scan
touch only that sample's (T, H) and (T, 10) values. So the kernel runs one sample at a time
(parallel over samples), keeps those values in per-thread buffers that fit in the CPU cache,
and never writes the (T, B, H) hidden spikes or membranes to memory. The backward pass
recomputes the sample's hidden scan (cheap: its input current is static), reads the output
membranes the forward pass returned, and walks both layers backwards in time together,
using the closed-form LIF gradient of `neurons`:

    G2[t] = dL/dS2[t] * sg(U2[t] - thr) + dL/dU2[t] + beta * G2[t+1]     (output layer)
    G1[t] = (W2^T G2[t]) * sg(U1[t] - thr) + beta * G1[t+1]              (hidden layer)
    dL/dcur1 = sum_t G1[t],   dL/dW2 = sum_t,b G2[t] S1[t]^T,   dL/db2 = sum_t,b G2[t]

The arithmetic of each LIF step is snnTorch's, in its order, so spikes and membranes match
the reference backend; only fc2's dot products are reassociated (vectorised).

In eval mode the forward pass also counts each sample's activity while its values are in
cache (`harness.efficiency`'s metrics): hidden spikes per neuron, both layers' membrane
updates, output spikes. `input_operations` counts the synaptic operations the images cost fc1.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

SURROGATE_CODE = {"atan": 0, "fast_sigmoid": 1}
_F32 = np.float32


@njit(fastmath={"reassoc", "nsz", "arcp"}, cache=True)
def _dot(a, b):
    total = _F32(0.0)
    for i in range(a.shape[0]):
        total += a[i] * b[i]
    return total


# Activity counts (eval mode): sums of 0s and 1s in float32, vectorised and exact (at most
# T per neuron, N per step), gathered into int64 / float64 per sample.


@njit(fastmath={"reassoc", "nsz", "arcp"}, error_model="numpy", cache=True)
def _spike_counts(s, counts, scratch):
    """Adds each neuron's spikes over one sample's steps, s (T, N), to `counts` (N,)."""
    scratch[:] = 0
    for t in range(s.shape[0]):
        row = s[t]
        for n in range(row.shape[0]):
            scratch[n] += row[n]
    for n in range(scratch.shape[0]):
        counts[n] += scratch[n]


@njit(fastmath={"reassoc", "nsz", "arcp"}, error_model="numpy", cache=True)
def _changes(u):
    """How many of one sample's membranes u (T, N) changed from one step to the next
    (U[t] != U[t-1], t >= 1: NeuroBench's membrane updates after the first step)."""
    zero, one = _F32(0.0), _F32(1.0)
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
    none, one = _F32(0.0), _F32(1.0)
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


@njit(fastmath={"reassoc", "nsz", "arcp", "contract"}, error_model="numpy", cache=True)
def _fc2(s1, w2, b2, out):
    """out = W2 s1 + b2 for one step. For MNIST's 10 classes the 10 dot products share one
    pass over s1 (ten accumulators in registers); any other width takes one pass each."""
    if w2.shape[0] == 10:
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = _F32(0.0)
        for n in range(s1.shape[0]):
            x = s1[n]
            c0 += x * w2[0, n]
            c1 += x * w2[1, n]
            c2 += x * w2[2, n]
            c3 += x * w2[3, n]
            c4 += x * w2[4, n]
            c5 += x * w2[5, n]
            c6 += x * w2[6, n]
            c7 += x * w2[7, n]
            c8 += x * w2[8, n]
            c9 += x * w2[9, n]
        out[0], out[1], out[2], out[3], out[4] = c0, c1, c2, c3, c4
        out[5], out[6], out[7], out[8], out[9] = c5, c6, c7, c8, c9
    else:
        for k in range(w2.shape[0]):
            out[k] = _dot(s1, w2[k])
    for k in range(w2.shape[0]):
        out[k] += b2[k]


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _fc2_backward(g2, w2, s1, grad_s1, grad_w2):
    """grad_s1 = W2^T g2 and grad_w2 += g2 s1^T for one step. For 10 classes grad_s1 takes
    one pass with the ten weights of a neuron summed in registers. (One loop writing both
    outputs would not vectorise: too many arrays that might overlap for LLVM to check.)"""
    if w2.shape[0] == 10:
        a0, a1, a2, a3, a4 = g2[0], g2[1], g2[2], g2[3], g2[4]
        a5, a6, a7, a8, a9 = g2[5], g2[6], g2[7], g2[8], g2[9]
        for n in range(s1.shape[0]):
            grad_s1[n] = (
                a0 * w2[0, n] + a1 * w2[1, n] + a2 * w2[2, n] + a3 * w2[3, n] + a4 * w2[4, n]
                + a5 * w2[5, n] + a6 * w2[6, n] + a7 * w2[7, n] + a8 * w2[8, n] + a9 * w2[9, n]
            )  # fmt: skip
    else:
        grad_s1[:] = 0
        for k in range(w2.shape[0]):
            _axpy(grad_s1, g2[k], w2[k])
    for k in range(w2.shape[0]):
        _axpy(grad_w2[k], g2[k], s1)


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _axpy(y, a, x):
    """y += a * x, on rows (1-D slices vectorise; 2-D indexing in the loop may not)."""
    for n in range(y.shape[0]):
        y[n] += a * x[n]


@njit(error_model="numpy", cache=True)
def _lif_step(prev_u, prev_s, current, beta, thr, u, s):
    """One LIF step for a row of neurons: snnTorch's arithmetic, in its order."""
    zero, one = _F32(0.0), _F32(1.0)
    for n in range(u.shape[0]):
        un = beta * prev_u[n] + current[n] - prev_s[n] * thr
        u[n] = un
        s[n] = one if un > thr else zero


@njit(error_model="numpy", cache=True)
def _hidden_forward(cur1, beta, thr, u1, s1, zeros):
    """One sample's hidden layer over all steps; fills u1 and s1, both (T, H)."""
    for t in range(u1.shape[0]):
        _lif_step(u1[t - 1] if t else zeros, s1[t - 1] if t else zeros, cur1, beta, thr,
                  u1[t], s1[t])  # fmt: skip


@njit(error_model="numpy", cache=True)
def _output_forward(s1, w2, b2, beta, thr, u2, s2, cur2, zeros):
    """One sample's fc2 and output layer from its hidden spikes; fills u2 and s2 (T, K)."""
    for t in range(u2.shape[0]):
        _fc2(s1[t], w2, b2, cur2)
        _lif_step(u2[t - 1] if t else zeros, s2[t - 1] if t else zeros, cur2, beta, thr,
                  u2[t], s2[t])  # fmt: skip


@njit(error_model="numpy", cache=True)
def _surrogate(x, code, slope):
    """dS/dU at x = U - thr (snnTorch's atan with alpha = slope, or fast_sigmoid)."""
    one = _F32(1.0)
    if code == 0:
        kx = _F32(math.pi / 2.0 * slope) * x
        return _F32(slope / 2.0) / (one + kx * kx)
    q = slope * abs(x) + one
    return one / (q * q)


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _hidden_backward_step(u, grad_s, thr, beta, code, slope, g, total):
    """G1[t] = dL/dS1[t] * sg(U1[t] - thr) + beta * G1[t+1], summed into `total`."""
    one = _F32(1.0)
    if code == 0:
        k, half = _F32(math.pi / 2.0 * slope), _F32(slope / 2.0)
        for n in range(u.shape[0]):
            kx = k * (u[n] - thr)
            gn = grad_s[n] * (half / (one + kx * kx)) + beta * g[n]
            g[n] = gn
            total[n] += gn
    else:
        for n in range(u.shape[0]):
            q = slope * abs(u[n] - thr) + one
            gn = grad_s[n] * (one / (q * q)) + beta * g[n]
            g[n] = gn
            total[n] += gn


def _chunks(batch: int) -> int:
    return max(1, min(batch, numba.get_num_threads()))


@njit(parallel=True, error_model="numpy", cache=True)
def _forward(cur1, w2, b2, num_steps, beta, thr, chunks, spikes2, mem2, activity, counts, tallies):
    batch, hidden = cur1.shape
    outputs = w2.shape[0]
    for c in prange(chunks):
        u1 = np.empty((num_steps, hidden), _F32)
        s1 = np.empty((num_steps, hidden), _F32)
        u2 = np.empty((num_steps, outputs), _F32)
        s2 = np.empty((num_steps, outputs), _F32)
        cur2 = np.empty(outputs, _F32)
        zeros_h, zeros_k = np.zeros(hidden, _F32), np.zeros(outputs, _F32)
        scratch_h = np.empty(hidden if activity else 0, _F32)
        scratch_k, output_counts = np.empty(outputs, _F32), np.zeros(outputs)
        for b in range(c * batch // chunks, (c + 1) * batch // chunks):
            _hidden_forward(cur1[b], beta, thr, u1, s1, zeros_h)
            _output_forward(s1, w2, b2, beta, thr, u2, s2, cur2, zeros_k)
            mem2[:, b, :] = u2
            spikes2[:, b, :] = s2
            if activity:
                _spike_counts(s1, counts[c], scratch_h)
                _spike_counts(s2, output_counts, scratch_k)
                tallies[c, 0] += _changes(u1)
                tallies[c, 2] += _changes(u2)
        tallies[c, 1] = np.int64(output_counts.sum())


@njit(parallel=True, error_model="numpy", cache=True)
def _backward(
    cur1, w2, mem2, num_steps, beta, thr, code, slope, chunks, grad_s2, grad_u2,
    grad_cur1, grad_w2_parts, grad_b2_parts,
):  # fmt: skip
    batch, hidden = cur1.shape
    outputs = w2.shape[0]
    for c in prange(chunks):
        u1 = np.empty((num_steps, hidden), _F32)
        s1 = np.empty((num_steps, hidden), _F32)
        g1 = np.empty(hidden, _F32)
        total = np.empty(hidden, _F32)
        ds1 = np.empty(hidden, _F32)
        g2 = np.empty(outputs, _F32)
        gw2 = np.zeros((outputs, hidden), _F32)
        gb2 = np.zeros(outputs, np.float64)
        zeros_h = np.zeros(hidden, _F32)
        for b in range(c * batch // chunks, (c + 1) * batch // chunks):
            _hidden_forward(cur1[b], beta, thr, u1, s1, zeros_h)
            g1[:] = 0
            total[:] = 0
            g2[:] = 0
            for t in range(num_steps - 1, -1, -1):
                for k in range(outputs):
                    d = _surrogate(mem2[t, b, k] - thr, code, slope)
                    g2[k] = grad_s2[t, b, k] * d + grad_u2[t, b, k] + beta * g2[k]
                    gb2[k] += g2[k]
                _fc2_backward(g2, w2, s1[t], ds1, gw2)
                _hidden_backward_step(u1[t], ds1, thr, beta, code, slope, g1, total)
            grad_cur1[b] = total
        grad_w2_parts[c] = gw2
        grad_b2_parts[c] = gb2


class _FusedLIFNet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cur1, w2, b2, num_steps, beta, thr, surrogate, slope, activity):
        (batch, hidden), outputs = cur1.shape, w2.shape[0]
        chunks = _chunks(batch)
        spikes = cur1.new_empty((num_steps, batch, outputs))
        membranes = cur1.new_empty((num_steps, batch, outputs))
        # Per chunk (thread): each hidden neuron's spikes (float64: exact), and the hidden
        # layer's membrane updates, the output layer's spikes and its membrane updates.
        counts = torch.zeros((chunks, hidden if activity else 0), dtype=torch.float64)
        tallies = torch.zeros((chunks, 3), dtype=torch.int64)
        cur1, w2, b2 = cur1.detach().contiguous(), w2.detach().contiguous(), b2.detach()
        _forward(
            cur1.numpy(), w2.numpy(), b2.numpy(), num_steps, _F32(beta), _F32(thr), chunks,
            spikes.numpy(), membranes.numpy(), activity, counts.numpy(), tallies.numpy(),
        )  # fmt: skip
        ctx.save_for_backward(cur1, w2, membranes)
        ctx.settings = (num_steps, beta, thr, surrogate, slope)
        counts, tallies = counts.sum(0).to(torch.int64), tallies.sum(0)
        ctx.mark_non_differentiable(counts, tallies)
        ctx.set_materialize_grads(False)
        return spikes, membranes, counts, tallies

    @staticmethod
    def backward(ctx, grad_spikes, grad_membranes, *_):
        cur1, w2, membranes = ctx.saved_tensors
        num_steps, beta, thr, surrogate, slope = ctx.settings
        batch, chunks = cur1.shape[0], _chunks(cur1.shape[0])
        if grad_spikes is None:
            grad_spikes = cur1.new_zeros((num_steps, batch, w2.shape[0]))
        if grad_membranes is None:
            grad_membranes = cur1.new_zeros((num_steps, batch, w2.shape[0]))
        grad_cur1 = torch.empty_like(cur1)
        grad_w2 = torch.empty((chunks, *w2.shape), dtype=torch.float32)
        grad_b2 = torch.empty((chunks, w2.shape[0]), dtype=torch.float64)
        _backward(
            cur1.numpy(), w2.numpy(), membranes.numpy(), num_steps, _F32(beta), _F32(thr),
            SURROGATE_CODE[surrogate], _F32(slope), chunks,
            grad_spikes.contiguous().numpy(), grad_membranes.contiguous().numpy(),
            grad_cur1.numpy(), grad_w2.numpy(), grad_b2.numpy(),
        )  # fmt: skip
        grad_w2 = grad_w2.sum(0)
        grad_b2 = grad_b2.sum(0).to(w2.dtype)
        return grad_cur1, grad_w2, grad_b2, None, None, None, None, None, None


def fused_lif_net(
    cur1: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    num_steps: int,
    beta: float,
    threshold: float,
    surrogate: str,
    slope: float,
    activity: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden LIF layer, fc2 and output LIF layer on the CPU, from fc1's output (B, H).

    Returns the output spikes and membranes (T, B, K), and, if `activity`, the layers'
    activity over the batch (int64): each hidden neuron's spike count (H,), and (3,) the
    hidden layer's membrane updates after the first step (how many U[t] != U[t-1], t >= 1),
    the output layer's spikes and its membrane updates. Without it (training) nothing is
    counted: an empty (0,) tensor and zeros.
    """
    if cur1.device.type != "cpu" or cur1.dtype != torch.float32:
        raise ValueError("fused_lif_net runs on float32 CPU tensors only")
    return _FusedLIFNet.apply(
        cur1, fc2_weight, fc2_bias, num_steps, beta, threshold, surrogate, slope, activity
    )
