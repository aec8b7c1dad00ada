"""Which workers are alive: a trial of a dead worker (its process gone on this host, its
heartbeat stale on another) is failed, its unfinished MLflow runs killed and tagged."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.study.settled import OUTCOME, all_run_ids
from harness.study.tags import FAILED_TAG, MESSAGE_TAG, STATUS_TAG, TRIAL_TAG
from harness.study.tracking import search_all_runs

# A RUNNING trial of another host is dead when its heartbeat is older than this; on this host,
# when its process is gone. The heartbeat comes from a thread, so slow training is not death.
STALE_SECONDS = float(os.environ.get("HARNESS_STALE_SECONDS", "120"))


WAIT_SECONDS = float(os.environ.get("HARNESS_WAIT_SECONDS", "2"))  # polling for other workers


def worker_host() -> str:
    """This machine's name as workers record it ($HARNESS_WORKER_HOST overrides it)."""
    return os.environ.get("HARNESS_WORKER_HOST") or socket.gethostname()


def process_start(pid: int) -> str | None:
    """A process's start time (Linux clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(trial: optuna.trial.FrozenTrial) -> bool:
    """Is the worker of a RUNNING trial still there? On this host: its process exists (a
    paused process is alive); elsewhere: its heartbeat is recent."""
    attrs = trial.user_attrs
    if attrs.get("host") == worker_host() and "pid" in attrs:
        pid = int(attrs["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = attrs.get("pid_start")
        return started is None or process_start(pid) in (None, started)
    beat = attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and time.time() - float(beat) < STALE_SECONDS


def tag_failed(
    client: MlflowClient, run_ids: list[str], end_as: str | None, message: str = ""
) -> None:
    """Tag the runs of a trial that did not settle; end the unfinished ones `end_as`
    (KILLED: the worker died; FAILED: an error the worker could not record, a full disk)."""
    for run_id in run_ids:
        client.set_tag(run_id, FAILED_TAG, "true")
        if end_as and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, STATUS_TAG, end_as.lower())
            if message:
                client.set_tag(run_id, MESSAGE_TAG, message[:5000])
            client.set_terminated(run_id, status=end_as)


def fail_stale_trials(study: optuna.Study, client: MlflowClient) -> list[int]:
    """Mark trials whose worker died FAIL, and end their MLflow runs that still run KILLED."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(trial):
            continue
        tag_failed(client, all_run_ids(trial.user_attrs), "KILLED")
        # Optuna has no public setter for another process's trial; its storage API is stable.
        study._storage.set_trial_user_attr(trial._trial_id, OUTCOME, "killed")
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(trial.number)
    return failed


def kill_orphan_runs(study: optuna.Study, client: MlflowClient, experiment: str) -> int:
    """End KILLED the RUNNING runs whose trial is not running (a worker that died between
    creating a run and linking it to its trial leaves one); return how many."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    orphans = 0
    for run in search_all_runs(client, experiment, "attributes.status = 'RUNNING'"):
        trial = trials.get(int(run.data.tags.get(TRIAL_TAG, -1)))
        if trial is not None and trial.state == TrialState.RUNNING:
            continue
        attrs = trial.user_attrs if trial is not None else {}
        failed = attrs.get(OUTCOME) == "error"  # recorded in Optuna, but not in MLflow
        tag_failed(
            client, [run.info.run_id], "FAILED" if failed else "KILLED", attrs.get("message", "")
        )
        orphans += 1
    return orphans
