"""What several test modules share: the tiny study settings, writing a study file, running the
CLI in a process, reading a study's stores, waiting for servers and runs, synthetic images,
twin networks and a headless Chromium."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import optuna
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.config import make_run_config
from harness.network import readout
from harness.network.model import FusedNet, build_model
from harness.stores.opening import open_stores
from tests.launcher import CliProcess

ROOT = Path(__file__).resolve().parent.parent


TINY = {
    "train_subset": 640, "test_subset": 300, "subset_sampling": "stratified",
    "hidden": 100, "num_steps": 10, "eval_every": 5, "batch_size": 32,
}  # fmt: skip


# Runs of a few seconds (snnTorch's loop, about 30 iterations), so that a signal, a pause or a
# kill sent once a run has started lands in its training.
SLOW = {"backend": "reference", "train_subset": 4000, "hidden": 300, "num_steps": 25}


def write_study(folder: Path, name: str, **fields) -> Path:
    body = {"name": name, "base": {**TINY, **fields.pop("base", {})}, **fields}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def run_cli(
    *args: str, timeout: int = 300, env: dict[str, str] | None = None, patch: str = ""
) -> subprocess.CompletedProcess:
    """`harness ARGS` in a process of its own (see tests/launcher.py), to its end."""
    process = CliProcess(list(args), ROOT, env=env, patch=patch)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
        raise subprocess.TimeoutExpired(["harness", *args], timeout) from None
    return subprocess.CompletedProcess(["harness", *args], code, process.stdout, process.stderr)


def stores_of(out: Path):
    stores = open_stores(out)
    return stores, MlflowClient(stores.tracking_uri)


def seed_runs(client: MlflowClient, name: str, parents: bool = False) -> list:
    """A study's runs of seeds (children), or with `parents` its configurations' runs."""
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if ("mlflow.parentRunId" in r.data.tags) != parents]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_json(url: str, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def start_study(
    path: Path, out: Path, mnist_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> CliProcess:
    """`harness study PATH` started in a process of its own, not waited for."""
    args = ["study", str(path), "--output-dir", str(out), "--data-dir", str(mnist_dir), *flags]
    return CliProcess(args, ROOT, env=env)


def wait_for_running_run(out: Path, name: str, seconds: float = 120) -> str:
    """The MLflow run of a trial that is running, read from Optuna's journal (reading the
    SQLite database while the study may still be creating it would race its set-up)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (out / "optuna.journal").exists():
            storage = open_stores(out).storage
            if name in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
                study = optuna.load_study(study_name=name, storage=storage)
                for trial in study.get_trials(states=(TrialState.RUNNING,)):
                    if trial.user_attrs.get("mlflow_run_ids"):
                        return trial.user_attrs["mlflow_run_ids"][0]
        time.sleep(0.3)
    raise TimeoutError("no run started")


def pause_between_writes(process, out: Path, tries: int = 200) -> None:
    """SIGSTOP a study's process at a moment it holds no store's write lock. A process paused
    inside a write keeps the lock: every other worker waits on it (SQLite) or, after Optuna's
    30 s grace period, breaks it and the paused one dies on waking (the journal). Those are
    faults of their own; a test of a paused worker's trial wants a pause in training."""
    journal_lock = out / "optuna.journal.lock"
    for _ in range(tries):
        process.send_signal(signal.SIGSTOP)
        if not journal_lock.is_symlink() and not _sqlite_write_locked(out / "mlflow.db"):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise TimeoutError(f"the process held a store's write lock at each of {tries} pauses")


def _sqlite_write_locked(path: Path) -> bool:
    """Does another connection hold the write lock of the SQLite database at `path`?"""
    with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as db:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                return True
            raise
        db.execute("ROLLBACK")
    return False


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an idx file of unsigned bytes (the MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is a bright horizontal band (row 2 + 2 * label), plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package (make install)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@contextmanager
def chromium_page(width: int, height: int) -> Iterator:
    """A page of headless Chromium (driven by Playwright), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def twin_models(kernel="auto", **settings):
    config = make_run_config({"hidden": 64, **settings})
    torch.manual_seed(1)
    reference = build_model(config.model_copy(update={"backend": "reference"}))
    fused = FusedNet(config, kernel=kernel)
    fused.fc1.load_state_dict(reference.fc1.state_dict())
    fused.fc2.load_state_dict(reference.fc2.state_dict())
    return config, reference, fused


def run(model, config, images, labels):
    model.zero_grad()
    out = model(images)
    loss = readout.loss(config.decoding, out.spikes, out.membranes, labels)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    if "fc1.weight_t" in grads:  # the fused fc1 keeps its weight transposed
        grads["fc1.weight"] = grads.pop("fc1.weight_t").t()
    return out, loss.detach(), grads


def assert_same(config, reference, fused, inputs, labels, membranes_to_scale=False):
    """Spikes equal away from the threshold, membranes and loss to 1e-6, gradients to 1e-5.
    `membranes_to_scale`: membranes to 1e-6 of their largest magnitude (as the gradients),
    where fc2's reassociated sums feed a Synaptic output layer: it integrates them twice
    (current, then membrane), up to |U| ~ 100, and float32 rounding grows with it."""
    ref_out, ref_loss, ref_grads = run(reference, config, inputs, labels)
    out, loss, grads = run(fused, config, inputs, labels)

    assert ref_out.spikes.sum() > 0  # the comparison is not vacuous
    near_threshold = (ref_out.membranes - config.threshold).abs() < 1e-6
    assert torch.equal(out.spikes[~near_threshold], ref_out.spikes[~near_threshold])
    # 1e-6, relative where |U| > 1: float32 spacing at |U| = 8 is already 9.5e-7.
    scale = float(ref_out.membranes.detach().abs().max()) if membranes_to_scale else 1.0
    torch.testing.assert_close(out.membranes, ref_out.membranes, rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for name, ref_grad in ref_grads.items():
        assert ref_grad.abs().max() > 0, name
        scale = float(ref_grad.abs().max())
        torch.testing.assert_close(grads[name], ref_grad, rtol=1e-5, atol=1e-5 * scale)


def images_and_labels(seed=2, batch=32):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 784, generator=generator) * 1.5
    labels = torch.randint(0, 10, (batch,), generator=generator)
    return images, labels


def assert_refused(code: int, capsys, *untouched: Path) -> str:
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    for path in untouched:
        assert not path.exists()
    return captured.err
