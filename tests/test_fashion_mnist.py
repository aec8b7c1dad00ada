"""Fashion-MNIST: acquired from the Debian package's files, verified, and trained on."""

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.data import acquire, loading
from harness.data.datasets import DATASETS
from harness.errors import DataError
from tests.helpers import ROOT

SPEC = DATASETS["fashion_mnist"]
pytestmark = pytest.mark.skipif(
    SPEC.debian_dir is None or not SPEC.debian_dir.is_dir(),
    reason=f"needs the Debian package {SPEC.debian} (make install)",
)


def _offline(spec, data_dir):
    return "offline (test)"


def _from_debian(data_dir: Path) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(acquire, "_from_torchvision", _offline)
        return acquire.acquire(data_dir, "fashion_mnist")


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST copied from the Debian package's files into a fresh data folder."""
    folder = tmp_path_factory.mktemp("fashion")
    _from_debian(folder)
    return folder


def test_acquisition_copies_and_verifies_the_debian_package_files(fashion_dir, capsys):
    folder = acquire.raw_dir(fashion_dir, "fashion_mnist")
    assert folder == fashion_dir / "FashionMNIST" / "raw"
    for name, md5 in SPEC.raw_md5.items():
        assert acquire.file_md5(folder / name) == md5
    checksum = acquire.verify(fashion_dir, "fashion_mnist")
    assert re.fullmatch(r"[0-9a-f]{32}", checksum)
    # Files there are used as they are: nothing is tried again.
    assert acquire.acquire(fashion_dir, "fashion_mnist") == checksum
    assert "trying" not in capsys.readouterr().err


def test_acquisition_says_each_source_it_tries(tmp_path, capsys):
    _from_debian(tmp_path)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "Fashion-MNIST: trying torchvision's download ...",
        "Fashion-MNIST: torchvision's download failed: offline (test)",
        f"Fashion-MNIST: trying Debian package {SPEC.debian} ...",
        f"Fashion-MNIST: fetched into {acquire.raw_dir(tmp_path, 'fashion_mnist')} "
        f"from Debian package {SPEC.debian}, checksums verified",
    ]


def test_a_corrupted_file_is_a_one_line_data_error(fashion_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fashion_dir, copy)
    path = acquire.raw_dir(copy, "fashion_mnist") / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as caught:
        loading.load(copy, torch.device("cpu"), dataset="fashion_mnist")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Fashion-MNIST file corrupt: ") and str(path) in message
    assert "harness data --dataset fashion_mnist" in message


def test_without_the_package_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    gone = dataclasses.replace(SPEC, debian_dir=tmp_path / "not-installed")
    monkeypatch.setitem(DATASETS, "fashion_mnist", gone)
    monkeypatch.setattr(acquire, "_from_torchvision", _offline)
    with pytest.raises(DataError) as caught:
        acquire.acquire(tmp_path / "data", "fashion_mnist")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("Fashion-MNIST not found in ")
    assert f"apt-get install {SPEC.debian}" in message


def test_its_test_labels_have_a_thousand_images_per_class(fashion_dir):
    dataset = loading.load(fashion_dir, torch.device("cpu"), dataset="fashion_mnist")
    assert dataset.name == "fashion_mnist"
    assert len(dataset.train) == SPEC.train_size and len(dataset.test) == SPEC.test_size
    assert torch.bincount(dataset.test.labels).tolist() == [1000] * SPEC.classes
    assert torch.bincount(dataset.train.labels).tolist() == [6000] * SPEC.classes
    mnist_checksum = "f85aa589f05f099f408a1805d8a18637"  # what MNIST's four files give
    assert dataset.checksum != mnist_checksum


@pytest.mark.processes
def test_harness_data_acquires_it(fashion_dir):
    done = subprocess.run(
        [sys.executable, "-m", "harness", "data", "--dataset", "fashion_mnist",
         "--data-dir", str(fashion_dir)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    checksum = acquire.verify(fashion_dir, "fashion_mnist")
    raw = acquire.raw_dir(fashion_dir, "fashion_mnist")
    assert done.stdout.strip() == f"Fashion-MNIST ready in {raw} (checksum {checksum})"


@pytest.mark.processes
def test_training_on_a_small_subset_beats_chance(fashion_dir):
    done = subprocess.run(
        [sys.executable, "-m", "harness", "train", "--data-dir", str(fashion_dir),
         "--set", "dataset=fashion_mnist", "--set", "train_subset=640",
         "--set", "test_subset=300", "--set", "hidden=50", "--set", "num_steps=5",
         "--set", "device=cpu"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("finished: ")
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", done.stdout).group(1))
    assert accuracy > 0.2, done.stdout  # chance is 0.1


@pytest.mark.mnist
@pytest.mark.processes
def test_a_study_varying_the_dataset_loads_each_for_its_runs(fashion_dir, mnist_dir, tmp_path):
    from tests.helpers import TINY, run_cli, seed_runs, stores_of, write_study

    both = tmp_path / "data"
    shutil.copytree(
        acquire.raw_dir(fashion_dir, "fashion_mnist"), acquire.raw_dir(both, "fashion_mnist")
    )
    acquire.raw_dir(both).parent.mkdir(parents=True)
    acquire.raw_dir(both).symlink_to(acquire.raw_dir(mnist_dir).resolve())
    base = {**TINY, "hidden": 20, "num_steps": 3, "device": "cpu"}
    path = write_study(tmp_path, "twodata", base=base, space={"dataset": list(DATASETS)})
    out = tmp_path / "out"
    done = run_cli("study", str(path), "--output-dir", str(out), "--data-dir", str(both))
    assert done.returncode == 0, done.stderr
    _, client = stores_of(out)
    runs = seed_runs(client, "twodata")
    assert sorted(run.data.params["dataset"] for run in runs) == sorted(DATASETS)
    for run in runs:
        name = run.data.params["dataset"]
        assert run.data.tags["harness.dataset"] == name
        assert run.data.tags["harness.data_checksum"] == acquire.verify(both, name)
        inputs = sorted(d.dataset.name for d in run.inputs.dataset_inputs)
        assert inputs == [f"{name}-test-300", f"{name}-train-640"]
    report = run_cli("report", str(path), "--output-dir", str(out),
                     "--reports-dir", str(tmp_path / "reports"))  # fmt: skip
    assert report.returncode == 0, report.stderr
    reports = (tmp_path / "reports").rglob("*")
    texts = [p.read_text(errors="replace") for p in reports if p.suffix in (".html", ".md")]
    for name in DATASETS:
        line = f"data checksum ({name}): {acquire.verify(both, name)}"
        assert any(line in text for text in texts), line
