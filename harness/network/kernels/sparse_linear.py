"""fc1 for sparse inputs (MNIST is ~80 % zeros): the forward product and the weight gradient
skip zero inputs.
"""

from __future__ import annotations

import numba
import torch
from numba import njit, prange

from harness.network.kernels.primitives import axpy

# --- fc1 on sparse inputs ----------------------------------------------------------------
# MNIST images are ~80 % zeros, so fc1 costs a fifth of a dense GEMM if it skips them. Both
# products are row operations on fc1's weight stored transposed, W1T (in, H), as the fused
# backend's fc1 keeps it (`model.TransposedLinear`): cur1[b] = bias + sum over nonzero j of
# x[b, j] W1T[j], and grad W1T[j] = sum over b with x[b, j] != 0 of x[b, j] grad_cur1[b].
# Each thread takes blocks of hidden neurons, its outputs in L1. Blocks are as large as
# `_MAX_BLOCK` allows: fewer passes over each sample's pixels pay more than W1T's columns in
# L2 (`harness bench --blocks`: blocks that fit a 512 KiB L2 were 1.1 to 2.3 times slower).

DENSE_INPUTS = 0.4  # share of nonzero inputs above which the dense GEMM is faster
_MAX_BLOCK = 512  # hidden neurons per block at most


def _block_size(hidden: int) -> int:
    """Hidden neurons per block: blocks a multiple of the threads (each gets as many), as
    large as `_MAX_BLOCK` allows (fewer passes over the inputs), a multiple of 16."""
    threads = numba.get_num_threads()
    blocks = threads * -(-hidden // (threads * _MAX_BLOCK))
    return 16 * -(-hidden // (16 * blocks))


@njit(parallel=True, error_model="numpy", cache=True)
def _compress_rows(x, index, value, count):
    """Each row's nonzero entries, in order: their columns in index[b, :count[b]], their
    values in value[b, :count[b]] (branch-free: MNIST's zeros would be unpredictable)."""
    for b in prange(x.shape[0]):
        row, idx, val = x[b], index[b], value[b]
        n = 0
        for j in range(row.shape[0]):
            v = row[j]
            idx[n] = j
            val[n] = v
            n += v != 0
        count[b] = n


@njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _gather_axpy(out, rows, lo, index, value, n):
    """out += sum over i < n of value[i] * rows[index[i], lo:lo + len(out)], eight rows a
    pass (fewer trips of `out` through the cache). (rows[:, lo:hi] would lose numba's
    knowledge that its rows are contiguous, and rows[j][lo + k] costs a negative-index test.)"""
    hi = lo + out.shape[0]
    i = 0
    while i + 8 <= n:
        v0, v1, v2, v3 = value[i], value[i + 1], value[i + 2], value[i + 3]
        v4, v5, v6, v7 = value[i + 4], value[i + 5], value[i + 6], value[i + 7]
        r0, r1 = rows[index[i], lo:hi], rows[index[i + 1], lo:hi]
        r2, r3 = rows[index[i + 2], lo:hi], rows[index[i + 3], lo:hi]
        r4, r5 = rows[index[i + 4], lo:hi], rows[index[i + 5], lo:hi]
        r6, r7 = rows[index[i + 6], lo:hi], rows[index[i + 7], lo:hi]
        for k in range(out.shape[0]):
            out[k] += (
                v0 * r0[k] + v1 * r1[k] + v2 * r2[k] + v3 * r3[k]
                + v4 * r4[k] + v5 * r5[k] + v6 * r6[k] + v7 * r7[k]
            )  # fmt: skip
        i += 8
    while i < n:
        axpy(out, value[i], rows[index[i], lo:hi])
        i += 1


@njit(parallel=True, fastmath={"contract"}, error_model="numpy", cache=True)
def _sparse_forward(index, value, count, wt, bias, out, block):
    """out (B, H) = bias + x W1T from x's compressed rows; wt is W1T (in, H)."""
    hidden = wt.shape[1]
    for blk in prange((hidden + block - 1) // block):
        lo, hi = blk * block, min(hidden, (blk + 1) * block)
        for b in range(out.shape[0]):
            o = out[b, lo:hi]
            o[:] = bias[lo:hi]
            _gather_axpy(o, wt, lo, index[b], value[b], count[b])


@njit(error_model="numpy", cache=True)
def _compress_columns(index, value, count, col_index, col_value, col_count):
    """The compressed rows' entries regrouped by column: for column j, the rows b (in order)
    with x[b, j] != 0 in col_index[j, :col_count[j]], their values in col_value."""
    col_count[:] = 0
    for b in range(index.shape[0]):
        for i in range(count[b]):
            j = index[b, i]
            c = col_count[j]
            col_index[j, c] = b
            col_value[j, c] = value[b, i]
            col_count[j] = c + 1


@njit(parallel=True, fastmath={"contract"}, error_model="numpy", cache=True)
def _sparse_linear_backward(index, value, count, grad, grad_wt, grad_bias, col_index,
                            col_value, col_count, block):  # fmt: skip
    """grad_wt (in, H) = x^T grad and grad_bias (H,) = grad summed over rows, from x's
    compressed rows and grad (B, H)."""
    hidden, inputs = grad.shape[1], grad_wt.shape[0]
    _compress_columns(index, value, count, col_index, col_value, col_count)
    for blk in prange((hidden + block - 1) // block):
        lo, hi = blk * block, min(hidden, (blk + 1) * block)
        gb = grad_bias[lo:hi]
        gb[:] = 0
        for b in range(grad.shape[0]):
            gb += grad[b, lo:hi]
        for j in range(inputs):
            o = grad_wt[j, lo:hi]
            o[:] = 0
            _gather_axpy(o, grad, lo, col_index[j], col_value[j], col_count[j])


class _SparseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight_t, bias):
        x = x.detach().contiguous()
        weight_t, bias = weight_t.detach(), bias.detach()
        batch, inputs = x.shape
        index = torch.empty((batch, inputs), dtype=torch.int32)
        value = torch.empty((batch, inputs), dtype=torch.float32)
        count = torch.empty(batch, dtype=torch.int64)
        _compress_rows(x.numpy(), index.numpy(), value.numpy(), count.numpy())
        sparse = int(count.sum()) <= DENSE_INPUTS * x.numel()
        if sparse:
            out = x.new_empty((batch, weight_t.shape[1]))
            _sparse_forward(
                index.numpy(), value.numpy(), count.numpy(), weight_t.numpy(), bias.numpy(),
                out.numpy(), _block_size(weight_t.shape[1]),
            )  # fmt: skip
            ctx.save_for_backward(weight_t, index, value, count)
        else:  # the dense GEMM
            out = torch.addmm(bias, x, weight_t)
            ctx.save_for_backward(weight_t, x)
        ctx.sparse = sparse
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        grad_x = None
        weight_t = ctx.saved_tensors[0]
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight_t.t()
        if ctx.sparse:
            _, index, value, count = ctx.saved_tensors
            grad_wt = torch.empty_like(weight_t)
            grad_bias = grad.new_empty(grad.shape[1])
            inputs, rows = index.shape[1], index.shape[0]  # a column holds at most every row
            col_index = torch.empty((inputs, rows), dtype=torch.int32)
            col_value = torch.empty((inputs, rows), dtype=torch.float32)
            col_count = torch.empty(inputs, dtype=torch.int64)
            _sparse_linear_backward(
                index.numpy(), value.numpy(), count.numpy(), grad.numpy(), grad_wt.numpy(),
                grad_bias.numpy(), col_index.numpy(), col_value.numpy(), col_count.numpy(),
                _block_size(grad.shape[1]),
            )  # fmt: skip
        else:
            x = ctx.saved_tensors[1]
            grad_wt = x.t() @ grad
            grad_bias = grad.sum(0)
        return grad_x, grad_wt, grad_bias


def sparse_linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """fc1 with its weight stored transposed, `weight_t` (in, H): x (B, in) -> x weight_t +
    bias (B, H), skipping zero inputs on the CPU.

    The numba path needs float32 CPU tensors, `weight_t` and `bias` contiguous; the weight's
    gradient comes in its layout, contiguous (PyTorch's fused CPU Adam copies a parameter
    that is not). With denser inputs (> `DENSE_INPUTS` nonzero) it is the dense GEMM;
    anything else is `torch.nn.functional.linear`. The gradient of x is computed if asked
    for.
    """
    numba_ok = (
        x.device.type == "cpu" and x.dim() == 2 and x.dtype == torch.float32
        and weight_t.dtype == torch.float32 and bias is not None
        and bias.dtype == torch.float32 and weight_t.is_contiguous() and bias.is_contiguous()
    )  # fmt: skip
    if not numba_ok:
        return torch.nn.functional.linear(x, weight_t.t(), bias)
    return _SparseLinear.apply(x, weight_t, bias)
