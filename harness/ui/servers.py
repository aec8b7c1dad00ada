"""`harness ui` and `harness dashboard`: MLflow's UI and Optuna's dashboard over a study's
stores, bound to a free port, stopped cleanly with their process group.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from harness.errors import ConfigError
from harness.stores.urls import check_store_urls

MODEL_TRAINING_VIEW = "machine_learning"  # MLflow's UI: WorkflowType.MACHINE_LEARNING


def serve_ui(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from harness import interrupt
    from harness.stores.layout import default_tracking_uri, resolve_output_dir

    check_store_urls(None, args.tracking_uri, optuna=False)
    problem = _cannot_listen(args.host, args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    tracking_uri = args.tracking_uri or default_tracking_uri(resolve_output_dir(args.output_dir))
    # MLflow 3.17 opens in its GenAI view unless the link asks for the model-training one
    # (its UI reads `workflowType` from the link, else the browser's last choice, else genai).
    url = f"http://{args.host}:{args.port}/#/experiments?workflowType={MODEL_TRAINING_VIEW}"
    print(f"MLflow UI on {tracking_uri}: {url} (Ctrl-C stops it)", flush=True)
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
        "--registry-store-uri", tracking_uri,  # (said, or MLflow prints that it assumed it)
        "--host", args.host, "--port", str(args.port), "--workers", "1",
    ]  # fmt: skip
    # MLflow 3.17 otherwise starts seven job-consumer processes (~285 MiB each) for features
    # the harness never uses; the deprecation warnings it prints are for MLflow's developers.
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONWARNINGS": os.environ.get(
            "PYTHONWARNINGS", "ignore::DeprecationWarning,ignore:starlette.middleware.wsgi"
        ),
    }
    # A stop signal (SIGHUP: its terminal closed) is only recorded; the loop below acts on it,
    # so it never lands half-way through starting or stopping the server.
    interrupt.install()
    # `mlflow server` runs uvicorn as a child and does not pass signals on: give the server a
    # process group of its own and end the whole group, so stopping the UI leaves nothing.
    server = subprocess.Popen(command, start_new_session=True, env=env)
    try:
        while interrupt.received() is None:
            try:
                code = server.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            print(
                f"error: the MLflow server on {url} stopped by itself with exit code {code} "
                "(its messages are above)", file=sys.stderr,
            )  # fmt: skip
            return code if code > 0 else 128 - code if code < 0 else 1
    finally:
        stop_process_group(server)
    interrupt.check()
    return 0


def serve_dashboard(args: argparse.Namespace) -> int:
    import threading

    from harness import interrupt

    check_store_urls(args.storage, tracking=False)
    problem = _cannot_listen(args.host, args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    from harness.ui.dashboard import make_server, open_storage

    storage, description = open_storage(args.output_dir, args.storage)
    try:
        server = make_server(storage, args.host, args.port)
    except OSError as err:  # taken since _cannot_listen looked
        print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror}", file=sys.stderr)
        return 1
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address
    url = f"http://{host}:{args.port}/dashboard"
    print(f"optuna-dashboard (read-only) on {description}: {url} (Ctrl-C stops it)", flush=True)
    # A stop signal is only recorded; the loop below shuts the server down and exits 128 + it.
    interrupt.install()
    serving = threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True)
    serving.start()
    try:
        while interrupt.received() is None and serving.is_alive():
            time.sleep(0.2)
    finally:
        server.shutdown()
        server.server_close()  # nothing left listening
    interrupt.check()
    print("error: the dashboard's server stopped by itself", file=sys.stderr)
    return 1


def _cannot_listen(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port (in use, say), or None if it can."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise ConfigError(f"--host: cannot resolve {host!r} ({err.strerror})") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is in use (stop what holds it or pick another --port)"
                )
            return f"cannot listen on {host}:{port}: {err.strerror}"
    return None


def stop_process_group(process) -> None:
    """SIGTERM a process's group (its own session), then SIGKILL whatever is left."""
    import os
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)  # the group outlives its leader if a child lingers
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # let the children take the signal too
