"""`harness dashboard`: optuna-dashboard on a real study's stores, bound to 127.0.0.1, the
objective's name on its page in headless Chromium, every write refused, and a stop signal
(SIGTERM, SIGINT, SIGHUP) that ends it with 128 + the signal and nothing left listening."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from harness.cli import main
from harness.ui.dashboard import READS, WRITES, ReadOnlyError, ReadOnlyStorage
from tests.helpers import ROOT, chromium_page, free_port, run_cli, write_study


@pytest.fixture(scope="module")
def out(tmp_path_factory, mnist_dir) -> Path:
    """The stores of a tiny real study (a grid of two betas, one seed each)."""
    folder = tmp_path_factory.mktemp("dashboard")
    path = write_study(folder, "dash", space={"beta": [0.8, 0.95]})
    done = run_cli("study", str(path), "--output-dir", str(folder / "out"),
                   "--data-dir", str(mnist_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder / "out"


def _start(port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "dashboard", "--port", str(port), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _call(port: int, path: str, method: str = "GET", body: dict | None = None):
    """(HTTP status, JSON body) of a request to the dashboard's API."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _wait_for_studies(server: subprocess.Popen, port: int, seconds: float = 90) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            status, body = _call(port, "/api/studies")
            assert status == 200
            return body["study_summaries"]
        except (urllib.error.URLError, ConnectionError):
            assert server.poll() is None, f"the dashboard ended: {server.stderr.read()}"
            assert time.monotonic() < deadline, "the dashboard never answered"
            time.sleep(0.3)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (from /proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def _stop(server: subprocess.Popen, how: signal.Signals) -> tuple[int, str]:
    server.send_signal(how)
    try:
        code = server.wait(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return code, server.stderr.read()


def _closed(port: int) -> bool:
    with socket.socket() as sock:  # nothing holds the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return _listening_addresses(port) == set()


@pytest.mark.chromium
@pytest.mark.mnist
@pytest.mark.postgres
@pytest.mark.processes
def test_dashboard_shows_the_study_with_its_metric_read_only(out, tmp_path):
    live = tmp_path / "live"  # the study with a trial still running, as a worker leaves it
    live.mkdir()
    shutil.copy(out / "optuna.journal", live / "optuna.journal")
    storage = JournalStorage(JournalFileBackend(str(live / "optuna.journal")))
    running = optuna.load_study(study_name="dash", storage=storage).ask().number
    journal = (live / "optuna.journal").read_bytes()
    port = free_port()
    server = _start(port, "--output-dir", str(live))
    try:
        first = server.stdout.readline()
        assert f"http://127.0.0.1:{port}/dashboard" in first and "read-only" in first
        studies = _wait_for_studies(server, port)
        assert [s["study_name"] for s in studies] == ["dash"]
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        study_id = studies[0]["study_id"]
        status, detail = _call(port, f"/api/studies/{study_id}")
        assert status == 200 and detail["objective_names"] == ["test_accuracy"]
        values = [p["param_external_value"] for t in detail["trials"] for p in t["params"]]
        assert sorted(values) == ["0.8", "0.95"]
        assert {t["state"] for t in detail["trials"]} == {"Complete", "Running"}

        # Every change is refused, and says why.
        status, body = _call(port, f"/api/studies/{study_id}", "DELETE")
        assert status == 403 and "read-only" in body["reason"]
        created = _call(
            port, "/api/studies", "POST", {"study_name": "x", "directions": ["minimize"]}
        )
        assert created[0] == 403
        noted = _call(port, f"/api/studies/{study_id}/note", "PUT", {"version": 1, "body": "x"})
        assert noted[0] == 403
        assert [s["study_name"] for s in _wait_for_studies(server, port)] == ["dash"]

        with chromium_page(1400, 1000) as page:
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}")
            # The history plot's axis names the metric, as the objective selector does.
            axis = page.locator("text.ytitle", has_text="test_accuracy").first
            axis.wait_for(state="visible", timeout=60_000)
            assert axis.text_content() == "test_accuracy"
            assert page.get_by_text("Objective 0").count() == 0
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # It looks read-only: the controls that write are hidden, a corner says why.
            page.goto(f"http://127.0.0.1:{port}/dashboard")
            page.get_by_text("RELOAD").or_(page.get_by_text("Reload")).first.wait_for()
            # (the study's card, with its buttons, comes after the page: wait for them)
            for control in ("rename study", "delete study"):
                page.get_by_label(control).wait_for(state="attached", timeout=60_000)
                assert page.get_by_label(control).count() == 1
                assert not page.get_by_label(control).is_visible()
            create = page.locator("button:has(svg[data-testid=AddBoxIcon])")
            create.wait_for(state="attached")
            assert create.count() == 1 and not create.is_visible()
            notice = page.evaluate("getComputedStyle(document.body, '::after').content")
            assert notice == '"read-only: started by harness dashboard"'

            # A trial's page keeps the window's width: one short line a seed run.
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/trials")
            page.get_by_text("seed 0", exact=False).first.wait_for(timeout=60_000)
            assert page.get_by_text("finished, run ").count() >= 1
            assert page.evaluate("document.documentElement.scrollWidth") <= 1400
            edit_note = page.locator("button:has(svg[data-testid=EditIcon])")
            edit_note.wait_for(state="attached", timeout=60_000)
            assert edit_note.count() == 1 and not edit_note.is_visible()
            page.get_by_text(f"Trial {running}", exact=True).click()
            page.get_by_text(f"Trial {running} (trial_id=", exact=False).wait_for()
            fail = page.locator("button:has(svg[data-testid=StopCircleIcon])")
            fail.wait_for(state="attached", timeout=60_000)
            assert fail.count() == 1 and not fail.is_visible()  # "Fail Trial"
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000

        code, stderr = _stop(server, signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert code == 128 + signal.SIGTERM
    assert stderr.splitlines()[-1] == "interrupted: stopped by SIGTERM"
    assert _closed(port)
    assert (live / "optuna.journal").read_bytes() == journal  # the study as it was


@pytest.mark.postgres
@pytest.mark.processes
@pytest.mark.filterwarnings("ignore:.*set_metric_names is experimental")
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_a_stop_signal_ends_the_dashboard_on_a_database(how, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="db", storage=url, direction="minimize")
    study.set_metric_names(["test_loss"])
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda t: t.suggest_float("x", 0, 2) ** 2, n_trials=1)
    port = free_port()
    server = _start(port, "--storage", url)
    try:
        studies = _wait_for_studies(server, port)
        assert [s["study_name"] for s in studies] == ["db"]
        status, detail = _call(port, f"/api/studies/{studies[0]['study_id']}")
        assert detail["objective_names"] == ["test_loss"]
        assert [t["values"] for t in detail["trials"]] == [[1.0]]
        code, stderr = _stop(server, how)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert code == 128 + how
    assert stderr.splitlines()[-1] == f"interrupted: stopped by {how.name}"
    assert _closed(port)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    return captured.err


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_a_bad_port_is_one_line(port, tmp_path, capsys):
    assert main(["dashboard", "--port", port, "--output-dir", str(tmp_path / "out")]) == 2
    assert "--port: must be a TCP port 1..65535" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.mnist
@pytest.mark.processes
def test_a_busy_port_is_one_line(out, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["dashboard", "--port", str(port), "--output-dir", str(out)]) == 1
    assert f"error: port {port} on 127.0.0.1 is in use" in _one_error_line(capsys)


def test_missing_stores_are_one_line_and_nothing_is_made(tmp_path, capsys):
    port = str(free_port())
    assert main(["dashboard", "--port", port, "--output-dir", str(tmp_path / "none")]) == 1
    assert f"no Optuna journal at {tmp_path / 'none' / 'optuna.journal'}" in _one_error_line(capsys)
    assert not (tmp_path / "none").exists()
    database = tmp_path / "none.db"
    assert main(["dashboard", "--port", port, "--storage", f"sqlite:///{database}"]) == 1
    assert f"no Optuna database at {database}" in _one_error_line(capsys)
    assert not database.exists()
    database.write_bytes(b"not a database")
    assert main(["dashboard", "--port", port, "--storage", f"sqlite:///{database}"]) == 1
    assert "file is not a database" in _one_error_line(capsys)
    assert database.read_bytes() == b"not a database"
    assert main(["dashboard", "--port", port, "--storage", "nosuch://h/db"]) == 2
    assert "--storage: 'nosuch' is not an Optuna storage" in _one_error_line(capsys)


@pytest.mark.mnist
@pytest.mark.processes
def test_the_read_only_storage_reads_all_and_writes_nothing(out):
    public = {name for name in dir(BaseStorage) if not name.startswith("_")}
    assert set(READS) | set(WRITES) == public and not set(READS) & set(WRITES)
    journal = out / "optuna.journal"
    before = journal.read_bytes()
    inner = JournalStorage(JournalFileBackend(str(journal)))
    storage = ReadOnlyStorage(inner)
    study = optuna.load_study(study_name="dash", storage=storage)
    assert study.metric_names == ["test_accuracy"]
    assert [t.params for t in study.trials] == [
        t.params for t in optuna.load_study(study_name="dash", storage=inner).trials
    ]
    assert study.best_trial.state == TrialState.COMPLETE
    # Each seed's run shows as one short line; the rest of the attributes as they are.
    stored = optuna.load_study(study_name="dash", storage=inner).trials[0].user_attrs
    shown = study.trials[0].user_attrs
    (run,) = stored["runs"]
    assert shown["seed 0"] == f"finished, run {run['run_id']}"
    assert "runs" not in shown and "mlflow_run_ids" not in shown
    assert shown["mlflow_parent_run_id"] == stored["mlflow_parent_run_id"]
    assert storage.get_trial_user_attrs(study.trials[0]._trial_id) == shown
    trial_id = study.trials[0]._trial_id
    for write in (
        lambda: study.set_user_attr("x", 1),
        lambda: study.ask(),
        lambda: storage.set_trial_state_values(trial_id, TrialState.FAIL),
        lambda: optuna.delete_study(study_name="dash", storage=storage),
    ):
        with pytest.raises(ReadOnlyError) as refused:
            write()
        assert refused.value.status_code == 403
    assert journal.read_bytes() == before
