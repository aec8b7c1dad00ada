"""Speed: the fused backend against the snnTorch reference, side by side in one process.

Both backends train the same configuration from the same initial weights on the same MNIST
batches, interleaved in rounds (`ROUND` iterations of one, then as many of the other, on the
same batches, alternating which goes first), after a warm-up; the figure of each is the
median time of a full training iteration (forward, loss, backward, Adam step). Peak memory
is measured per backend in a fresh process: on CUDA the allocator's peak, on the CPU the
growth of the resident set's high-water mark over one training step (Linux `VmHWM`, reset
before the step).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config import RunConfig, make_run_config
from harness.data import loading
from harness.network import readout
from harness.network.backends import BACKENDS
from harness.network.model import (
    build_model,
)
from harness.training.loop import encoder, make_optimizer, resolve_device

CASES = (
    {"decoding": "rate"},
    {"decoding": "latency"},
    {"decoding": "rate", "num_steps": 100},
    {"neuron": "synaptic"},
    {"encoding": "rate"},
    {"encoding": "latency"},
)
SCALING = (
    {"num_steps": 25},
    {"num_steps": 50},
    {"num_steps": 100},
    {"hidden": 500},
    {"hidden": 2000},
)


@dataclass(frozen=True)
class CaseResult:
    settings: dict
    ms_per_iteration: dict[str, float]
    ratio: float
    epoch_seconds: dict[str, float]
    peak_memory_mb: dict[str, float]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


Step = Callable[[torch.Tensor, torch.Tensor], None]


def training_step(model: nn.Module, config: RunConfig, device: torch.device) -> Step:
    """A closure that runs one training iteration of `model` (`config`'s loss) on a batch,
    encoded as `config` says (each closure draws its spikes from its own generator, seeded
    as a run's: two backends see the same spikes)."""
    optimizer = make_optimizer(model, config, device)
    encode = encoder(config, "train", device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        out = model(encode(images))
        loss = readout.loss(config.decoding, out.spikes, out.membranes, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def trainer(config: RunConfig, device: torch.device) -> Step:
    """A closure that runs one training iteration of `config` on a batch."""
    torch.manual_seed(config.seed)
    return training_step(build_model(config).to(device), config, device)


# Iterations a backend runs in a row before the next takes over. A training run's iteration
# follows its own, so the caches hold its weights and Adam's state; one that follows
# snnTorch's (hundreds of MiB touched) finds them cold, so interleaving every iteration would
# time the fused backend with cold caches. In rounds of 5 only the first fused iteration of
# every other round follows snnTorch's (the order alternates), so the median is the
# iteration as training runs it, while the machine's load, which drifts over seconds, still
# reaches every backend alike.
ROUND = 5


def time_iterations(
    configs: dict[str, RunConfig],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    round_size: int = ROUND,
) -> dict[str, float]:
    """Median ms per training iteration of each config, interleaved on the same batches."""
    steps = {name: trainer(config, device) for name, config in configs.items()}
    return time_steps(steps, batches, device, warmup, round_size)


def interleaved_ms(
    cases: dict[Any, Callable[[], object]], repeats: int, calls: int
) -> dict[Any, float]:
    """Median ms of each case (a call without arguments), after one untimed call of each:
    `repeats` sittings, in alternating order, each the median of `calls` calls in a row."""
    for case in cases.values():
        case()
    times: dict[Any, list[float]] = {name: [] for name in cases}
    for repeat in range(repeats):
        for name in list(cases) if repeat % 2 == 0 else list(reversed(cases)):
            one = []
            for _ in range(calls):
                start = time.perf_counter()
                cases[name]()
                one.append(time.perf_counter() - start)
            times[name].append(1000 * statistics.median(one))
    return {name: statistics.median(ms) for name, ms in times.items()}


def time_steps(
    steps: dict[str, Step],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    round_size: int = ROUND,
) -> dict[str, float]:
    """Median ms of each training step, interleaved in rounds on the same batches: each
    step runs `round_size` batches in a row, then the next step the same batches (which
    goes first alternates round by round; `round_size` 1 interleaves every iteration). The
    first `warmup` batches are untimed."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for number, first in enumerate(range(0, len(batches), round_size)):
        batch_round = range(first, min(first + round_size, len(batches)))
        for name in names if number % 2 == 0 else reversed(names):
            for i in batch_round:
                images, labels = batches[i]
                sync(device)
                start = time.perf_counter()
                steps[name](images, labels)
                sync(device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _peak_memory_child(settings: dict, device_name: str, queue) -> None:
    config = make_run_config(settings)
    device = torch.device(device_name)
    step = trainer(config, device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(config.batch_size, 784, generator=generator).to(device)
    labels = torch.randint(0, 10, (config.batch_size,), generator=generator).to(device)
    step(images[:2], labels[:2])  # compiles kernels and creates Adam's state, at tiny cost
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(images, labels)
        torch.cuda.synchronize()
        queue.put((torch.cuda.max_memory_allocated() - base) / 2**20)
        return
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    step(images, labels)
    queue.put((_rss_kib("VmHWM") - base) / 1024)


def peak_memory_mb(config: RunConfig, device: torch.device) -> float:
    """Memory one training step adds at its peak, measured in a fresh process (MiB)."""
    if device.type not in ("cpu", "cuda") or not Path("/proc/self/clear_refs").exists():
        return float("nan")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_peak_memory_child, args=(config.model_dump(), str(device), queue)
    )
    process.start()
    try:
        value = queue.get(timeout=600)
    finally:
        process.join()
    return float(value)


def run_case(
    settings: dict,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    memory: bool = True,
    round_size: int = ROUND,
) -> CaseResult:
    """Reference against fused for one configuration."""
    configs = {
        backend: make_run_config({**settings, "backend": backend, "device": str(device)})
        for backend in BACKENDS
    }
    ms = time_iterations(configs, batches, device, warmup, round_size)
    per_epoch = 60_000 // configs["fused"].batch_size
    return CaseResult(
        settings=settings,
        ms_per_iteration=ms,
        ratio=ms["reference"] / ms["fused"],
        epoch_seconds={name: value * per_epoch / 1000 for name, value in ms.items()},
        peak_memory_mb={
            name: peak_memory_mb(config, device) if memory else float("nan")
            for name, config in configs.items()
        },
    )


def scaling(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    round_size: int = ROUND,
) -> list[dict]:
    """Fused ms per iteration as num_steps and hidden grow (is the cost linear?)."""
    configs = {
        ",".join(f"{k}={v}" for k, v in s.items()): make_run_config({**s, "device": str(device)})
        for s in SCALING
    }
    ms = time_iterations(configs, batches, device, warmup, round_size)
    return [
        {"settings": s, "ms_per_iteration": ms[name]}
        for s, name in zip(SCALING, configs, strict=True)
    ]


def tracking_overhead(
    data_dir: Path | None = None, repeats: int = 3, settings: dict | None = None
) -> dict:
    """Wall time of a training run with and without MLflow logging, interleaved.

    The logged run goes to a fresh SQLite store (created before timing starts) and includes
    everything a one-seed trial of a study does in MLflow: the configuration's parent run
    (params, dataset inputs, mean and sd at the end), the seed's run (params, inputs and
    config artifact, batched metrics, curves artifact), both ended.
    """
    import tempfile

    from harness.data.loading import subset
    from harness.study.tracking import (
        MlflowClient,
        RunLogger,
        dataset_inputs,
        experiment_id,
        finish_parent_run,
        start_parent_run,
    )
    from harness.training.loop import train

    config = make_run_config(settings or {})
    device = resolve_device(config.device)
    dataset = loading.load(
        data_dir, device, config.train_subset, config.test_subset, dataset=config.dataset
    )
    warmup = loading.Dataset(
        subset(dataset.train, 10 * config.batch_size, "first", 0), dataset.test, ""
    )
    times: dict[str, list[float]] = {"plain": [], "mlflow": []}
    logging: list[float] = []  # seconds spent inside MLflow calls, per logged run
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        experiment = experiment_id(client, "overhead", Path(tmp) / "artifacts")
        train(config, warmup)  # loads the kernels before anything is timed
        for repeat in range(repeats):
            for mode in ("plain", "mlflow") if repeat % 2 == 0 else ("mlflow", "plain"):
                start = time.perf_counter()
                if mode == "plain":
                    train(config, dataset)
                else:
                    spent = [0.0]

                    def timed(call, *args, spent=spent):
                        begin = time.perf_counter()
                        call(*args)
                        spent[0] += time.perf_counter() - begin

                    begin = time.perf_counter()
                    inputs = dataset_inputs(
                        dataset.name, dataset.checksum,
                        {"train": len(dataset.train), "test": len(dataset.test)},
                    )  # fmt: skip
                    params = config.model_dump()
                    parent = start_parent_run(
                        client, experiment, f"overhead/{repeat}", {}, params, inputs
                    )
                    logger = RunLogger(client, experiment, f"overhead/{repeat}/s0", {}, parent)
                    logger.log_config(params, inputs)
                    spent[0] += time.perf_counter() - begin
                    result = train(config, dataset, [lambda event, log=logger: timed(log, event)])
                    timed(logger.finish, result)
                    summary = [{"status": result.status, **result.metrics}]
                    timed(finish_parent_run, client, parent, summary, result.status)
                    logging.append(spent[0])
                times[mode].append(time.perf_counter() - start)
    plain, logged = statistics.median(times["plain"]), statistics.median(times["mlflow"])
    return {
        "plain_seconds": plain,
        "mlflow_seconds": logged,
        "overhead_percent": 100 * (logged - plain) / plain,
        "logging_seconds": statistics.median(logging),
        "logging_percent": 100 * statistics.median(logging) / plain,
        "repeats": repeats,
        "runs": times,
    }
