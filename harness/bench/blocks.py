"""fc1's block size on this machine: does sizing blocks from the caches matter?

The sparse fc1 (`sparse_linear`) splits the hidden neurons into blocks, one or more a
thread; each block's pass reads its columns of W1T for every sample's nonzero pixels, so a
block that fits a core's L2 cache would read them from there. `_block_size` takes blocks
as large as `_MAX_BLOCK` allows (fewer passes over the inputs), whatever the caches. This
times fc1's forward and backward (the numba functions, on one MNIST batch) with each block
size, interleaved, beside the size `_block_size` picks, so two machines' cache hierarchies
can be compared. Every block size computes the same bits: a block only chooses which
neurons a pass covers, not the order of any sum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.bench.timing import interleaved_ms
from harness.network.kernels import sparse_linear as fc1

BLOCKS = (64, 128, 256, 512)  # 1,000 neurons: at least two blocks, one a thread


def l2_cache() -> str:
    """A core's L2 cache as Linux reports it ("512K"), or "unknown"."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                return (index / "size").read_text().strip()
        except OSError:
            break
    return "unknown"


def forward_backward(x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray, grad: np.ndarray,
                     block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """fc1's sparse forward and weight gradient with hidden blocks of `block` neurons:
    (output, grad of W1T, grad of the bias)."""
    batch, inputs = x.shape
    index = np.empty((batch, inputs), np.int32)
    value = np.empty((batch, inputs), np.float32)
    count = np.empty(batch, np.int64)
    fc1._compress_rows(x, index, value, count)
    out = np.empty((batch, weight_t.shape[1]), np.float32)
    fc1._sparse_forward(index, value, count, weight_t, bias, out, block)
    grad_wt, grad_bias = np.empty_like(weight_t), np.empty_like(bias)
    col_index = np.empty((inputs, batch), np.int32)
    col_value = np.empty((inputs, batch), np.float32)
    col_count = np.empty(inputs, np.int64)
    fc1._sparse_linear_backward(index, value, count, grad, grad_wt, grad_bias, col_index,
                                col_value, col_count, block)  # fmt: skip
    return out, grad_wt, grad_bias


def block_sizes(
    images: torch.Tensor,
    hidden: int = 1000,
    blocks: tuple[int, ...] = BLOCKS,
    repeats: int = 7,
    calls: int = 15,
) -> dict:
    """The median ms of fc1's forward and backward on the batch `images` (B, 784) for each
    block size, timed in alternating order; which size `_block_size` picks; and whether
    every size gave the same bits."""
    generator = torch.Generator().manual_seed(0)
    x = images.flatten(1).contiguous().numpy()
    weight_t = (torch.randn(x.shape[1], hidden, generator=generator) * 0.03).numpy()
    bias = torch.zeros(hidden).numpy()
    grad = torch.randn(x.shape[0], hidden, generator=generator).numpy()
    chosen = fc1._block_size(hidden)
    sizes = sorted({*blocks, chosen})
    results = {size: forward_backward(x, weight_t, bias, grad, size) for size in sizes}
    first = results[sizes[0]]
    same = all(
        all(np.array_equal(a, b) for a, b in zip(first, result, strict=True))
        for result in results.values()
    )
    ms = interleaved_ms(
        {size: lambda size=size: forward_backward(x, weight_t, bias, grad, size) for size in sizes},
        repeats, calls,
    )  # fmt: skip
    return {
        "l2_cache": l2_cache(),
        "chosen": chosen,
        "same_bits": same,
        "rows": [
            {"block": size, "ms": ms[size], "vs_chosen": ms[size] / ms[chosen]} for size in sizes
        ],
    }


def format_block_sizes(report: dict) -> list[str]:
    """The report as a table, the size `_block_size` picks marked."""
    lines = [
        f"fc1 (forward + backward, sparse) on one batch by hidden neurons a block; a core's L2 "
        f"{report['l2_cache']}; a block's W1T columns are 784 x block x 4 bytes",
        f"{'block':>6}{'W1T KiB':>9}{'ms':>8}{'vs picked':>11}",
    ]
    for row in report["rows"]:
        mark = "  <- picked" if row["block"] == report["chosen"] else ""
        lines.append(
            f"{row['block']:>6}{784 * row['block'] * 4 // 1024:>9}{row['ms']:>8.2f}"
            f"{row['vs_chosen']:>11.2f}{mark}"
        )
    lines.append(f"every block size gave the same bits: {'yes' if report['same_bits'] else 'NO'}")
    return lines
