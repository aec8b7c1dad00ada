"""Configurations trained together: does fc1 over several weight sets in one product pay?

The configurations of a grid that share a seed see the same batches, so their fc1 products
share their input. One sparse product over the weight sets side by side, (784, K x 1000),
compresses each batch's nonzero pixels once and reads each pixel's row of all K weight sets
in one pass; K separate products do both K times. This times fc1's forward and backward
both ways on the same MNIST batch, interleaved, for growing K: the upper bound of what
training K configurations in one process could save in fc1 (the LIF kernel, fc2 and Adam
stay per configuration).
"""

from __future__ import annotations

import torch

from harness.bench.timing import interleaved_ms
from harness.network.kernels.sparse_linear import sparse_linear

GROUPS = (1, 2, 3, 6)  # configurations trained together (beta_sweep's grid has 6 betas)


def _fc1_step(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor):
    out = sparse_linear(x, weight_t, bias)
    out.backward(grad)


def fc1_together(
    x: torch.Tensor,
    hidden: int = 1000,
    groups: tuple[int, ...] = GROUPS,
    repeats: int = 7,
    calls: int = 15,
) -> list[dict]:
    """For each K in `groups`: the median ms of fc1's forward and backward for K weight sets,
    as K products (apart) and as one product over the K sets side by side (together), timed
    in alternating order on the batch `x` (B, 784), beside one configuration's product alone
    (as a study runs them: one after another, each with its weights in the cache)."""
    torch.manual_seed(0)
    return [_time_group(x, k, hidden, repeats, calls) for k in groups]


def _time_group(x: torch.Tensor, k: int, hidden: int, repeats: int, calls: int) -> dict:
    weights = [(torch.randn(x.shape[1], hidden) * 0.03).requires_grad_() for _ in range(k)]
    biases = [torch.zeros(hidden, requires_grad=True) for _ in range(k)]
    grads = [torch.randn(x.shape[0], hidden) for _ in range(k)]
    joined = torch.cat([w.detach() for w in weights], 1).requires_grad_()
    joined_bias = torch.cat([b.detach() for b in biases]).requires_grad_()
    joined_grad = torch.cat(grads, 1)

    def alone() -> None:
        _fc1_step(x, weights[0], biases[0], grads[0])

    def apart() -> None:
        for w, b, g in zip(weights, biases, grads, strict=True):
            _fc1_step(x, w, b, g)

    def together() -> None:
        _fc1_step(x, joined, joined_bias, joined_grad)

    ms = interleaved_ms({"alone": alone, "apart": apart, "together": together}, repeats, calls)
    alone_ms, apart_ms, together_ms = ms["alone"], ms["apart"], ms["together"]
    return {
        "configurations": k,
        "alone_ms": alone_ms,
        "apart_ms": apart_ms,
        "together_ms": together_ms,
        "together_vs_alone": together_ms / k / alone_ms,
    }


def format_fc1_together(rows: list[dict]) -> list[str]:
    """The rows as a table: one configuration alone, K apart and K together, and together's
    ms per configuration against one alone."""
    lines = [
        "fc1 (forward + backward, sparse) on one batch: one configuration alone, K apart, "
        "and one product over the K weight sets side by side",
        f"{'K':>3}{'alone ms':>10}{'apart ms':>10}{'together ms':>13}{'together/K / alone':>20}",
    ]
    for row in rows:
        lines.append(
            f"{row['configurations']:>3}{row['alone_ms']:>10.2f}{row['apart_ms']:>10.2f}"
            f"{row['together_ms']:>13.2f}{row['together_vs_alone']:>20.2f}"
        )
    return lines
