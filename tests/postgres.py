"""A throwaway PostgreSQL server on 127.0.0.1 (Debian's package) for the scale-out tests:
databases made on demand, and the server stopped, started or restarted at will."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_port


class Server:
    """One PostgreSQL cluster in a temporary folder, user `harness`, trust authentication."""

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        assert binaries, "PostgreSQL is not installed: run `make install`"
        missing = [d for d in ("psycopg2", "psycopg") if importlib.util.find_spec(d) is None]
        assert not missing, f"no PostgreSQL driver {missing}: pip install -e '.[dev,postgres]'"
        self.bin = Path(binaries[-1])
        self.root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="harness-pg-", dir="/tmp"))
        self.base.chmod(0o755)
        if self.root:
            shutil.chown(self.base, "postgres")
        self.port = free_port()
        self.data = self.base / "data"
        self.url = f"postgresql://harness@127.0.0.1:{self.port}"
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "harness", "--no-sync")
        self.start()

    def run(self, program: str, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.root else []
        subprocess.run(
            [*prefix, str(self.bin / program), *args], check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-o", options,
                 "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def createdb(self, name: str) -> str:
        """A new empty database; its URL."""
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "harness", name)
        return f"{self.url}/{name}"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
