"""`harness bench`: the suite the command runs (cases, scaling, peers), and its printed report."""

from __future__ import annotations

from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch

from harness.bench.machine import describe, describe_line
from harness.bench.peers import peer_rows, peer_versions
from harness.bench.run_gap import format_run_gap, run_gap
from harness.bench.timing import CASES, ROUND, run_case, scaling
from harness.data import loading
from harness.errors import ConfigError
from harness.training.loop import resolve_device


def load_batches(
    data_dir: Path | None, device: torch.device, count: int, batch_size: int = 128
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` shuffled training batches of MNIST, on `device`."""
    dataset = loading.load(data_dir, device, train_subset=count * batch_size)
    generator = torch.Generator().manual_seed(0)
    return list(loading.train_batches(dataset.train, batch_size, generator))


def bench(
    device_name: str = "auto",
    iterations: int = 30,
    warmup: int = 5,
    data_dir: Path | None = None,
    cases: tuple[dict, ...] = CASES,
    with_scaling: bool = True,
    memory: bool = True,
    peers: bool = False,
    compiled: bool = False,
    round_size: int = ROUND,
    with_run: bool = False,
) -> dict:
    """Run every case (and the scaling series; `with_run`: a whole run against its bare
    iterations, `run_gap`); return a JSON-ready dict of the figures.
    `peers`: instead the rows of `peer_rows` (`compiled` adds snnTorch under torch.compile),
    whose reference and fused rows give the ratio."""
    if compiled and not peers:
        raise ConfigError("--compile adds a row to the --peers table: give both")
    versions = peer_versions() if peers else {}
    device = resolve_device(device_name)
    batches = load_batches(data_dir, device, warmup + iterations)
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "machine": describe(),
        "iterations": iterations,
        "warmup": warmup,
        "round": round_size,
    }
    if peers:
        rows = peer_rows(batches, device, warmup, compiled, round_size)
        by_name = {row["name"]: row for row in rows}
        versions = {"snntorch": metadata.version("snntorch"), **versions}
        ratio = by_name["reference"]["ms_per_iteration"] / by_name["fused"]["ms_per_iteration"]
        return {**report, "versions": versions, "rows": rows, "ratio": ratio}
    results = [
        run_case(settings, batches, device, warmup, memory, round_size) for settings in cases
    ]
    report["cases"] = [asdict(r) for r in results]
    report["ratio"] = results[0].ratio
    if with_scaling:
        report["scaling"] = scaling(batches, device, warmup, round_size)
    if with_run:
        report["run"] = run_gap(data_dir, device, batches, warmup)
    return report


def format_rows(report: dict) -> list[str]:
    """`peer_rows`' rows side by side, the initial losses against the reference's."""
    reference = next(row for row in report["rows"] if row["name"] == "reference")
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items())
    lines = [
        f"tutorial-5 (rate, batch 128), the same initial weights and batches; {versions}",
        f"{'row':<34}{'ms/iter':>9}{'x snnTorch':>12}{'initial loss':>14}{'- reference':>13}",
    ]
    for row in report["rows"]:
        lines.append(
            f"{row['label']:<34}{row['ms_per_iteration']:>9.1f}{row['x_snntorch']:>12.2f}"
            f"{row['initial_loss']:>14.6f}{row['initial_loss'] - reference['initial_loss']:>13.2e}"
        )
    return lines


def format_report(report: dict) -> str:
    """The figures as a plain-text table."""
    lines = [
        f"device {report['device']} ({report['device_name']}, {report['threads']} threads); "
        f"median of {report['iterations']} iterations after {report['warmup']} warm-up, "
        f"interleaved in rounds of {report['round']}",
    ]
    if "machine" in report:
        lines.append(describe_line(report["machine"]))
    if "rows" in report:
        lines += format_rows(report)
        lines.append(f"ratio (tutorial-5 settings, rate): {report['ratio']:.1f}x")
        return "\n".join(lines)
    lines += [
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
    if "run" in report:
        lines += format_run_gap(report["run"])
    lines.append(f"ratio (tutorial-5 settings, rate): {report['ratio']:.1f}x")
    return "\n".join(lines)
