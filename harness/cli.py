"""Command line: `python -m harness train|study|report|ui|bench|data ...`.

Bad input is one line on stderr and exit code 2, before anything is trained or written.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import StudyConfig, load_run_config
from harness.data import acquire
from harness.data.datasets import DATASETS, DEFAULT_DATASET
from harness.errors import ConfigError
from harness.stores.urls import check_store_urls
from harness.ui.servers import serve_dashboard, serve_ui

if TYPE_CHECKING:
    import torch


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--t` must not quietly mean --tracking-uri
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _port(text: str) -> int:
    """argparse type of --port: a TCP port number."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1..65535, got {text!r}")
    return port


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="data folder (default: $HARNESS_DATA_DIR or ./data)",
    )  # fmt: skip


def _store_args(parser: argparse.ArgumentParser, optuna: bool = True) -> None:
    parser.add_argument(
        "--output-dir", type=Path, default=None,
        help="embedded stores' folder (default: $HARNESS_OUTPUT_DIR or ./outputs)",
    )  # fmt: skip
    if optuna:
        parser.add_argument(
            "--storage", default=None, help="Optuna storage URL, e.g. postgresql://... "
            "(default: $HARNESS_STORAGE, else a journal file in the output folder)",
        )  # fmt: skip
    parser.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in the outputs)",
    )  # fmt: skip


# `harness bench`'s other modes, each instead of the suite: flag -> what it measures.
BENCH_MODES = {
    "tracking": "MLflow's share of a tutorial-5 run (with and without logging)",
    "peers": "the tutorial-5 case as rows (snnTorch as written, fc1 once, SpikingJelly, Norse, "
    "fused torch ops, fused kernel); needs pip install '.[peers]'",
    "profile": "where the fused backend's tutorial-5 iteration spends its time (PyTorch's "
    "profiler)",
    "run": "a whole tutorial-5 run (train()) against its bare iterations, and where the "
    "difference goes (test batches, evaluation, the rest); the full bench includes it",
    "grid": "fc1 for K configurations sharing a batch, as K products and as one over the K "
    "weight sets side by side (would training them together pay?)",
    "events": "fc2 and dL/dW2 dense against event-driven (work per spike) at firing rates "
    "from 2 to 30 %% (would an event-driven hidden layer pay?)",
    "blocks": "fc1 by hidden neurons a block, beside the size the kernel picks (does sizing "
    "blocks from the caches matter here?)",
    "listing": "a tutorial-5 training iteration with the kernel's listing of the hidden "
    "neurons that may fire and without (rate and latency, untrained and trained)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train the network once and report its metrics")
    train.add_argument("--config", type=Path, help="YAML run config (or a study file's base)")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )  # fmt: skip
    train.add_argument("--json", action="store_true", help="print a JSON summary last")
    train.add_argument(
        "--save-model", type=Path, default=None, metavar="PATH",
        help="write the trained weights here (and the run config beside them, PATH.yaml); "
        "save_model: true in the config writes them to outputs/models/",
    )  # fmt: skip
    train.add_argument(
        "--track", action="store_true",
        help="log the run to MLflow like a study's, in the experiment 'harness train' of the "
        "output folder's tracking store (or --tracking-uri)",
    )  # fmt: skip
    _store_args(train, optuna=False)
    _data_dir_arg(train)

    bench = commands.add_parser("bench", help="time the fused backend against the reference")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    bench.add_argument("--iterations", type=int, default=30, help="timed iterations per case")
    bench.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    bench.add_argument(
        "--round", type=int, default=None, metavar="N",
        help="iterations a backend runs in a row before the next takes over (default 5; "
        "1 interleaves every iteration: the fused one then runs with cold caches)",
    )  # fmt: skip
    bench.add_argument("--quick", action="store_true", help="tutorial-5 case only, no memory")
    for flag, text in BENCH_MODES.items():
        bench.add_argument(f"--{flag}", action="store_true", help=f"instead: {text}")
    bench.add_argument(
        "--compile", action="store_true",
        help="with --peers: add snnTorch under torch.compile (compiles for minutes)",
    )  # fmt: skip
    bench.add_argument("--json", action="store_true", help="print a JSON summary last")
    _data_dir_arg(bench)

    study = commands.add_parser("study", help="create or resume a study and run it to the end")
    study.add_argument("name", help="a study in studies/ (e.g. beta_sweep) or a YAML path")
    _store_args(study)
    study.add_argument("--max-trials", type=int, default=None, help="stop after this many")
    study.add_argument(
        "--workers", type=int, default=1,
        help="worker processes on this machine (more can join from anywhere: make worker)",
    )  # fmt: skip
    study.add_argument(
        "--summary", action=argparse.BooleanOptionalAction, default=True,
        help="print the table of configurations at the end",
    )  # fmt: skip
    _data_dir_arg(study)

    ui = commands.add_parser("ui", help="start the MLflow UI on the study stores")
    _store_args(ui, optuna=False)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--port", type=_port, default=5000, help="TCP port, 1..65535 (default 5000)")

    dashboard = commands.add_parser(
        "dashboard", help="start optuna-dashboard (read-only) on the study stores"
    )
    dashboard.add_argument(
        "--output-dir", type=Path, default=None,
        help="embedded stores' folder (default: $HARNESS_OUTPUT_DIR or ./outputs)",
    )  # fmt: skip
    dashboard.add_argument(
        "--storage", default=None, help="Optuna storage URL, e.g. postgresql://... "
        "(default: $HARNESS_STORAGE, else the journal file in the output folder)",
    )  # fmt: skip
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    dashboard.add_argument(
        "--port", type=_port, default=8080, help="TCP port, 1..65535 (default 8080)"
    )

    report = commands.add_parser("report", help="write a study's HTML and PDF report")
    report.add_argument("name", help="a study in studies/ or a YAML path")
    _store_args(report)
    report.add_argument(
        "--reports-dir", type=Path, default=Path("reports"), help="where reports/NAME/ goes"
    )

    compare = commands.add_parser(
        "compare", help="compare two studies configuration by configuration (B against A)"
    )
    compare.add_argument("a", help="study A: a study in studies/ or a YAML path")
    compare.add_argument("b", help="study B (may be A itself, read from other stores)")
    _store_args(compare)  # A's stores, and B's unless a --b-... flag is given
    compare.add_argument(
        "--b-output-dir", type=Path, default=None,
        help="read B from these embedded stores (any --b-... flag: B from the --b-... flags "
        "alone, each missing one at its default)",
    )  # fmt: skip
    compare.add_argument("--b-storage", default=None, help="B's Optuna storage URL")
    compare.add_argument("--b-tracking-uri", default=None, help="B's MLflow tracking URI")
    compare.add_argument(
        "--metric", default=None,
        help="metric to compare (default: A's first objective), e.g. test_loss, train_seconds",
    )  # fmt: skip
    compare.add_argument(
        "--alpha", type=float, default=0.05, help="level of the tests, 0 < alpha < 1 (0.05)"
    )
    compare.add_argument(
        "--unpaired", action="store_true",
        help="Welch's unpaired test everywhere; by default runs of the seeds both studies ran "
        "are paired (a paired t-test: a seed fixes the initial weights and batches)",
    )  # fmt: skip
    compare.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)  # the default
    compare.add_argument("--json", action="store_true", help="print a JSON document last")
    compare.add_argument(
        "--reports-dir", type=Path, default=Path("reports"),
        help="where reports/compare-A-vs-B/ goes",
    )  # fmt: skip

    data = commands.add_parser("data", help="acquire and verify a data set (default: MNIST)")
    _data_dir_arg(data)
    data.add_argument(
        "--dataset", choices=list(DATASETS), default=DEFAULT_DATASET,
        help="which data set (default: %(default)s)",
    )  # fmt: skip
    return parser


def _train(args: argparse.Namespace) -> int:
    from harness import interrupt
    from harness.data import loading
    from harness.training.loop import StopRun, resolve_device, train

    config = load_run_config(args.config, args.overrides)
    if config.model is not None:
        from harness.network.user_model import dry_run

        dry_run(config)
    weights = _weights_path(args.save_model, config.save_model, config.seed)
    if weights is not None:
        config = config.model_copy(update={"save_model": True})
    interrupt.install()
    device = resolve_device(config.device)
    dataset = loading.load(
        args.data_dir, device, config.train_subset, config.test_subset,
        config.subset_sampling, config.seed, config.dataset,
    )  # fmt: skip
    interrupt.check()

    def stop_check() -> None:
        if interrupt.received() is not None:
            raise StopRun("interrupted", f"stopped by {signal.Signals(interrupt.received()).name}")

    logger = None
    if args.track:
        from harness.stores.layout import tracking_name
        from harness.stores.opening import open_stores
        from harness.study.tracking import start_single_run

        stores = open_stores(args.output_dir, tracking_uri=args.tracking_uri, tracking_only=True)
        name = " ".join([*args.overrides, f"seed {config.seed}"])
        logger = start_single_run(stores, config.model_dump(), dataset, name, str(device))
    try:
        result = train(
            config, dataset, [logger] if logger else [],
            progress=sys.stderr.isatty(), stop_check=stop_check,
        )  # fmt: skip
    except BaseException as err:
        if logger is not None:
            stopped = isinstance(err, (interrupt.Interrupted, KeyboardInterrupt))
            logger.abort("KILLED" if stopped else "FAILED", f"{type(err).__name__}: {err}")
        raise
    if logger is not None:
        logger.finish(result)
    interrupt.check()
    summary = result.summary()
    m = result.metrics
    print(
        f"{result.status}: {config.backend} on {result.device}, {m['iterations']} iterations "
        f"in {m['train_seconds']:.1f} s" + (f"; {result.message}" if result.message else "")
    )
    if "test_accuracy" in m:
        print(
            f"test accuracy {m['test_accuracy']:.4f} ({config.decoding}); "
            f"rate {m['rate_accuracy']:.4f}, latency {m['latency_accuracy']:.4f}; "
            f"test loss {m['test_loss']:.4f}; firing rate hidden {m['hidden_firing_rate']:.4f}, "
            f"output {m['output_firing_rate']:.4f}"
        )
        print(
            f"per sample: {m['synops_effective_macs']:,.0f} MACs + "
            f"{m['synops_effective_acs']:,.0f} ACs effective ({m['synops_dense']:,.0f} dense), "
            f"{m['membrane_updates']:,.0f} membrane updates, activation sparsity "
            f"{m['activation_sparsity']:.4f}; {m['parameter_count']:,.0f} parameters, "
            f"footprint {m['footprint_bytes']:,.0f} B, connection sparsity "
            f"{m['connection_sparsity']:.4f}"
        )
    if weights is not None and result.state_dict is not None:
        from harness.network.model import save_weights

        save_weights(result.state_dict, weights, config)
        print(f"weights: {weights} (run config: {weights.with_suffix('.yaml')})")
        summary["weights"] = str(weights)
    if logger is not None:
        print(
            f"logged to MLflow: run '{name}' ({logger.run_id}) in the experiment "
            f"'harness train' of {tracking_name(stores.tracking_uri)} (make ui to browse)"
        )
        summary["mlflow_run_id"] = logger.run_id
    else:
        print(
            "not stored in MLflow or Optuna: --track logs it to MLflow; a study keeps its runs "
            "with their seeds (one configuration: `make study NAME=tutorial5`)"
        )
    if args.json:
        print(json.dumps(summary))
    return 0 if result.status == "finished" else 1


def _weights_path(flag: Path | None, save_model: bool, seed: int) -> Path | None:
    """Where `harness train` writes the weights: --save-model, else (save_model: true)
    outputs/models/train-<UTC time>-seed<seed>.pt; checked before anything is trained."""
    import datetime

    from harness.stores.layout import resolve_output_dir

    if flag is None and not save_model:
        return None
    if flag is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        flag = resolve_output_dir() / "models" / f"train-{stamp}-seed{seed}.pt"
    if flag.is_dir() or flag.suffix == ".yaml":
        raise ConfigError(f"--save-model: {flag} must be a file name, e.g. model.pt")
    problem = _cannot_write(flag) or _cannot_write(flag.with_suffix(".yaml"))
    if problem:
        raise ConfigError(f"--save-model: cannot write {flag}: {problem}")
    return flag


def _cannot_write(path: Path) -> str | None:
    """Why a file could not be written at `path` (its folder a file, read-only, ...), found
    by creating a scratch file in the nearest existing folder; None if it can. Creates
    nothing that stays."""
    import os
    import tempfile

    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if path.exists() and (path.is_dir() or not os.access(path, os.W_OK)):
        return f"{path} exists and is not a writable file"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"{folder} does not take new files ({err.strerror})"
    return None


def _bench(args: argparse.Namespace) -> int:
    from harness.bench import timing
    from harness.config import make_run_config

    make_run_config({"device": args.device}, "--device")
    if args.iterations < 1 or args.warmup < 0:
        raise ConfigError("--iterations must be >= 1 and --warmup >= 0")
    round_size = timing.ROUND if args.round is None else args.round
    if round_size < 1:
        raise ConfigError(f"--round must be >= 1 (iterations in a row), got {round_size}")
    text, report = _bench_report(args, round_size)
    print(text)
    if args.json:
        print(json.dumps(report))
    return 0


def _bench_report(args: argparse.Namespace, round_size: int) -> tuple[str, dict]:
    """What `harness bench` measures in the mode its flags choose: (printout, JSON report)."""
    from harness.bench import profile, suite, timing
    from harness.training.loop import resolve_device

    if args.tracking:
        report = timing.tracking_overhead(
            args.data_dir, repeats=5, settings={"device": args.device}
        )
        return (
            f"one tutorial-5 epoch: {report['plain_seconds']:.2f} s without MLflow, "
            f"{report['mlflow_seconds']:.2f} s with it ({report['overhead_percent']:+.1f} %, "
            f"medians of {report['repeats']}, interleaved); time inside MLflow calls "
            f"{report['logging_seconds']:.3f} s a run = {report['logging_percent']:.1f} %"
        ), report
    if args.events:
        from harness.bench.events import events_against_dense, format_events

        return _on_machine("events", events_against_dense, format_events)
    if args.listing:
        from harness.bench.listing import BATCHES, format_listing, listing_against_dense

        if resolve_device(args.device).type != "cpu":
            raise ConfigError("--listing times the CPU's LIF kernel: give --device cpu")
        batches = suite.load_batches(args.data_dir, resolve_device("cpu"), BATCHES)
        return _on_machine("listing", lambda: listing_against_dense(batches), format_listing)
    if args.blocks:
        from harness.bench.blocks import block_sizes, format_block_sizes

        images = _one_cpu_batch(args, "blocks")
        return _on_machine("blocks", lambda: block_sizes(images), format_block_sizes)
    if args.grid:
        from harness.bench.grid import fc1_together, format_fc1_together

        images = _one_cpu_batch(args, "grid").flatten(1)
        return _on_machine("fc1_together", lambda: fc1_together(images), format_fc1_together)
    if not (args.profile or args.run):
        report = suite.bench(
            args.device, args.iterations, args.warmup, args.data_dir,
            cases=timing.CASES[:1] if args.quick else timing.CASES,
            with_scaling=not args.quick, memory=not args.quick,
            peers=args.peers, compiled=args.compile, round_size=round_size,
            with_run=not args.quick and not args.peers,
        )  # fmt: skip
        return suite.format_report(report), report
    device = resolve_device(args.device)
    if args.profile:
        batches = suite.load_batches(args.data_dir, device, args.warmup + args.iterations)
        rows = profile.profile_fused(batches, device, args.warmup)
        heading = (
            f"fused backend, tutorial-5 (rate, batch 128), {args.iterations} iterations on "
            f"{device} after {args.warmup} warm-up, each operation's own time:"
        )
        report = {"device": str(device), "iterations": args.iterations, "operations": rows}
        return f"{heading}\n{profile.format_profile(rows)}", report
    from harness.bench.run_gap import format_run_gap, run_gap

    batches = suite.load_batches(args.data_dir, device, args.warmup + args.iterations)
    return _on_machine(
        "run", lambda: run_gap(args.data_dir, device, batches, args.warmup), format_run_gap
    )


def _on_machine(
    key: str, measure: Callable[[], Any], format_lines: Callable[[Any], list[str]]
) -> tuple[str, dict]:
    """A bench mode's (printout, report): the machine it runs on, then `measure()`'s result
    under `key`, printed by `format_lines`."""
    from harness.bench.machine import describe, describe_line

    report = {"machine": describe()}
    report[key] = measure()
    return "\n".join([describe_line(report["machine"]), *format_lines(report[key])]), report


def _one_cpu_batch(args: argparse.Namespace, flag: str) -> torch.Tensor:
    """The first MNIST training batch's images, for a mode that times the CPU's sparse fc1."""
    from harness.bench import suite
    from harness.training.loop import resolve_device

    device = resolve_device(args.device)
    if device.type != "cpu":
        raise ConfigError(f"--{flag} times the CPU's sparse fc1: give --device cpu")
    return suite.load_batches(args.data_dir, device, 1)[0][0]


def _dry_run_models(config: StudyConfig) -> None:
    """A study of a model of your own: each form of it (grid points, or each model_args
    value of a search) runs one batch before any store is opened (harness.network.user_model)."""
    from harness.config import MODEL_ARG, Choices

    if config.base_config.model is None:
        return
    from harness.network.user_model import dry_run

    if config.sampler == "grid":
        points = config.grid()
    else:
        points = [{}] + [
            {key: value}
            for key, values in config.space.items()
            if key.startswith(MODEL_ARG)
            for value in (values.choices if isinstance(values, Choices) else values)
        ]
    seen = []
    for point in points:
        run = config.run_config(point, seed=0)
        if run not in seen:
            seen.append(run)
            dry_run(run)


def _study(args: argparse.Namespace) -> int:
    from harness import interrupt
    from harness.config import load_study
    from harness.stores.opening import open_stores
    from harness.stores.retry import take_over_http_retries
    from harness.study.runner import prepare_study, run_study
    from harness.study.settled import running_trials
    from harness.study.table import format_table
    from harness.study.tracking import check_description

    check_store_urls(args.storage, args.tracking_uri)
    config = load_study(args.name)
    if args.max_trials is not None and args.max_trials < 1:
        raise ConfigError("--max-trials must be >= 1")
    if args.workers < 1:
        raise ConfigError("--workers must be >= 1")
    check_description(config.name, config.description)
    _dry_run_models(config)
    interrupt.install()  # a stop signal ends the running trial cleanly, then the study
    take_over_http_retries()  # bounded, and a stop signal heard while waiting (stores.retry)
    stores = open_stores(args.output_dir, args.storage, args.tracking_uri)
    start = time.perf_counter()
    print(f"study {config.name}: {stores.description}, mlflow {stores.tracking_uri}", flush=True)
    with stores.setup_lock():  # MLflow's tables on first use (about 2 s): set-up, not runs
        stores.create_tracking_tables()
    setup = time.perf_counter() - start
    if args.workers > 1:
        _, _, study = prepare_study(config, stores)  # once, before the workers race for it
        codes = _run_workers(args)
        interrupt.check()
        if any(codes):
            print(f"error: workers ended with exit codes {codes}", file=sys.stderr)
            return 1
    else:
        study = run_study(
            config, stores, args.data_dir, progress=sys.stderr.isatty(), max_trials=args.max_trials
        )
    if args.summary:
        running = running_trials(study)
        if running:
            print(
                f"{len(running)} configuration{'s' if len(running) > 1 else ''} still running "
                f"elsewhere (trial{'s' if len(running) > 1 else ''} "
                f"{', '.join(map(str, running))}): the table below is partial; the last worker "
                "to finish prints the final one",
                flush=True,
            )
        print(format_table(study, config, partial=bool(running)))
        wall = time.perf_counter() - start
        print(f"wall time {wall:.1f} s" + _overhead(study, wall, setup, args.workers))
    return 0


def _run_workers(args: argparse.Namespace) -> list[int]:
    """Start `--workers` processes of this same study and wait for them all."""
    import os
    import subprocess

    command = [sys.executable, "-m", "harness", "study", args.name, "--no-summary"]
    for flag, value in (
        ("--output-dir", args.output_dir), ("--storage", args.storage),
        ("--tracking-uri", args.tracking_uri), ("--data-dir", args.data_dir),
        ("--max-trials", args.max_trials),
    ):  # fmt: skip
        if value is not None:
            command += [flag, str(value)]
    from harness import interrupt

    threads = str(max(1, (os.cpu_count() or 1) // args.workers))  # share the cores
    env = {**os.environ, "OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
    workers = [subprocess.Popen(command, env=env) for _ in range(args.workers)]
    forwarded = False
    while any(worker.poll() is None for worker in workers):
        signum = interrupt.received()
        if signum is not None and not forwarded:  # each worker ends its trial cleanly
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signum)
            forwarded = True
        time.sleep(0.2)
    return [worker.returncode for worker in workers]


def _overhead(study, wall: float, setup: float, workers: int) -> str:
    """How this invocation's wall time divides: creating the stores (on first use), the
    training itself, and what came between runs (data, MLflow, Optuna)."""
    from harness.study.runner import trained_seconds_since

    runs, seconds = trained_seconds_since(study, time.time() - wall, this_process=workers == 1)
    if not runs:
        return " (nothing left to train)"
    if workers > 1:
        return f"; {workers} workers trained {runs} runs for {seconds:.1f} s in all"
    between = wall - setup - seconds
    return (
        f": stores set up in {setup:.1f} s, {runs} runs trained for {seconds:.1f} s, and data, "
        f"MLflow and Optuna between them took {between:.1f} s ({between / runs:.2f} s a run, "
        f"{100 * between / wall:.1f} %)"
    )


def _report(args: argparse.Namespace) -> int:
    from harness.config import load_study
    from harness.report import build_report
    from harness.report.render import write_index
    from harness.stores.opening import check_stores_agree, open_stores

    check_store_urls(args.storage, args.tracking_uri)
    config = load_study(args.name)
    stores = open_stores(args.output_dir, args.storage, args.tracking_uri, read_only=True)
    check_stores_agree(stores, config.name)  # never a page that contradicts the trials
    page = build_report(config, stores, args.reports_dir / config.name)
    print(f"report: {page} and {page.with_name('report.pdf')}")
    print(f"index of reports: {write_index(args.reports_dir)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import shlex

    from harness.config import load_study
    from harness.report import compare
    from harness.stores.opening import check_stores_agree, open_stores

    compare.check_options(args.metric, args.alpha)
    b_flags = (args.b_output_dir, args.b_storage, args.b_tracking_uri)
    elsewhere = any(value is not None for value in b_flags)  # else B is read where A is
    a_where = (args.output_dir, args.storage, args.tracking_uri)
    b_where = b_flags if elsewhere else a_where
    check_store_urls(args.storage, args.tracking_uri)
    if elsewhere:
        try:
            check_store_urls(args.b_storage, args.b_tracking_uri)
        except ConfigError as err:  # name B's flags, not A's
            text = str(err).replace("--storage:", "--b-storage:")
            raise ConfigError(text.replace("--tracking-uri:", "--b-tracking-uri:")) from None
    configs = load_study(args.a), load_study(args.b)
    sides = []
    for label, config, (output_dir, storage, tracking_uri) in zip(
        "AB", configs, (a_where, b_where), strict=True
    ):
        stores = open_stores(output_dir, storage, tracking_uri, read_only=True)
        check_stores_agree(stores, config.name)
        sides.append(compare.read_side(label, config, stores))
    for note in sides[0].notes + sides[1].notes:
        print(f"note: {note}", file=sys.stderr)
    if args.paired and args.unpaired:
        raise ConfigError("--paired and --unpaired exclude each other (paired is the default)")
    result = compare.compare(*sides, metric=args.metric, alpha=args.alpha, unpaired=args.unpaired)
    flags = []
    for flag, value in (
        ("--output-dir", args.output_dir), ("--storage", args.storage),
        ("--tracking-uri", args.tracking_uri), ("--b-output-dir", args.b_output_dir),
        ("--b-storage", args.b_storage), ("--b-tracking-uri", args.b_tracking_uri),
        ("--metric", args.metric),
    ):  # fmt: skip
        if value is not None:
            flags += [flag, str(value)]
    if args.alpha != 0.05:
        flags += ["--alpha", f"{args.alpha:g}"]
    if args.unpaired:
        flags += ["--unpaired"]
    command = shlex.join(["python", "-m", "harness", "compare", args.a, args.b, *flags])
    page = compare.build_page(result, compare.page_dir(args.reports_dir, result), command)
    print(compare.format_table(result))
    print(f"page: {page}")
    if args.json:
        print(json.dumps(compare.to_json(result, page)))
    return 0


def _data(args: argparse.Namespace) -> int:

    folder = Path(args.data_dir or acquire.default_data_dir())
    spec = acquire.dataset_spec(args.dataset)
    checksum = acquire.acquire(folder, args.dataset)
    print(f"{spec.title} ready in {acquire.raw_dir(folder, args.dataset)} (checksum {checksum})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    from harness.errors import DataError, StoreError
    from harness.interrupt import Interrupted

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed in one line
        return int(exit_.code or 0)
    handlers = {
        "train": _train, "bench": _bench, "study": _study, "report": _report, "ui": serve_ui,
        "dashboard": serve_dashboard, "data": _data, "compare": _compare,
    }  # fmt: skip
    try:
        return handlers[args.command](args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DataError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from harness.stores.failures import store_failure

        reason = store_failure(err)
        if reason is None:
            raise
        print(f"error: {reason}", file=sys.stderr)
        return 1
    finally:
        from harness.stores.sqlite import close_connections

        close_connections()
