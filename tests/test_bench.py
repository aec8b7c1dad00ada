import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch

from harness.bench.blocks import block_sizes, format_block_sizes, forward_backward
from harness.bench.events import (
    events_against_dense,
    fc2_events,
    format_events,
    spike_lists,
    weight_grads_events,
)
from harness.bench.grid import fc1_together, format_fc1_together
from harness.bench.listing import format_listing, listing_against_dense
from harness.bench.run_gap import format_run_gap, run_gap, run_parts
from harness.bench.suite import load_batches
from harness.bench.timing import peak_memory_mb, time_steps
from harness.cli import main
from harness.config import make_run_config
from harness.network.kernels import lif_scan
from harness.network.kernels.sparse_linear import _block_size, sparse_linear
from harness.training.loop import resolve_device
from tests.helpers import run_cli


@pytest.mark.mnist
@pytest.mark.processes
def test_bench_cli_reports_both_backends_side_by_side(mnist_dir):
    command = [
        "bench", "--quick", "--iterations", "3",
        "--warmup", "1", "--device", "cpu", "--data-dir", str(mnist_dir), "--json",
    ]  # fmt: skip
    done = run_cli(*command)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ratio (tutorial-5 settings, rate)" in done.stdout
    (case,) = report["cases"]
    ms = case["ms_per_iteration"]
    assert set(ms) == {"reference", "fused"} and all(v > 0 for v in ms.values())
    assert math.isclose(report["ratio"], ms["reference"] / ms["fused"])
    assert math.isclose(case["epoch_seconds"]["fused"], ms["fused"] * 468 / 1000)
    assert report["round"] == 5 and "interleaved in rounds of 5" in done.stdout
    machine = report["machine"]  # what it ran on, beside the ratio
    assert machine["cpu"] and machine["sgemm_gflops"] > 1 and machine["threads"] >= 1
    assert f"machine: {machine['cpu']}" in done.stdout and "GFLOP/s" in done.stdout


def test_steps_take_turns_in_rounds_on_the_same_batches():
    calls = []
    steps = {name: lambda images, labels, name=name: calls.append((name, int(images)))
             for name in ("a", "b")}  # fmt: skip
    batches = [(torch.tensor(i), torch.tensor(0)) for i in range(5)]
    ms = time_steps(steps, batches, torch.device("cpu"), warmup=1, round_size=2)
    assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1),  # which goes first alternates
                     ("b", 2), ("b", 3), ("a", 2), ("a", 3), ("a", 4), ("b", 4)]  # fmt: skip
    assert set(ms) == {"a", "b"} and all(value > 0 for value in ms.values())
    calls.clear()
    time_steps(steps, batches[:2], torch.device("cpu"), warmup=0, round_size=1)
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1)]


@pytest.mark.processes
def test_bench_rejects_a_round_below_one_with_exit_2():
    done = run_cli("bench", "--device", "cpu", "--round", "0", timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("--round must be >= 1 (iterations in a row), got 0")
    )


@pytest.mark.processes  # each backend's peak is measured in a fresh process
def test_fused_step_needs_less_memory_than_the_reference():
    device = resolve_device("cpu")
    settings = {"hidden": 300, "num_steps": 25, "device": "cpu"}
    fused = peak_memory_mb(make_run_config({**settings, "backend": "fused"}), device)
    reference = peak_memory_mb(make_run_config({**settings, "backend": "reference"}), device)
    assert 0 <= fused < reference


@pytest.mark.processes
def test_bench_rejects_a_bad_device_with_exit_2():
    done = run_cli("bench", "--device", "gpu", timeout=60)
    assert done.returncode == 2 and "'device'" in done.stderr and done.stdout == ""


PEERS_INSTALLED = all(importlib.util.find_spec(name) for name in ("spikingjelly", "norse"))


@pytest.mark.mnist
@pytest.mark.processes
def test_bench_peers_rows_share_weights_batches_and_initial_loss(mnist_dir):
    command = [
        "bench", "--peers", "--quick", "--iterations", "2",
        "--warmup", "1", "--device", "cpu", "--data-dir", str(mnist_dir), "--json",
    ]  # fmt: skip
    done = run_cli(*command)
    if not PEERS_INSTALLED:
        assert done.returncode == 2 and done.stdout == ""
        assert "pip install '.[peers]'" in done.stderr and len(done.stderr.splitlines()) == 1
        return
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == [
        "reference", "snntorch_fc1_once", "spikingjelly", "norse", "fused_torch", "fused",
    ]  # fmt: skip
    reference = rows["reference"]
    for row in rows.values():
        assert row["ms_per_iteration"] > 0 and math.isfinite(row["initial_loss"])
        assert math.isclose(
            row["x_snntorch"], reference["ms_per_iteration"] / row["ms_per_iteration"]
        )
        assert row["label"] in done.stdout  # the plain-text table, a line per row
    # Same weights and the same dynamics: the same loss before any step. Norse too (its
    # reset is set to snnTorch's); SpikingJelly's reset decays, so only finite there.
    for name in ("snntorch_fc1_once", "norse", "fused_torch", "fused"):
        assert math.isclose(rows[name]["initial_loss"], reference["initial_loss"], rel_tol=1e-5)
    assert math.isclose(
        report["ratio"], reference["ms_per_iteration"] / rows["fused"]["ms_per_iteration"]
    )
    assert set(report["versions"]) == {"snntorch", "spikingjelly", "norse"}


def test_bench_peers_missing_extra_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "norse", None)  # as if not installed
    assert main(["bench", "--peers", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "norse" in err and "pip install '.[peers]'" in err


def test_bench_compile_needs_peers(capsys):
    assert main(["bench", "--compile", "--device", "cpu"]) == 2
    assert "--peers" in capsys.readouterr().err


@pytest.mark.mnist
@pytest.mark.processes
def test_bench_profile_names_where_the_fused_iteration_spends_its_time(mnist_dir):
    command = [
        "bench", "--profile", "--iterations", "2",
        "--warmup", "1", "--device", "cpu", "--data-dir", str(mnist_dir), "--json",
    ]  # fmt: skip
    done = run_cli(*command)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    times = {row["name"]: row["ms_per_iteration"] for row in report["operations"]}
    for name in ("_FusedLIFNet", "_FusedLIFNetBackward", "_SparseLinear", "_SparseLinearBackward"):
        assert times[name] > 0, name
    assert list(times.values()) == sorted(times.values(), reverse=True)
    assert "all operations" in done.stdout


def test_a_runs_events_split_it_into_windows_test_batches_and_evaluation():
    stamps = [("train", 3.0), ("train", 3.0), ("eval", 3.5), ("train", 6.5), ("train", 6.5),
              ("eval", 7.0), ("epoch", 9.0)]  # fmt: skip
    parts = run_parts(stamps, start=1.0, end=9.25)
    assert parts == {
        "run_seconds": 8.25,
        "windows": [2.0, 3.0],
        "test_batch_seconds": 1.0,
        "evaluation_seconds": 2.0,
    }


@pytest.mark.mnist
def test_the_run_gap_puts_a_whole_run_beside_its_bare_iterations(mnist_dir):
    device = torch.device("cpu")
    batches = load_batches(mnist_dir, device, 4)
    settings = {"train_subset": 1280, "test_subset": 500, "eval_every": 5, "hidden": 200}
    gap = run_gap(mnist_dir, device, batches, warmup=1, repeats=1, settings=settings)
    assert (gap["iterations"], gap["test_batches"], gap["test_images"]) == (10, 2, 500)
    assert gap["bare_ms_per_iteration"] > 0 and gap["in_run_ms_per_iteration"] > 0
    assert math.isclose(gap["bare_seconds"], gap["bare_ms_per_iteration"] * 10 / 1000)
    assert 0 < gap["test_batch_seconds"] + gap["evaluation_seconds"] < gap["run_seconds"]
    assert math.isclose(gap["gap"], gap["run_seconds"] / gap["bare_seconds"])
    lines = format_run_gap(gap)
    assert lines[0].startswith("a whole run against its bare iterations (tutorial-5, fused")
    assert "test batches (2, every 5 iterations)" in lines[3] and len(lines) == 7
    assert lines[-1] == f"  run / bare iterations: {gap['gap']:.2f}x"


def test_fc1_over_weight_sets_side_by_side_is_each_sets_product():
    torch.manual_seed(0)
    x = (torch.rand(32, 784) < 0.2) * torch.rand(32, 784)  # sparse, as MNIST
    weights = [torch.randn(784, 64, requires_grad=True) for _ in range(3)]
    biases = [torch.randn(64, requires_grad=True) for _ in range(3)]
    grads = [torch.randn(32, 64) for _ in range(3)]
    joined = torch.cat([w.detach() for w in weights], 1).requires_grad_()
    joined_bias = torch.cat([b.detach() for b in biases]).requires_grad_()
    together = sparse_linear(x, joined, joined_bias)
    together.backward(torch.cat(grads, 1))
    for k, (w, b, g) in enumerate(zip(weights, biases, grads, strict=True)):
        apart = sparse_linear(x, w, b)
        apart.backward(g)
        columns = slice(64 * k, 64 * (k + 1))
        torch.testing.assert_close(together[:, columns], apart)
        torch.testing.assert_close(joined.grad[:, columns], w.grad)
        torch.testing.assert_close(joined_bias.grad[columns], b.grad)


def test_the_grid_bench_times_fc1_alone_apart_and_together():
    torch.manual_seed(0)
    x = (torch.rand(32, 784) < 0.2) * torch.rand(32, 784)
    rows = fc1_together(x, hidden=64, groups=(1, 2), repeats=2, calls=2)
    assert [row["configurations"] for row in rows] == [1, 2]
    for row in rows:
        assert row["alone_ms"] > 0 and row["apart_ms"] > 0 and row["together_ms"] > 0
        per_config = row["together_ms"] / row["configurations"]
        assert math.isclose(row["together_vs_alone"], per_config / row["alone_ms"])
    lines = format_fc1_together(rows)
    assert "one product over the K weight sets side by side" in lines[0]
    assert lines[3].split()[0] == "2" and float(lines[3].split()[-1]) == pytest.approx(
        rows[1]["together_vs_alone"], abs=0.005
    )


def test_the_event_driven_products_equal_the_kernels_dense_ones():
    """What `harness bench --events` times event-driven computes fc2 and dL/dW2 as the
    kernel does, for silent, sparse and dense firing and a hidden size not a multiple of 8."""
    rng = np.random.default_rng(1)
    steps, samples, hidden = 6, 3, 1003
    w2 = rng.standard_normal((10, hidden)).astype(np.float32)
    b2 = rng.standard_normal(10).astype(np.float32)
    g2 = rng.standard_normal((steps, samples, 10)).astype(np.float32)
    index, count = np.empty((steps, hidden), np.int32), np.empty(steps, np.int64)
    for rate in (0.0, 0.03, 0.5, 1.0):
        spikes = (rng.random((steps, hidden)) < rate).astype(np.float32)
        spike_lists(spikes, index, count)
        assert count.tolist() == spikes.sum(1).astype(int).tolist()
        for t in range(steps):
            assert index[t, : count[t]].tolist() == np.flatnonzero(spikes[t]).tolist()
        dense, events = np.empty((steps, 10), np.float32), np.empty((steps, 10), np.float32)
        lif_scan._fc2_steps(spikes, w2, b2, dense)
        fc2_events(index, count, np.ascontiguousarray(w2.T), b2, events)
        np.testing.assert_allclose(events, dense, rtol=1e-5, atol=1e-4)
        gw2, gw2t = np.zeros((10, hidden), np.float32), np.zeros((hidden, 10), np.float32)
        lif_scan._weight_grads(g2, 1, spikes, gw2)
        weight_grads_events(g2, 1, index, count, gw2t)
        np.testing.assert_allclose(gw2t.T, gw2, rtol=1e-5, atol=1e-5)


def test_the_events_bench_reports_both_ways_at_each_rate():
    rows = events_against_dense(rates=(0.05, 0.3), samples=4, hidden=64, repeats=2, calls=2)
    assert [row["rate"] for row in rows] == [0.05, 0.3]
    for row in rows:
        assert min(row[k] for k in ("fc2_dense", "fc2_events", "dw2_dense", "dw2_events")) > 0
        assert math.isclose(row["fc2_ratio"], row["fc2_events"] / row["fc2_dense"])
    lines = format_events(rows, samples=4)
    assert "event-driven" in lines[0] and lines[3].split()[0] == "0.300"


def test_the_blocks_bench_times_each_block_size_and_they_compute_the_same_bits():
    torch.manual_seed(0)
    images = (torch.rand(16, 784) < 0.2) * torch.rand(16, 784)
    report = block_sizes(images, hidden=96, blocks=(16, 32), repeats=2, calls=2)
    chosen = _block_size(96)
    assert report["chosen"] == chosen and report["same_bits"] is True
    assert [row["block"] for row in report["rows"]] == sorted({16, 32, chosen})
    picked = next(row for row in report["rows"] if row["block"] == chosen)
    assert picked["vs_chosen"] == 1.0 and all(row["ms"] > 0 for row in report["rows"])
    out, grad_wt, grad_bias = forward_backward(
        images.numpy(), np.ones((784, 96), np.float32), np.zeros(96, np.float32),
        np.ones((16, 96), np.float32), 16,
    )  # fmt: skip
    np.testing.assert_allclose(out[:, 0], images.sum(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(grad_wt[:, 0], images.sum(0).numpy(), rtol=1e-5)
    assert grad_bias.tolist() == [16.0] * 96
    lines = format_block_sizes(report)
    assert "<- picked" in next(line for line in lines if line.split()[:1] == [str(chosen)])
    assert lines[-1] == "every block size gave the same bits: yes"


def test_the_listing_bench_times_a_training_iteration_both_ways_for_each_decoding():
    generator = torch.Generator().manual_seed(0)
    batches = [
        ((torch.rand(16, 784, generator=generator) > 0.8).float(),
         torch.randint(0, 10, (16,), generator=generator))
        for _ in range(6)
    ]  # fmt: skip
    rows = listing_against_dense(batches, trained=(0, 2), iterations=4, round_size=2)
    assert [(r["decoding"], r["trained"]) for r in rows] == [
        ("rate", 0), ("rate", 2), ("latency", 0), ("latency", 2)
    ]  # fmt: skip
    for r in rows:
        assert r["dense"] > 0 and r["listed"] > 0 and 0 < r["may_fire"] < 1
        assert math.isclose(r["ratio"], r["listed"] / r["dense"])
    assert lif_scan.COMPACT_SHARE == 0.5  # put back
    lines = format_listing(rows)
    assert len(lines) == 2 + len(rows) and lines[2].split()[:2] == ["rate", "0"]
