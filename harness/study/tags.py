"""The names of the MLflow tags the harness writes and reads, in one place."""

STUDY_TAG = "harness.study"  # on every run: the study's name
TRIAL_TAG = "harness.trial"  # the Optuna trial the run belongs to
SEED_TAG = "harness.seed"  # on a seed's run: its seed
SEEDS_TAG = "harness.seeds"  # on a parent run, with adaptive seeds: the seeds it reached
STOPPED_TAG = "harness.stopped"  # on a parent run, once the seed rounds are over: why
STATUS_TAG = "harness.status"  # finished | pruned | diverged | interrupted | failed ...
MESSAGE_TAG = "harness.message"  # why a run did not finish (first 5,000 characters)
FAILED_TAG = "harness.trial_failed"  # on the MLflow runs of a trial that did not settle
# On a seed's run that repeats a seed of its configuration another trial trained first (two
# workers before 2026-12-03 could both train it): the run that counts instead.
DUPLICATE_TAG = "harness.duplicate_of"
VERSION_TAG = "harness.version"  # the harness's version that wrote the run
BACKEND_TAG = "harness.backend"
DEVICE_TAG = "harness.device"
COMMIT_TAG = "harness.commit"  # the git commit of the code that ran
DATASET_TAG = "harness.dataset"
DATA_CHECKSUM_TAG = "harness.data_checksum"  # MD5 over the data set's files
HOST_TAG = "harness.host"  # the worker's machine
PID_TAG = "harness.pid"  # the worker's process
