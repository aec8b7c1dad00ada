import json
import math
import subprocess
import sys

from harness.bench import peak_memory_mb
from harness.config import make_run_config
from harness.train import resolve_device


def test_bench_cli_reports_both_backends_side_by_side(mnist_dir):
    command = [
        sys.executable, "-m", "harness", "bench", "--quick", "--iterations", "3",
        "--warmup", "1", "--device", "cpu", "--data-dir", str(mnist_dir), "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ratio (tutorial-5 settings, rate)" in done.stdout
    (case,) = report["cases"]
    ms = case["ms_per_iteration"]
    assert set(ms) == {"reference", "fused"} and all(v > 0 for v in ms.values())
    assert math.isclose(report["ratio"], ms["reference"] / ms["fused"])
    assert math.isclose(case["epoch_seconds"]["fused"], ms["fused"] * 468 / 1000)


def test_fused_step_needs_less_memory_than_the_reference():
    device = resolve_device("cpu")
    settings = {"hidden": 300, "num_steps": 25, "device": "cpu"}
    fused = peak_memory_mb(make_run_config({**settings, "backend": "fused"}), device)
    reference = peak_memory_mb(make_run_config({**settings, "backend": "reference"}), device)
    assert 0 <= fused < reference


def test_bench_rejects_a_bad_device_with_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", "harness", "bench", "--device", "gpu"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "'device'" in done.stderr and done.stdout == ""
