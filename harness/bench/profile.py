"""`harness bench --profile`: where an iteration of the fused backend spends its time, per
operator (torch.profiler).
"""

from __future__ import annotations

import torch

from harness.bench.timing import sync, trainer
from harness.config import make_run_config


def profile_fused(
    batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, warmup: int
) -> list[dict]:
    """Where the fused backend's tutorial-5 training iteration spends its time: PyTorch's
    profiler over the batches after `warmup` untimed ones, each operation's own time (ms an
    iteration), longest first. The kernels and sparse products are autograd functions, so
    they show by name (_FusedLIFNet and _FusedLIFNetBackward, _SparseLinear...)."""
    from torch.profiler import ProfilerActivity, profile

    step = trainer(make_run_config({"device": str(device)}), device)
    for images, labels in batches[:warmup]:
        step(images, labels)
    timed = batches[warmup:]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for images, labels in timed:
            step(images, labels)
            sync(device)
    rows = [
        {"name": event.key, "ms_per_iteration": event.self_cpu_time_total / 1000 / len(timed),
         "calls_per_iteration": event.count / len(timed)}
        for event in profiler.key_averages()
    ]  # fmt: skip
    return sorted(rows, key=lambda row: -row["ms_per_iteration"])


def format_profile(rows: list[dict], top: int = 12) -> str:
    """The longest operations of `profile_fused` and the total, as a table."""
    total = sum(row["ms_per_iteration"] for row in rows)
    lines = [f"{'operation (own time)':<44}{'ms/iter':>9}{'calls/iter':>12}"]
    for row in rows[:top]:
        lines.append(
            f"{row['name']:<44}{row['ms_per_iteration']:>9.3f}{row['calls_per_iteration']:>12.1f}"
        )
    lines.append(f"{'all operations':<44}{total:>9.3f}")
    return "\n".join(lines)
