"""What a bench ran on, printed beside its figures: ratios from two machines read side by side
only with each one's CPU model, its vector extensions and the float32 matrix-product rate it
reaches (PyTorch's CPU products, the dense floor of an iteration)."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

# /proc/cpuinfo flag -> the extension's usual name, widest first
VECTOR_FLAGS = {"avx512f": "AVX-512", "avx2": "AVX2", "avx": "AVX", "asimd": "NEON"}
SGEMM_SIZE = 1024  # a square float32 product of this size (2 n^3 flops)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def describe(repeats: int = 10) -> dict:
    """The CPU's model, its vector extensions and its measured sgemm rate (GFLOP/s, median of
    `repeats` products on the current thread count)."""
    info = _cpuinfo()
    flags = set(info.get("flags", info.get("Features", "")).split())
    model = info.get("model name") or platform.processor() or platform.machine()
    a = torch.rand(SGEMM_SIZE, SGEMM_SIZE)
    b = torch.rand(SGEMM_SIZE, SGEMM_SIZE)
    for _ in range(2):
        torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - start)
    gflops = 2 * SGEMM_SIZE**3 / statistics.median(seconds) / 1e9
    return {
        "cpu": model,
        "vector": [name for flag, name in VECTOR_FLAGS.items() if flag in flags],
        "sgemm_gflops": gflops,
        "threads": torch.get_num_threads(),
    }


def describe_line(machine: dict) -> str:
    """One line: "machine: AMD EPYC (AVX-512, AVX2, AVX), sgemm 118 GFLOP/s on 2 threads"."""
    vector = f" ({', '.join(machine['vector'])})" if machine["vector"] else ""
    return (
        f"machine: {machine['cpu']}{vector}, sgemm {machine['sgemm_gflops']:.0f} GFLOP/s "
        f"({SGEMM_SIZE}x{SGEMM_SIZE} float32) on {machine['threads']} threads"
    )
