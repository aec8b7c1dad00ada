"""CPU kernel of the fused backend: everything after fc1, one sample at a time, in cache.

After fc1 every sample is independent: its hidden LIF scan, fc2 and its output LIF scan
touch only that sample's (T, H) and (T, 10) values. So the kernel runs one sample at a time
(parallel over samples), keeps those values in per-thread buffers that fit in the CPU cache,
and never writes the (T, B, H) hidden spikes or membranes to memory. The backward pass
reads the output membranes the forward pass returned and uses the closed-form LIF gradient
of `neurons`:

    G2[t] = dL/dS2[t] * sg(U2[t] - thr) + dL/dU2[t] + beta * G2[t+1]     (output layer)
    G1[t] = (W2^T G2[t]) * sg(U1[t] - thr) + beta * G1[t+1]              (hidden layer)
    dL/dcur1 = sum_t G1[t],   dL/dW2 = sum_t,b G2[t] S1[t]^T,   dL/db2 = sum_t,b G2[t]

G2 does not depend on the hidden layer, so it comes first (every sample, backwards in time);
then each sample's hidden scan is recomputed forwards (cheap: its input current is static),
and since sum_t G1[t] = sum_t c_t (W2^T G2[t]) sg(U1[t] - thr) with c_t = 1 + beta c_(t-1),
no backward walk over the hidden layer is needed; dL/dW2 follows from the sample's spikes.
With spike input the current changes every step (cur1 (T, B, H), fc1 applied to every
step's spikes in one sparse product) and its gradient is wanted per step, dL/dcur1[t] =
G1[t]: the sample's membranes are recomputed into a (T, H) buffer and G1 walked backwards.

Synaptic neurons (alpha given) add a synaptic current J[t] = alpha J[t-1] + I[t] before the
membrane; the gradient that reaches a layer's input is then G_J[t] = G_U[t] + alpha
G_J[t+1] (G2 above is the output layer's G_J), and the hidden sum keeps its closed form
with c_t = e_t + beta c_(t-1), e_t = 1 + alpha e_(t-1) (`_step_weights`). Every kernel takes
alpha and the synaptic state as None for Leaky, so numba compiles Leaky without them.

The loops are written for LLVM's vectoriser: a sample's whole work is one call, inner loops
index 2-D arrays directly (an array slice inside the step loop costs numba more than the
arithmetic), and the recurrent state lives in its own (H,) arrays (reading the previous step
from the same (T, H) array keeps LLVM from proving the rows apart).

The arithmetic of each LIF step is snnTorch's, in its order, so spikes and membranes match
the reference backend; only fc2's dot products are reassociated (vectorised). With a static
current, a sample's hidden neurons whose current cannot reach the threshold within the steps
never fire: where they are most of the sample's, fc2 and dL/dW2 leave them out (`reach`).

fc1 itself runs before the kernel (for sparse input, `sparse_linear.py`). In eval mode the
forward pass also counts each sample's activity while its values are in cache (`activity.py`,
for `harness.training.efficiency`'s metrics): hidden spikes per neuron, both layers' membrane
updates, output spikes.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from harness.network.kernels.activity import membrane_changes, spike_counts
from harness.network.kernels.primitives import F32
from harness.network.surrogates import SURROGATES

# The number `_surrogate` branches on, per surrogate (the table in harness/network/surrogates.py).
SURROGATE_CODE = {name: spec.kernel_code for name, spec in SURROGATES.items()}


@njit(error_model="numpy", cache=True)
def _lif(u, current, s, beta, thr):
    """snnTorch's membrane update, in its order and without fast-math: bit for bit. (Callers
    compiled with fast-math call it, so that only their own arithmetic is reassociated.)"""
    return beta * u + current - s * thr


@njit(error_model="numpy", cache=True)
def _synapse(j, current, alpha):
    """snnTorch Synaptic's synaptic current update, bit for bit (as `_lif`)."""
    return alpha * j + current


@njit(error_model="numpy", cache=True)
def _synapse_state(size, alpha):
    """The synaptic currents of `size` neurons, zero; None for Leaky (alpha None: numba
    then drops the synapse's branches from the Leaky kernels at compile time)."""
    if alpha is None:
        return None
    return np.zeros(size, F32)


@njit(error_model="numpy", cache=True)
def _hidden_scan(cur1, b, alpha, beta, thr, j, u, u1, s1):
    """Sample b's hidden layer over all steps from its current cur1[:, b] (cur1 (1, B, H):
    static, the same at every step; (T, B, H): one a step): fills s1 (T, H), and u1 (T, H)
    unless it has no rows (training's forward pass needs no membranes).
    snnTorch's arithmetic, in its order (no fast-math: bit for bit). The state lives in u
    (H,), and for Synaptic j: reading the previous step from u1 itself would keep LLVM from
    vectorising (it cannot tell its rows apart). The previous step's spike is not stored
    but read off the membrane, S[t-1] = U[t-1] > thr (so it is; thr > 0 makes U = 0 at the
    start spike-free): one load and one store fewer a neuron and step."""
    zero, one = F32(0.0), F32(1.0)
    hidden, per_step = cur1.shape[2], cur1.shape[0] > 1
    keep_u = u1.shape[0] > 0
    for n in range(hidden):
        u[n] = zero
        if j is not None:
            j[n] = zero
    for t in range(s1.shape[0]):
        step = t if per_step else 0
        for n in range(hidden):
            i = cur1[step, b, n]
            if j is not None:
                i = _synapse(j[n], i, alpha)
                j[n] = i
            before = u[n]
            v = _lif(before, i, one if before > thr else zero, beta, thr)
            fired = one if v > thr else zero
            u[n] = v
            if keep_u:
                u1[t, n] = v
            s1[t, n] = fired


@njit(error_model="numpy", cache=True)
def _output_scan(cur2, alpha, beta, thr, j, u2, s2):
    """One sample's output layer over all steps from its currents cur2 (T, K)."""
    zero, one = F32(0.0), F32(1.0)
    if j is not None:
        j[:] = zero
    for t in range(u2.shape[0]):
        for k in range(u2.shape[1]):
            before, fired = (u2[t - 1, k], s2[t - 1, k]) if t else (zero, zero)
            i = cur2[t, k]
            if j is not None:
                i = _synapse(j[k], i, alpha)
                j[k] = i
            v = _lif(before, i, fired, beta, thr)
            u2[t, k] = v
            s2[t, k] = one if v > thr else zero


@njit(fastmath={"reassoc", "nsz", "arcp", "contract"}, error_model="numpy", cache=True)
def _fc2_steps(s1, w2, b2, cur2):
    """cur2[t] = W2 s1[t] + b2 for every step of one sample. For MNIST's 10 classes the 10
    dot products share one pass over s1[t] (ten accumulators in registers)."""
    steps, hidden = s1.shape
    for t in range(steps):
        if w2.shape[0] == 10:
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = F32(0.0)
            for n in range(hidden):
                x = s1[t, n]
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
            cur2[t, 0], cur2[t, 1], cur2[t, 2], cur2[t, 3], cur2[t, 4] = c0, c1, c2, c3, c4
            cur2[t, 5], cur2[t, 6], cur2[t, 7], cur2[t, 8], cur2[t, 9] = c5, c6, c7, c8, c9
        else:
            for k in range(w2.shape[0]):
                total = F32(0.0)
                for n in range(hidden):
                    total += s1[t, n] * w2[k, n]
                cur2[t, k] = total
        for k in range(w2.shape[0]):
            cur2[t, k] += b2[k]


@njit(error_model="numpy", cache=True)
def _surrogate(x, code, slope):
    """dS/dU at x = U - thr for the surrogate of `code` (harness/network/surrogates.py's
    `kernel_code`): 0 snnTorch's atan with alpha = slope, 1 fast_sigmoid. Only the codes in
    `KERNEL_CODES` reach it (`surrogate_code` checks them at the kernel's entry: a raise
    here, in the hot loop, would keep LLVM from vectorising the backward pass)."""
    one = F32(1.0)
    if code == 0:
        kx = F32(math.pi / 2.0 * slope) * x
        return F32(slope / 2.0) / (one + kx * kx)
    q = slope * abs(x) + one
    return one / (q * q)


KERNEL_CODES = (0, 1)  # the codes `_surrogate` has a branch for


def surrogate_code(surrogate: str) -> int:
    """The kernel's code for `surrogate`; ValueError if `_surrogate` has no branch for it."""
    code = SURROGATE_CODE[surrogate]
    if code not in KERNEL_CODES:
        raise ValueError(
            f"surrogate {surrogate!r} has kernel code {code}, for which the CPU kernel's "
            f"_surrogate has no branch (it has {KERNEL_CODES}): add one"
        )
    return code


def _chunks(batch: int) -> int:
    return max(1, min(batch, numba.get_num_threads()))


# --- the hidden neurons that can fire -----------------------------------------------------
# With a static current I (direct input), a hidden neuron follows U[t] = I r_t until its
# first spike, r_t the membrane that a unit current gives without reset (r_t = 1 + beta
# r_(t-1) for Leaky). With beta, alpha >= 0 and thr > 0, a neuron whose I r_t stays below
# thr for all T steps never fires, and I below 0 never does. So before the hidden scan a
# sample's neurons split: those with I max_t r_t >= thr (1 - REACH_MARGIN) may fire, and the
# others are silent at every step. fc2's forward and dL/dW2 need only the first kind: the
# kernel lists them, scans them side by side in a compact (T, A) buffer and runs fc2 and
# dL/dW2 over A neurons instead of H. Gathering their currents and W2's columns costs about
# what the saving is at half the neurons (`harness bench --listing`), so a sample with more
# than COMPACT_SHARE of them takes the dense path. The hidden gradient W2^T G2 sg(U1 - thr)
# stays dense: the surrogate is not zero for silent neurons.
COMPACT_SHARE = 0.5
REACH_MARGIN = 1e-3  # float32 rounding moves U[t] by ~T 2^-24 of itself: far inside


def reach(steps: int, alpha: float | None, beta: float, threshold: float) -> float:
    """The least static current that may fire a neuron within `steps` steps, less a margin:
    thr (1 - REACH_MARGIN) / max_t r_t; +inf (all may fire: no listing) where the bound does
    not hold (beta or alpha below 0, thr not above 0)."""
    if beta < 0 or (alpha is not None and alpha < 0) or threshold <= 0:
        return math.inf
    j = u = top = 0.0  # in Python floats (float64), whatever type alpha and beta come in
    for _ in range(steps):
        j = 1.0 if alpha is None else float(alpha) * j + 1.0
        u = float(beta) * u + j
        top = max(top, u)
    return threshold * (1.0 - REACH_MARGIN) / top


@njit(error_model="numpy", cache=True)
def _may_fire(cur1, b, least, index):
    """Sample b's hidden neurons whose static current reaches `least`, in order, into index;
    their number (branch-free: which neurons they are is unpredictable)."""
    count = 0
    for n in range(cur1.shape[2]):
        index[count] = n
        count += cur1[0, b, n] >= least
    return count


@njit(error_model="numpy", cache=True)
def _gather(cur1, b, w2, index, count, cur_c, w2_c):
    """The listed neurons' currents into cur_c (A,) and W2's columns into w2_c (K, A)."""
    for a in range(count):
        cur_c[a] = cur1[0, b, index[a]]
    for k in range(w2.shape[0]):
        row, out = w2[k], w2_c[k]
        for a in range(count):
            out[a] = row[index[a]]


@njit(error_model="numpy", cache=True)
def _scatter_add(gw2, part, index, count):
    """gw2[:, index[a]] += part[:, a] for the listed neurons (part (K, A))."""
    for k in range(gw2.shape[0]):
        row, add = gw2[k], part[k]
        for a in range(count):
            row[index[a]] += add[a]


@njit(error_model="numpy", cache=True)
def _compact(flat, rows, count):
    """A C-contiguous (rows, count) view of the front of the flat buffer `flat`."""
    return flat[: rows * count].reshape(rows, count)


@njit(parallel=True, error_model="numpy", cache=True)
def _forward(cur1, w2, b2, num_steps, alpha, beta, thr, least, share, chunks, spikes2, mem2,
             activity, counts, tallies):  # fmt: skip
    """The forward pass, a range of samples a thread. With a static current and no activity
    to count, a sample whose neurons that may fire (current >= `least`) are at most `share`
    of them runs its hidden layer and fc2 over those only."""
    batch, hidden = cur1.shape[1], cur1.shape[2]
    outputs = w2.shape[0]
    listing = cur1.shape[0] == 1 and not activity and least < np.inf
    for c in prange(chunks):
        u = np.empty(hidden, F32)
        j1, j2 = _synapse_state(hidden, alpha), _synapse_state(outputs, alpha)
        u1 = np.empty((num_steps if activity else 0, hidden), F32)
        s1_flat = np.empty(num_steps * hidden, F32)
        s1 = s1_flat.reshape(num_steps, hidden)
        u2 = np.empty((num_steps, outputs), F32)
        s2 = np.empty((num_steps, outputs), F32)
        cur2 = np.empty((num_steps, outputs), F32)
        scratch_h = np.empty(hidden if activity else 0, F32)
        scratch_k, output_counts = np.empty(outputs, F32), np.zeros(outputs)
        index = np.empty(hidden if listing else 0, np.int64)
        cur_c = np.empty(hidden if listing else 0, F32)
        w2_c = np.empty(outputs * hidden if listing else 0, F32)
        for b in range(c * batch // chunks, (c + 1) * batch // chunks):
            count = _may_fire(cur1, b, least, index) if listing else hidden
            if listing and count <= share * hidden:
                w2_a = _compact(w2_c, outputs, count)
                _gather(cur1, b, w2, index, count, cur_c, w2_a)
                s1_a = _compact(s1_flat, num_steps, count)
                cur_a = cur_c[:count].reshape(1, 1, count)
                _hidden_scan(cur_a, 0, alpha, beta, thr, j1, u, u1, s1_a)
                _fc2_steps(s1_a, w2_a, b2, cur2)
            else:
                _hidden_scan(cur1, b, alpha, beta, thr, j1, u, u1, s1)
                _fc2_steps(s1, w2, b2, cur2)
            _output_scan(cur2, alpha, beta, thr, j2, u2, s2)
            mem2[:, b, :] = u2
            spikes2[:, b, :] = s2
            if activity:
                spike_counts(s1, counts[c], scratch_h)
                spike_counts(s2, output_counts, scratch_k)
                tallies[c, 0] += membrane_changes(u1)
                tallies[c, 2] += membrane_changes(u2)
        tallies[c, 1] = np.int64(output_counts.sum())


@njit(error_model="numpy", cache=True)
def _output_grads(mem2, grad_s2, grad_u2, alpha, beta, thr, code, slope, lo, hi, g2, gb2):
    """The gradient of the output layer's input current, G2[t] = G_U[t] (Leaky) or G_J[t]
    (Synaptic), backwards in time, for columns lo:hi of the (T, B * K) arrays (a range of
    samples, their neurons side by side: independent, so the loop over them vectorises);
    its sums over steps and samples (dL/db2) added to gb2 (K,) in float64. grad_s2 or
    grad_u2 None: the loss reads only the membranes or only the spikes."""
    steps, outputs = g2.shape[0], gb2.shape[0]
    zero = F32(0.0)
    g = np.zeros(hi - lo, F32)
    gj = np.zeros(hi - lo if alpha is not None else 0, F32)
    total = np.zeros(hi - lo, np.float64)
    for t in range(steps - 1, -1, -1):
        m, out = mem2[t, lo:hi], g2[t, lo:hi]
        for i in range(hi - lo):
            v = zero  # (0 + x is x: as if the missing gradient were zeros)
            if grad_s2 is not None:
                v = grad_s2[t, lo + i] * _surrogate(m[i] - thr, code, slope)
            if grad_u2 is not None:
                v = v + grad_u2[t, lo + i]
            v = v + beta * g[i]
            g[i] = v
            if alpha is not None:
                v = v + alpha * gj[i]
                gj[i] = v
            out[i] = v
            total[i] += v
    for i in range(hi - lo):
        gb2[(lo + i) % outputs] += total[i]


@njit(fastmath={"reassoc", "nsz", "arcp", "contract"}, error_model="numpy", cache=True)
def _hidden_grads(cur1, b, w2, g2, cs, alpha, beta, thr, code, slope, j, u, s1, total):
    """A static current (cur1 (1, B, H)): sample b's dL/dcur1 = sum_t c_t (W2^T G2[t, b])
    sg(U1[t] - thr) into `total` (H,), forwards in time, the hidden scan recomputed on the
    way (as `_hidden_scan`, bit for bit, its state in u and j); its spikes into s1 (T, H)
    for dL/dW2. (W2^T G2 as one matrix product beforehand would be faster in cache, but its
    (T, B, H) result costs more to write and read back than the ten products per neuron and
    step cost here.)"""
    zero, one = F32(0.0), F32(1.0)
    hidden, outputs = cur1.shape[2], w2.shape[0]
    for n in range(hidden):
        u[n] = zero
        total[n] = zero
        if j is not None:
            j[n] = zero
    for t in range(s1.shape[0]):
        c = cs[t]
        if outputs == 10:
            a0, a1, a2, a3, a4 = g2[t, b, 0], g2[t, b, 1], g2[t, b, 2], g2[t, b, 3], g2[t, b, 4]
            a5, a6, a7, a8, a9 = g2[t, b, 5], g2[t, b, 6], g2[t, b, 7], g2[t, b, 8], g2[t, b, 9]
            for n in range(hidden):
                i = cur1[0, b, n]
                if j is not None:
                    i = _synapse(j[n], i, alpha)
                    j[n] = i
                before = u[n]
                v = _lif(before, i, one if before > thr else zero, beta, thr)
                fired = one if v > thr else zero
                u[n] = v
                s1[t, n] = fired
                d = (
                    a0 * w2[0, n] + a1 * w2[1, n] + a2 * w2[2, n] + a3 * w2[3, n]
                    + a4 * w2[4, n] + a5 * w2[5, n] + a6 * w2[6, n] + a7 * w2[7, n]
                    + a8 * w2[8, n] + a9 * w2[9, n]
                )  # fmt: skip
                total[n] += d * (c * _surrogate(v - thr, code, slope))
        else:
            for n in range(hidden):
                i = cur1[0, b, n]
                if j is not None:
                    i = _synapse(j[n], i, alpha)
                    j[n] = i
                before = u[n]
                v = _lif(before, i, one if before > thr else zero, beta, thr)
                fired = one if v > thr else zero
                u[n] = v
                s1[t, n] = fired
                d = zero
                for k in range(outputs):
                    d += g2[t, b, k] * w2[k, n]
                total[n] += d * (c * _surrogate(v - thr, code, slope))


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _synapse_grads(g, gj, alpha):
    """g = G_U[t] of one sample's neurons becomes G_J[t] = G_U[t] + alpha G_J[t+1], the
    running G_J in gj."""
    for n in range(g.shape[0]):
        v = g[n] + alpha * gj[n]
        gj[n] = v
        g[n] = v


@njit(fastmath={"reassoc", "nsz", "arcp", "contract"}, error_model="numpy", cache=True)
def _hidden_step_grads(w2, g2, b, alpha, beta, thr, code, slope, u1, gu, gj, grad):
    """A current per step (spike input): sample b's dL/dcur1[t] = G_J[t] (G_U[t] for Leaky)
    into grad (T, B, H), walking backwards in time over its recomputed membranes u1 (T, H):
    G_U[t] = (W2^T G2[t]) sg(U1[t] - thr) + beta G_U[t+1], G_J[t] = G_U[t] + alpha G_J[t+1];
    their running values in gu and gj (H,). (G_J in a function of its own: with gj in the
    same loop, LLVM leaves the loop scalar, 4x slower.)"""
    zero = F32(0.0)
    hidden, outputs = u1.shape[1], w2.shape[0]
    for n in range(hidden):
        gu[n] = zero
        if gj is not None:
            gj[n] = zero
    for t in range(u1.shape[0] - 1, -1, -1):
        if outputs == 10:
            a0, a1, a2, a3, a4 = g2[t, b, 0], g2[t, b, 1], g2[t, b, 2], g2[t, b, 3], g2[t, b, 4]
            a5, a6, a7, a8, a9 = g2[t, b, 5], g2[t, b, 6], g2[t, b, 7], g2[t, b, 8], g2[t, b, 9]
            for n in range(hidden):
                d = (
                    a0 * w2[0, n] + a1 * w2[1, n] + a2 * w2[2, n] + a3 * w2[3, n]
                    + a4 * w2[4, n] + a5 * w2[5, n] + a6 * w2[6, n] + a7 * w2[7, n]
                    + a8 * w2[8, n] + a9 * w2[9, n]
                )  # fmt: skip
                v = d * _surrogate(u1[t, n] - thr, code, slope) + beta * gu[n]
                gu[n] = v
                grad[t, b, n] = v
        else:
            for n in range(hidden):
                d = zero
                for k in range(outputs):
                    d += g2[t, b, k] * w2[k, n]
                v = d * _surrogate(u1[t, n] - thr, code, slope) + beta * gu[n]
                gu[n] = v
                grad[t, b, n] = v
        if gj is not None:
            _synapse_grads(grad[t, b], gj, alpha)


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _weight_grads(g2, b, s1, gw2):
    """gw2 += G2[:, b]^T S1 for sample b, (K, T) x (T, H): five steps of S1 a pass, each
    pass updating every row of gw2 while those steps are in L1."""
    steps, hidden = s1.shape
    t = 0
    while t + 5 <= steps:
        for k in range(gw2.shape[0]):
            a0, a1, a2 = g2[t, b, k], g2[t + 1, b, k], g2[t + 2, b, k]
            a3, a4 = g2[t + 3, b, k], g2[t + 4, b, k]
            for n in range(hidden):
                gw2[k, n] += (
                    a0 * s1[t, n] + a1 * s1[t + 1, n] + a2 * s1[t + 2, n]
                    + a3 * s1[t + 3, n] + a4 * s1[t + 4, n]
                )  # fmt: skip
        t += 5
    while t < steps:
        for k in range(gw2.shape[0]):
            a = g2[t, b, k]
            for n in range(hidden):
                gw2[k, n] += a * s1[t, n]
        t += 1


@njit(error_model="numpy", cache=True)
def _step_weights(steps, alpha, beta):
    """c_t, the weight of step t's direct gradient q_t = (W2^T G2[t]) sg(U1[t] - thr) in
    dL/dcur1 = sum_t G_J[t] for a static current: with G_U[t] = q_t + beta G_U[t+1] and
    G_J[t] = G_U[t] + alpha G_J[t+1], sum_t G_J[t] = sum_t c_t q_t where
    c_t = e_t + beta c_(t-1) and e_t = 1 + alpha e_(t-1) (Leaky: e_t = 1)."""
    cs = np.empty(steps, F32)
    c, e = F32(0.0), F32(1.0)
    for t in range(steps):
        if alpha is not None:
            e = F32(1.0) + alpha * e if t else F32(1.0)
        c = e + beta * c
        cs[t] = c
    return cs


@njit(parallel=True, error_model="numpy", cache=True)
def _backward(cur1, w2, mem2, grad_s2, grad_u2, alpha, beta, thr, code, slope, least, share,
              chunks, g2, g2_flat, grad_cur1, grad_w2, grad_b2):  # fmt: skip
    """The backward pass, a range of samples a thread: the output layer's G2 for them
    (`_output_grads`), then a sample at a time the hidden layer's dL/dcur1 (`_hidden_grads`
    for a static current (1, B, H), in closed form; `_hidden_step_grads` for one a step
    (T, B, H), after recomputing the sample's membranes) and dL/dW2 from its hidden spikes
    (`_weight_grads`; over the neurons that may fire only, rescanned side by side, where
    they are at most `share` of them, as in `_forward`). The threads' dL/dW2 and dL/db2 are
    added up at the end. mem2, grad_s2 and grad_u2 come as (T, B * K), and g2 (T, B, K) as
    g2_flat too."""
    batch, hidden = cur1.shape[1], cur1.shape[2]
    steps, outputs = g2.shape[0], g2.shape[2]
    per_step = cur1.shape[0] > 1
    listing = not per_step and least < np.inf
    cs = _step_weights(steps, alpha, beta)
    gw2_parts = np.empty((chunks, outputs, hidden), F32)
    gb2_parts = np.zeros((chunks, outputs), np.float64)
    for ch in prange(chunks):
        first, last = ch * batch // chunks, (ch + 1) * batch // chunks
        _output_grads(
            mem2, grad_s2, grad_u2, alpha, beta, thr, code, slope, first * outputs,
            last * outputs, g2_flat, gb2_parts[ch],
        )  # fmt: skip
        j, gj = _synapse_state(hidden, alpha), _synapse_state(hidden, alpha)
        u = np.empty(hidden, F32)
        gu = np.empty(hidden, F32)
        u1 = np.empty((steps if per_step else 0, hidden), F32)
        s1_flat = np.empty(steps * hidden, F32)
        s1 = s1_flat.reshape(steps, hidden)
        index = np.empty(hidden if listing else 0, np.int64)
        cur_c = np.empty(hidden if listing else 0, F32)
        part = np.empty(outputs * hidden if listing else 0, F32)
        gw2 = gw2_parts[ch]
        gw2[:] = 0
        for b in range(first, last):
            if per_step:
                _hidden_scan(cur1, b, alpha, beta, thr, j, u, u1, s1)
                _hidden_step_grads(w2, g2, b, alpha, beta, thr, code, slope, u1, gu, gj, grad_cur1)
            else:
                _hidden_grads(
                    cur1, b, w2, g2, cs, alpha, beta, thr, code, slope, j, u, s1, grad_cur1[0, b],
                )  # fmt: skip
            count = _may_fire(cur1, b, least, index) if listing else hidden
            if listing and count <= share * hidden:
                for a in range(count):
                    cur_c[a] = cur1[0, b, index[a]]
                s1_a = _compact(s1_flat, steps, count)
                _hidden_scan(
                    cur_c[:count].reshape(1, 1, count), 0, alpha, beta, thr, j, u, u1, s1_a
                )
                part_a = _compact(part, outputs, count)
                part_a[:] = 0
                _weight_grads(g2, b, s1_a, part_a)
                _scatter_add(gw2, part_a, index, count)
            else:
                _weight_grads(g2, b, s1, gw2)
    grad_w2[:] = gw2_parts[0]
    for ch in range(1, chunks):
        grad_w2 += gw2_parts[ch]
    for k in range(outputs):
        grad_b2[k] = F32(gb2_parts[:, k].sum())


class _FusedLIFNet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cur1, w2, b2, num_steps, alpha, beta, thr, surrogate, slope, activity):
        ctx.static = cur1.dim() == 2  # (B, H): the same current at every step
        cur1 = cur1.detach().reshape(-1, *cur1.shape[-2:]).contiguous()  # (1 or T, B, H)
        (batch, hidden), outputs = cur1.shape[1:], w2.shape[0]
        chunks = _chunks(batch)
        spikes = cur1.new_empty((num_steps, batch, outputs))
        membranes = cur1.new_empty((num_steps, batch, outputs))
        # Per chunk (thread): each hidden neuron's spikes (float64: exact), and the hidden
        # layer's membrane updates, the output layer's spikes and its membrane updates.
        counts = torch.zeros((chunks, hidden if activity else 0), dtype=torch.float64)
        tallies = torch.zeros((chunks, 3), dtype=torch.int64)
        w2, b2 = w2.detach().contiguous(), b2.detach()
        alpha = None if alpha is None else F32(alpha)  # None: Leaky
        least = F32(reach(num_steps, alpha, beta, thr))
        _forward(
            cur1.numpy(), w2.numpy(), b2.numpy(), num_steps, alpha, F32(beta), F32(thr), least,
            COMPACT_SHARE, chunks, spikes.numpy(), membranes.numpy(), activity,
            counts.numpy(), tallies.numpy(),
        )  # fmt: skip
        ctx.save_for_backward(cur1, w2, membranes)
        ctx.settings = (num_steps, alpha, beta, thr, surrogate, slope)
        counts, tallies = counts.sum(0).to(torch.int64), tallies.sum(0)
        ctx.mark_non_differentiable(counts, tallies)
        ctx.set_materialize_grads(False)
        return spikes, membranes, counts, tallies

    @staticmethod
    def backward(ctx, grad_spikes, grad_membranes, *_):
        cur1, w2, membranes = ctx.saved_tensors
        num_steps, alpha, beta, thr, surrogate, slope = ctx.settings
        batch, outputs = cur1.shape[1], w2.shape[0]
        flat = (num_steps, batch * outputs)  # (T, B * K) views
        g2 = cur1.new_empty((num_steps, batch, outputs))
        grad_cur1 = torch.empty_like(cur1)
        grad_w2, grad_b2 = torch.empty_like(w2), w2.new_empty(outputs)
        grad_spikes, grad_membranes = (
            None if grad is None else grad.contiguous().reshape(flat).numpy()
            for grad in (grad_spikes, grad_membranes)
        )  # None: the loss does not read them
        _backward(
            cur1.numpy(), w2.numpy(), membranes.reshape(flat).numpy(), grad_spikes,
            grad_membranes, alpha, F32(beta), F32(thr), surrogate_code(surrogate),
            F32(slope), F32(reach(num_steps, alpha, beta, thr)), COMPACT_SHARE, _chunks(batch),
            g2.numpy(), g2.reshape(flat).numpy(),
            grad_cur1.numpy(), grad_w2.numpy(), grad_b2.numpy(),
        )  # fmt: skip
        if ctx.static:
            grad_cur1 = grad_cur1[0]
        return grad_cur1, grad_w2, grad_b2, None, None, None, None, None, None, None


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
    alpha: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden layer, fc2 and output layer on the CPU, from fc1's output: (B, H), the same
    current at every step (direct input), or (num_steps, B, H), one a step (spike input).
    Leaky neurons, or Synaptic ones with `alpha`.

    Returns the output spikes and membranes (T, B, K), and, if `activity`, the layers'
    activity over the batch (int64): each hidden neuron's spike count (H,), and (3,) the
    hidden layer's membrane updates after the first step (how many U[t] != U[t-1], t >= 1),
    the output layer's spikes and its membrane updates. Without it (training) nothing is
    counted: an empty (0,) tensor and zeros.
    """
    if cur1.device.type != "cpu" or cur1.dtype != torch.float32:
        raise ValueError("fused_lif_net runs on float32 CPU tensors only")
    surrogate_code(surrogate)  # before any work: the backward pass needs its branch
    return _FusedLIFNet.apply(
        cur1, fc2_weight, fc2_bias, num_steps, alpha, beta, threshold, surrogate, slope, activity
    )
