"""The CLI in a process of its own, forked from a server that has already imported the heavy
libraries (torch, MLflow, Optuna, numba, pandas, SciPy): its own pid, signals, exit code,
stdout and stderr, without five seconds of imports a start.

The fork server imports third-party libraries only, never `harness` (whose modules read
environment variables when imported): each process imports the harness afresh, under the
environment the test gives it. Tests of what happens while the interpreter starts, and of
`python -m harness` itself, start a plain `subprocess` instead.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from itertools import count
from multiprocessing import forkserver
from pathlib import Path

PRELOAD = [
    "torch", "torch._dynamo", "torch.optim", "mlflow", "mlflow.tracking", "optuna", "numba",
    "numpy", "pandas", "scipy.stats", "statsmodels.stats.power", "sqlalchemy", "yaml",
    "pydantic", "jinja2", "matplotlib", "matplotlib.pyplot", "seaborn",
]  # fmt: skip

# Tests run two at a time on two cores (make test): each process on one thread. Two processes
# of two threads each on two cores wait on each other's OpenMP and numba threads (3x slower).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)
_LOGS = Path(tempfile.mkdtemp(prefix="harness-cli-"))  # the processes' stdout and stderr
atexit.register(shutil.rmtree, _LOGS, ignore_errors=True)
_numbers = count()


def _start_server() -> None:
    """Start the fork server, its imports done under ONE_THREAD (numba reads its thread count
    when imported)."""
    saved = dict(os.environ)
    os.environ.update(ONE_THREAD)
    try:
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _main(args: list[str], cwd: str, env: dict[str, str], out: str, err: str, patch: str) -> None:
    """What `python -m harness ARGS` does, in the forked process (`patch`: code run first)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    sys.argv = ["harness", *args]
    try:
        if patch:
            exec(compile(patch, "<patch>", "exec"), {"__name__": "__patch__"})
        from harness.cli import main

        code = main(args)
    except KeyboardInterrupt:
        code = 130
    finally:
        atexit._run_exitfuncs()  # as the interpreter does at exit (a forked child skips it)
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


class CliProcess:
    """A running `harness` command, used like `subprocess.Popen` with text output."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        patch: str = "",
    ):
        stem = _LOGS / f"{os.getpid()}-{next(_numbers)}"
        self.out_path, self.err_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        self.args = args
        environment = {**os.environ, **ONE_THREAD, **(env or {})}
        _start_server()
        self._process = _context.Process(
            target=_main,
            args=(args, str(cwd), environment, str(self.out_path), str(self.err_path), patch),
        )
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(["harness", *self.args], timeout)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text() if self.out_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.err_path.read_text() if self.err_path.exists() else ""

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout, self.stderr
