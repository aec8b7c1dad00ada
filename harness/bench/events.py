"""An event-driven hidden layer: would fc2 and dL/dW2 pay in proportion to the spikes?

In the LIF kernel fc2's forward, cur2[t] = W2 S1[t] + b2, and the weight gradient,
dL/dW2 += G2[t] S1[t]^T, run over all hidden neurons with a multiply by 0 or 1. Event-driven,
a spike adds a column of W2 to cur2[t] (a row of W2 stored transposed), and G2[t] to the row
of dL/dW2 (transposed) of each neuron that fired: work in proportion to the spikes, plus
finding them (each step's spiking neurons as a list of indices, eight neurons a test).

This times both ways on one thread over a batch of samples, as each thread of the kernel
runs its samples, for hidden spikes drawn at a given rate (independently: real spikes are
more clustered, which helps the eight-at-a-time test a little), interleaved, medians.
The dense functions are the kernel's own (`lif_scan`); the event-driven ones live here, as
the measured alternative. Tutorial 5 only (10 outputs).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from harness.bench.timing import interleaved_ms
from harness.network.kernels import lif_scan

RATES = (0.02, 0.05, 0.1, 0.2, 0.3)  # tutorial 5 fires at about 0.2 (rate), 0.045 (latency)
OUTPUTS = 10


@njit(error_model="numpy", cache=True)
def spike_lists(s1, index, count):
    """Each step's spiking neurons: their indices in index[t, :count[t]], in order. Eight
    neurons a test (four int64 words of two float32 each; a silent group costs one test),
    then a branch-free pass over the group's eight."""
    hidden = s1.shape[1]
    words = hidden // 8 * 4
    for t in range(s1.shape[0]):
        row, out = s1[t], index[t]
        bits = row[: 2 * words].view(np.int64)
        c = 0
        for m in range(0, words, 4):
            if (bits[m] | bits[m + 1] | bits[m + 2] | bits[m + 3]) == 0:
                continue
            for n in range(2 * m, 2 * m + 8):
                out[c] = n
                c += row[n] != 0
        for n in range(2 * words, hidden):
            out[c] = n
            c += row[n] != 0
        count[t] = c


@njit(fastmath={"reassoc", "nsz", "arcp", "contract"}, error_model="numpy", cache=True)
def fc2_events(index, count, w2t, b2, cur2):
    """cur2[t] = b2 + the sum of W2's columns (rows of w2t (H, 10)) of step t's spikes."""
    for t in range(count.shape[0]):
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = np.float32(0.0)
        spikes = index[t]
        for i in range(count[t]):
            r = w2t[spikes[i]]
            c0 += r[0]
            c1 += r[1]
            c2 += r[2]
            c3 += r[3]
            c4 += r[4]
            c5 += r[5]
            c6 += r[6]
            c7 += r[7]
            c8 += r[8]
            c9 += r[9]
        cur2[t, 0], cur2[t, 1], cur2[t, 2] = c0 + b2[0], c1 + b2[1], c2 + b2[2]
        cur2[t, 3], cur2[t, 4], cur2[t, 5] = c3 + b2[3], c4 + b2[4], c5 + b2[5]
        cur2[t, 6], cur2[t, 7], cur2[t, 8], cur2[t, 9] = (
            c6 + b2[6],
            c7 + b2[7],
            c8 + b2[8],
            c9 + b2[9],
        )


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def weight_grads_events(g2, b, index, count, gw2t):
    """gw2t (H, 10) += G2[t, b] on the row of every neuron that fired at step t."""
    for t in range(count.shape[0]):
        a0, a1, a2, a3, a4 = g2[t, b, 0], g2[t, b, 1], g2[t, b, 2], g2[t, b, 3], g2[t, b, 4]
        a5, a6, a7, a8, a9 = g2[t, b, 5], g2[t, b, 6], g2[t, b, 7], g2[t, b, 8], g2[t, b, 9]
        spikes = index[t]
        for i in range(count[t]):
            r = gw2t[spikes[i]]
            r[0] += a0
            r[1] += a1
            r[2] += a2
            r[3] += a3
            r[4] += a4
            r[5] += a5
            r[6] += a6
            r[7] += a7
            r[8] += a8
            r[9] += a9


def events_against_dense(
    rates: tuple[float, ...] = RATES,
    samples: int = 128,
    steps: int = 25,
    hidden: int = 1000,
    repeats: int = 5,
    calls: int = 5,
) -> list[dict]:
    """For each firing rate: the median ms, over `samples` samples on one thread, of fc2's
    forward and of dL/dW2, dense (the kernel's) and event-driven (finding the spikes
    included), timed in alternating order."""
    rng = np.random.default_rng(0)
    w2 = (rng.standard_normal((OUTPUTS, hidden)) * 0.03).astype(np.float32)
    w2t = np.ascontiguousarray(w2.T)
    b2 = np.zeros(OUTPUTS, np.float32)
    g2 = (rng.standard_normal((steps, samples, OUTPUTS)) * 0.01).astype(np.float32)
    cur2 = np.empty((steps, OUTPUTS), np.float32)
    gw2, gw2t = np.zeros((OUTPUTS, hidden), np.float32), np.zeros((hidden, OUTPUTS), np.float32)
    index, count = np.empty((steps, hidden), np.int32), np.empty(steps, np.int64)
    rows = []
    for rate in rates:
        spikes = (rng.random((samples, steps, hidden)) < rate).astype(np.float32)

        def fc2_dense(spikes=spikes) -> None:
            for b in range(samples):
                lif_scan._fc2_steps(spikes[b], w2, b2, cur2)

        def fc2_event(spikes=spikes) -> None:
            for b in range(samples):
                spike_lists(spikes[b], index, count)
                fc2_events(index, count, w2t, b2, cur2)

        def dw2_dense(spikes=spikes) -> None:
            for b in range(samples):
                lif_scan._weight_grads(g2, b, spikes[b], gw2)

        def dw2_event(spikes=spikes) -> None:
            for b in range(samples):
                spike_lists(spikes[b], index, count)
                weight_grads_events(g2, b, index, count, gw2t)

        cases = {"fc2_dense": fc2_dense, "fc2_events": fc2_event,
                 "dw2_dense": dw2_dense, "dw2_events": dw2_event}  # fmt: skip
        row = {"rate": rate, **interleaved_ms(cases, repeats, calls)}
        row["fc2_ratio"] = row["fc2_events"] / row["fc2_dense"]
        row["dw2_ratio"] = row["dw2_events"] / row["dw2_dense"]
        rows.append(row)
    return rows


def format_events(rows: list[dict], samples: int = 128) -> list[str]:
    """The rows as a table: dense and event-driven ms, and events over dense."""
    lines = [
        f"fc2 forward and dL/dW2 over {samples} samples (25 steps, 1000 hidden, 10 outputs) "
        "on one thread: dense (the kernel's) against event-driven (finding the spikes included)",
        f"{'firing':>7}{'fc2 dense':>11}{'events':>9}{'ratio':>7}"
        f"{'dW2 dense':>11}{'events':>9}{'ratio':>7}   (ms; ratio: events / dense)",
    ]
    for r in rows:
        lines.append(
            f"{r['rate']:>7.3f}{r['fc2_dense']:>11.2f}{r['fc2_events']:>9.2f}{r['fc2_ratio']:>7.2f}"
            f"{r['dw2_dense']:>11.2f}{r['dw2_events']:>9.2f}{r['dw2_ratio']:>7.2f}"
        )
    return lines
