"""`harness ui`: a bad or busy port is one line before anything starts; a stop signal
(SIGHUP when its terminal closes, SIGTERM, SIGINT) ends the MLflow server's whole process
group and exits 128 + the signal (which `make ui` takes as the normal end); a server that
dies by itself makes the UI fail."""

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from harness.cli import main
from tests.helpers import ROOT, free_port


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    return captured.err


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_out_of_range_is_refused(port, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ui", "--port", port, "--output-dir", str(out)]) == 2
    assert "--port: must be a TCP port 1..65535" in _one_error_line(capsys)
    assert not out.exists()


def test_a_port_in_use_is_one_line_before_the_server_starts(tmp_path, capsys):
    out = tmp_path / "out"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["ui", "--port", str(port), "--output-dir", str(out)]) == 1
    assert f"error: port {port} on 127.0.0.1 is in use" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.processes
def test_a_server_that_stops_by_itself_fails_the_ui(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # the database's folder cannot be made under a file
    done = subprocess.run(
        [sys.executable, "-m", "harness", "ui", "--port", str(free_port()),
         "--tracking-uri", f"sqlite:///{blocker}/mlflow.db"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1].startswith("error: the MLflow server on http://127.0.0.1:")


@pytest.mark.processes
@pytest.mark.parametrize("how", ["SIGHUP", "SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_whole_server(how, tmp_path):
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "harness", "ui", "--output-dir", str(tmp_path / "out"),
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _answers(port):
            assert ui.poll() is None, "the UI ended before it served"
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.5)
        sent = time.monotonic()
        ui.send_signal(getattr(signal, how))
        while _answers(port):  # the server (uvicorn, a child of `mlflow server`) is gone
            assert time.monotonic() - sent < 20, "the server still answers"
            time.sleep(0.5)
        assert ui.wait(timeout=30) == 128 + getattr(signal, how)
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
    with socket.socket() as sock:  # and nothing holds the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


@pytest.mark.processes
def test_make_ui_stopped_by_a_signal_is_no_error_of_make_s(tmp_path):
    port = free_port()
    make = subprocess.Popen(
        ["make", "ui", f"ARGS=--port {port} --output-dir {tmp_path / 'out'}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _answers(port):
            assert make.poll() is None and time.monotonic() < deadline, "the UI never served"
            time.sleep(0.5)
        ui = subprocess.run(  # the harness process, not make or its shell
            ["pgrep", "-f", f"^.venv/bin/python -m harness ui --port {port} "],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(ui) == 1
        subprocess.run(["kill", "-TERM", ui[0]], check=True)
        out, _ = make.communicate(timeout=60)
    finally:
        if make.poll() is None:
            make.kill()
            make.wait()
    assert make.returncode == 0, out
    assert "stopped by SIGTERM" in out and "Error" not in out and "Warning" not in out
    assert "workflowType=machine_learning" in out
