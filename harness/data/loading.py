"""Reading a data set's IDX files into tensors, subsets, and the batches of training and
evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.acquire import acquire, default_data_dir, raw_dir
from harness.data.datasets import DEFAULT_DATASET
from harness.errors import DataError


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
    name: str = DEFAULT_DATASET  # which data set of DATASETS the checksum is of


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


def read_split(data_dir: Path, prefix: str, dataset: str = DEFAULT_DATASET) -> Split:
    """Read `train` or `t10k` images and labels from the raw folder into CPU tensors."""
    folder = raw_dir(data_dir, dataset)
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
    dataset: str = DEFAULT_DATASET,
) -> Dataset:
    """Load a verified data set (acquiring it if needed) onto `device`, optionally subsetted."""
    data_dir = Path(data_dir or default_data_dir())
    checksum = acquire(data_dir, dataset)
    train = subset(read_split(data_dir, "train", dataset), train_subset, sampling, seed)
    test = subset(read_split(data_dir, "t10k", dataset), test_subset, sampling, seed)
    return Dataset(train.to(device), test.to(device), checksum, dataset)


Batch = tuple[torch.Tensor, torch.Tensor]


def train_batches(split: Split, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """One epoch of shuffled batches, the last partial one dropped (the tutorial's drop_last)."""
    order = torch.randperm(len(split), generator=generator).to(split.images.device)
    count = len(split) // batch_size
    for idx in order[: count * batch_size].view(count, batch_size):
        yield split.images[idx], split.labels[idx]


def test_batches(split: Split, batch_size: int) -> Iterator[Batch]:
    """The whole split in order, in batches (the last one may be smaller)."""
    for i in range(0, len(split), batch_size):
        yield split.images[i : i + batch_size], split.labels[i : i + batch_size]
