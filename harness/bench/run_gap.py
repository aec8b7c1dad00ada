"""A whole training run against the bench's bare iterations: where a run's time goes.

`train()` does more than its iterations: it builds the model and optimizer, draws and
encodes each batch, copies the losses to the host, evaluates a test batch every `eval_every`
iterations, and evaluates the whole test split at the end of each epoch. A timer attached as
the run's only callback stamps each event, which splits the run into its windows of
iterations, its test batches and its final evaluation; the bare iteration (the bench's
figure) is timed in the same sitting, on the same settings.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from harness.bench.timing import time_iterations
from harness.config import make_run_config
from harness.data import loading
from harness.training.loop import Event, train


def run_parts(stamps: list[tuple[str, float]], start: float, end: float) -> dict[str, float]:
    """A run's seconds by part, from its events' (kind, time) stamps. Train events of a
    window are emitted together after it (one host copy of its losses), so a window runs from
    the previous event to its first train event; an eval event follows its test batch, the
    epoch event the whole-split evaluation."""
    windows, test_batches, evaluation = [], 0.0, 0.0
    previous, kind_before = start, None
    for kind, stamp in stamps:
        if kind == "train" and kind_before != "train":
            windows.append(stamp - previous)
        elif kind == "eval":
            test_batches += stamp - previous
        elif kind == "epoch":
            evaluation += stamp - previous
        previous, kind_before = stamp, kind
    return {
        "run_seconds": end - start,
        "windows": windows,
        "test_batch_seconds": test_batches,
        "evaluation_seconds": evaluation,
    }


def run_gap(
    data_dir: Path | None,
    device: torch.device,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    warmup: int,
    repeats: int = 3,
    settings: dict | None = None,
) -> dict:
    """Median figures over `repeats` runs of the tutorial-5 settings (fused, one epoch of the
    whole training split, then the whole test split; `settings` change them), each beside a
    timing of the bare iteration on `batches`."""
    config = make_run_config({**(settings or {}), "device": str(device)})
    dataset = loading.load(
        data_dir, device, config.train_subset, config.test_subset, config.subset_sampling,
        config.seed, config.dataset,
    )  # fmt: skip
    small = loading.Dataset(
        loading.subset(dataset.train, 10 * config.batch_size, "first", 0),
        loading.subset(dataset.test, 1000, "first", 0), "warm-up",
    )  # fmt: skip
    train(config, small)  # kernels loaded, caches warm: the first run of a process pays that
    figures: list[dict] = []
    bare: list[float] = []
    for _ in range(repeats):
        bare.append(time_iterations({"fused": config}, batches, device, warmup)["fused"])
        stamps: list[tuple[str, float]] = []

        def stamp(event: Event, stamps: list = stamps) -> None:
            stamps.append((event.kind, time.perf_counter()))

        start = time.perf_counter()
        result = train(config, dataset, [stamp])
        figures.append(run_parts(stamps, start, time.perf_counter()))
        iterations = int(result.metrics["iterations"])
    bare_ms = statistics.median(bare)
    window = config.eval_every
    in_run_ms = statistics.median(
        1000 * w / window for f in figures for w in f["windows"][:-1]
    )  # windows of eval_every iterations; the last (the epoch's remainder) is shorter
    run = statistics.median(f["run_seconds"] for f in figures)
    return {
        "settings": {"backend": config.backend, "decoding": config.decoding},
        "train_images": len(dataset.train),
        "test_images": len(dataset.test),
        "iterations": iterations,
        "repeats": repeats,
        "run_seconds": run,
        "bare_ms_per_iteration": bare_ms,
        "bare_seconds": bare_ms * iterations / 1000,
        "in_run_ms_per_iteration": in_run_ms,
        "first_window_ms_per_iteration": statistics.median(
            1000 * f["windows"][0] / window for f in figures
        ),
        "eval_every": config.eval_every,
        "test_batches": iterations // config.eval_every,
        "test_batch_seconds": statistics.median(f["test_batch_seconds"] for f in figures),
        "evaluation_seconds": statistics.median(f["evaluation_seconds"] for f in figures),
        "gap": run / (bare_ms * iterations / 1000),
    }


def format_run_gap(gap: dict) -> list[str]:
    """The run against its bare iterations, a line a part."""
    n = gap["iterations"]
    rest = (
        gap["run_seconds"] - gap["bare_seconds"] - gap["test_batch_seconds"]
        - gap["evaluation_seconds"]
    )  # fmt: skip
    parts = [
        ("run (train())", gap["run_seconds"]),
        (f"{n} bare iterations ({gap['bare_ms_per_iteration']:.2f} ms each)", gap["bare_seconds"]),
        (f"test batches ({gap['test_batches']}, every {gap['eval_every']} iterations)",
         gap["test_batch_seconds"]),
        (f"evaluation of the {gap['test_images']:,} test images", gap["evaluation_seconds"]),
        (f"the rest (in the run an iteration took {gap['in_run_ms_per_iteration']:.2f} ms, "
         f"the first {gap['eval_every']} {gap['first_window_ms_per_iteration']:.2f} ms)", rest),
    ]  # fmt: skip
    return [
        f"a whole run against its bare iterations (tutorial-5, {gap['settings']['backend']}, "
        f"{gap['train_images']:,} images: {n} iterations, then the test images; median of "
        f"{gap['repeats']}):",
        *(f"  {label:<72}{seconds:>7.2f} s" for label, seconds in parts),
        f"  run / bare iterations: {gap['gap']:.2f}x",
    ]
