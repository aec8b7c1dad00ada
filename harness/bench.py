"""Speed: the fused backend against the snnTorch reference, side by side in one process.

Both backends train the same configuration from the same initial weights on the same MNIST
batches, interleaved iteration by iteration (alternating which goes first), after a
warm-up; the figure of each is the median time of a full training iteration (forward, loss,
backward, Adam step). Peak memory is measured per backend in a fresh process: on CUDA the
allocator's peak, on the CPU the growth of the resident set's high-water mark over one
training step (Linux `VmHWM`, reset before the step).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness import data, decoding
from harness.config import RunConfig, make_run_config
from harness.model import build_model
from harness.train import make_optimizer, resolve_device

BACKENDS = ("reference", "fused")
CASES = ({"decoding": "rate"}, {"decoding": "latency"}, {"decoding": "rate", "num_steps": 100})
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _trainer(config: RunConfig, device: torch.device):
    """A closure that runs one training iteration of `config` on a batch."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config, device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        out = model(images)
        loss = decoding.loss(config.decoding, out.spikes, out.membranes, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_iterations(
    configs: dict[str, RunConfig],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
) -> dict[str, float]:
    """Median ms per training iteration of each config, interleaved on the same batches."""
    steps = {name: _trainer(config, device) for name, config in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for i, (images, labels) in enumerate(batches):
        for name in names if i % 2 == 0 else reversed(names):
            _sync(device)
            start = time.perf_counter()
            steps[name](images, labels)
            _sync(device)
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
    step = _trainer(config, device)
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
) -> CaseResult:
    """Reference against fused for one configuration."""
    configs = {
        backend: make_run_config({**settings, "backend": backend, "device": str(device)})
        for backend in BACKENDS
    }
    ms = time_iterations(configs, batches, device, warmup)
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
    batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, warmup: int
) -> list[dict]:
    """Fused ms per iteration as num_steps and hidden grow (is the cost linear?)."""
    configs = {
        ",".join(f"{k}={v}" for k, v in s.items()): make_run_config({**s, "device": str(device)})
        for s in SCALING
    }
    ms = time_iterations(configs, batches, device, warmup)
    return [
        {"settings": s, "ms_per_iteration": ms[name]}
        for s, name in zip(SCALING, configs, strict=True)
    ]


def load_batches(
    data_dir: Path | None, device: torch.device, count: int, batch_size: int = 128
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` shuffled training batches of MNIST, on `device`."""
    dataset = data.load(data_dir, device, train_subset=count * batch_size)
    generator = torch.Generator().manual_seed(0)
    return list(data.train_batches(dataset.train, batch_size, generator))


def bench(
    device_name: str = "auto",
    iterations: int = 30,
    warmup: int = 5,
    data_dir: Path | None = None,
    cases: tuple[dict, ...] = CASES,
    with_scaling: bool = True,
    memory: bool = True,
) -> dict:
    """Run every case (and the scaling series); return a JSON-ready dict of the figures."""
    device = resolve_device(device_name)
    batches = load_batches(data_dir, device, warmup + iterations)
    results = [run_case(settings, batches, device, warmup, memory) for settings in cases]
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "iterations": iterations,
        "warmup": warmup,
        "cases": [asdict(r) for r in results],
        "ratio": results[0].ratio,
    }
    if with_scaling:
        report["scaling"] = scaling(batches, device, warmup)
    return report


def format_report(report: dict) -> str:
    """The figures as a plain-text table."""
    lines = [
        f"device {report['device']} ({report['device_name']}, {report['threads']} threads); "
        f"median of {report['iterations']} iterations after {report['warmup']} warm-up, "
        "interleaved",
        f"{'case':<28}{'reference ms':>13}{'fused ms':>10}{'ratio':>7}"
        f"{'ref epoch s':>12}{'fused epoch s':>14}{'ref MiB':>9}{'fused MiB':>10}",
    ]
    for case in report["cases"]:
        name = ",".join(f"{k}={v}" for k, v in case["settings"].items())
        ms, epoch, mem = case["ms_per_iteration"], case["epoch_seconds"], case["peak_memory_mb"]
        lines.append(
            f"{name:<28}{ms['reference']:>13.1f}{ms['fused']:>10.2f}{case['ratio']:>7.1f}"
            f"{epoch['reference']:>12.1f}{epoch['fused']:>14.1f}"
            f"{mem['reference']:>9.1f}{mem['fused']:>10.1f}"
        )
    if "scaling" in report:
        lines.append("fused scaling (ms per iteration):")
        for row in report["scaling"]:
            name = ",".join(f"{k}={v}" for k, v in row["settings"].items())
            lines.append(f"  {name:<26}{row['ms_per_iteration']:>8.2f}")
    lines.append(f"ratio (tutorial-5 settings, rate): {report['ratio']:.1f}x")
    return "\n".join(lines)


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

    from harness.data import subset
    from harness.tracking import (
        MlflowClient,
        RunLogger,
        dataset_inputs,
        experiment_id,
        finish_parent_run,
        start_parent_run,
    )
    from harness.train import train

    config = make_run_config(settings or {})
    device = resolve_device(config.device)
    dataset = data.load(
        data_dir, device, config.train_subset, config.test_subset, dataset=config.dataset
    )
    warmup = data.Dataset(
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
