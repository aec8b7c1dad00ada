"""The LIF kernel's listing of the hidden neurons that may fire: does it pay in training?

With a static current, the kernel runs fc2 and dL/dW2 over the neurons whose current can
reach the threshold within the steps, where they are at most `lif_scan.COMPACT_SHARE` of a
sample's (`lif_scan.reach`). This times tutorial 5's training iteration with the listing and
without it (COMPACT_SHARE 0: every sample takes the dense path, as before the listing; each
neuron's test still runs, so "dense" carries its cost, one comparison a neuron), on the same
model and batches, interleaved in rounds, for rate and latency decoding, from the initial
weights and after some training (which neurons may fire changes as the network learns).
"""

from __future__ import annotations

import torch

from harness.bench.timing import ROUND, Step, time_steps, training_step
from harness.config import make_run_config
from harness.network.kernels import lif_scan
from harness.network.model import build_model

DECODINGS = ("rate", "latency")
TRAINED = (0, 200)  # iterations trained before timing: the initial weights, then some learning
ITERATIONS = 60  # timed iterations of each path
BATCHES = max(TRAINED) + ITERATIONS  # the batches listing_against_dense needs by default


def may_fire_share(model: torch.nn.Module, images: torch.Tensor, config) -> float:
    """The share of (sample, hidden neuron) pairs of a batch whose current may fire."""
    least = lif_scan.reach(config.num_steps, None, config.beta, config.threshold)
    with torch.no_grad():
        return float((model.fc1(images.flatten(1)) >= least).float().mean())


def _with_share(step: Step, share: float) -> Step:
    """`step` run with the kernel's COMPACT_SHARE set to `share`."""

    def run(images: torch.Tensor, labels: torch.Tensor) -> None:
        lif_scan.COMPACT_SHARE = share
        step(images, labels)

    return run


def listing_against_dense(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    trained: tuple[int, ...] = TRAINED,
    iterations: int = ITERATIONS,
    round_size: int = ROUND,
) -> list[dict]:
    """For each decoding and number of iterations trained first: the median ms of a training
    iteration with the listing and without, one model trained by both in rounds of
    `round_size` on the next `iterations` batches (`batches` must hold max(trained) +
    iterations)."""
    shares = {"listed": lif_scan.COMPACT_SHARE, "dense": 0.0}
    cpu = torch.device("cpu")
    rows = []
    try:
        for decoding in DECODINGS:
            for done in trained:
                config = make_run_config({"device": "cpu", "decoding": decoding})
                torch.manual_seed(config.seed)
                model = build_model(config)
                step = training_step(model, config, cpu)
                for images, labels in batches[:done]:
                    step(images, labels)
                share = may_fire_share(model, batches[done][0], config)
                steps = {name: _with_share(step, value) for name, value in shares.items()}
                row = {"decoding": decoding, "trained": done, "may_fire": share}
                row.update(time_steps(steps, batches[done : done + iterations], cpu, 0, round_size))
                row["ratio"] = row["listed"] / row["dense"]
                rows.append(row)
    finally:
        lif_scan.COMPACT_SHARE = shares["listed"]
    return rows


def format_listing(rows: list[dict]) -> list[str]:
    """The rows as a table: ms an iteration with and without the listing, and their ratio."""
    lines = [
        "tutorial-5 training iteration, the kernel listing the hidden neurons that may fire "
        "against every sample dense (same model and batches, interleaved)",
        f"{'decoding':<10}{'trained':>8}{'may fire':>10}{'dense ms':>10}{'listed ms':>11}"
        f"{'ratio':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['decoding']:<10}{r['trained']:>8}{r['may_fire']:>10.2f}{r['dense']:>10.2f}"
            f"{r['listed']:>11.2f}{r['ratio']:>7.2f}"
        )
    return lines
