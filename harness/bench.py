"""Speed: the fused backend against the snnTorch reference, side by side in one process.

Both backends train the same configuration from the same initial weights on the same MNIST
batches, interleaved in rounds (`ROUND` iterations of one, then as many of the other, on the
same batches, alternating which goes first), after a warm-up; the figure of each is the
median time of a full training iteration (forward, loss, backward, Adam step). Peak memory
is measured per backend in a fresh process: on CUDA the allocator's peak, on the CPU the
growth of the resident set's high-water mark over one training step (Linux `VmHWM`, reset
before the step).

`--peers` instead times rows of the tutorial-5 case (batch 128) that show where the speed
comes from and against whom, all from one seeded nn.Linear pair's weights, interleaved in
rounds on the same batches, each with its rate loss on the first batch before any step:

- snnTorch as written (the `reference` backend: fc1 at every step);
- snnTorch with fc1 computed once before the step loop (the input is static);
- snnTorch under `torch.compile` (`--compile` only: it compiles for minutes);
- SpikingJelly's multi-step `LIFNode` (its CPU path is plain PyTorch), fc1 once, fc2 over
  all steps in one product (its multi-step idiom);
- Norse's `LIFBoxCell` (the LIF without a synaptic current), fc1 once, a step loop;
- the fused backend's torch-ops path (`FusedNet(kernel="torch")`);
- the fused backend's CPU kernel (`FusedNet(kernel="numba")`, the `fused` backend).

The peers come as close to snnTorch's Leaky (U[t] = beta U[t-1] + I[t] - S[t-1] thr,
S[t] = U[t] > thr, the reset detached, ATan surrogate) as each allows; what differs:

- SpikingJelly: tau = 1 / (1 - beta), decay_input=False (H[t] = beta V[t-1] + I[t]),
  v_reset=None (soft reset V[t] = H[t] - S[t] thr), detach_reset=True, ATan(alpha=slope),
  whose gradient alpha / 2 / (1 + (pi alpha x / 2)^2) is snnTorch's. Its reset happens
  within the step, so the next step decays it: it subtracts beta thr where snnTorch
  subtracts thr. It fires on H >= thr (snnTorch on U > thr). The loss reads H[t] (snnTorch's
  membrane, before the reset), rebuilt as V[t] + S[t] thr with the spike detached.
- Norse: its decay scales the input, v + dt/tau (I - v); dt = 1, 1/tau = 1 - beta and the
  input current scaled by 1/(1 - beta) give beta v + I. Its own `reset_subtract`
  (v - z thr, within the step) would be decayed like SpikingJelly's, with the gradient
  flowing through the spike; its parameters take any reset function, so this one subtracts
  thr / beta with the spike detached, which its decay at the next step turns into
  snnTorch's reset exactly. It fires on v > thr, like snnTorch. It has no ATan surrogate:
  "circ" with alpha = 2 / (pi slope) has the gradient (1 + (pi slope x / 2)^2)^(-3/2)
  (snnTorch's: (slope / 2) / (1 + (pi slope x / 2)^2)): the same peak and scale at slope 2,
  thinner tails. The loss reads the membrane before the reset, v + z thr / beta.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from harness import data, decoding
from harness.config import RunConfig, make_run_config
from harness.errors import ConfigError
from harness.model import NUM_INPUTS, NUM_OUTPUTS, FusedNet, NetOutput, ReferenceNet, build_model
from harness.train import encoder, make_optimizer, resolve_device

BACKENDS = ("reference", "fused")
CASES = (
    {"decoding": "rate"},
    {"decoding": "latency"},
    {"decoding": "rate", "num_steps": 100},
    {"neuron": "synaptic"},
    {"encoding": "rate"},
    {"encoding": "latency"},
)
SCALING = (
    {"num_steps": 25},
    {"num_steps": 50},
    {"num_steps": 100},
    {"hidden": 500},
    {"hidden": 2000},
)


@dataclass(frozen=True)
class CaseResult:
    settings: dict
    ms_per_iteration: dict[str, float]
    ratio: float
    epoch_seconds: dict[str, float]
    peak_memory_mb: dict[str, float]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


Step = Callable[[torch.Tensor, torch.Tensor], None]


def _training_step(model: nn.Module, config: RunConfig, device: torch.device) -> Step:
    """A closure that runs one training iteration of `model` (`config`'s loss) on a batch,
    encoded as `config` says (each closure draws its spikes from its own generator, seeded
    as a run's: two backends see the same spikes)."""
    optimizer = make_optimizer(model, config, device)
    encode = encoder(config, "train", device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        out = model(encode(images))
        loss = decoding.loss(config.decoding, out.spikes, out.membranes, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _trainer(config: RunConfig, device: torch.device) -> Step:
    """A closure that runs one training iteration of `config` on a batch."""
    torch.manual_seed(config.seed)
    return _training_step(build_model(config).to(device), config, device)


# Iterations a backend runs in a row before the next takes over. A training run's iteration
# follows its own, so the caches hold its weights and Adam's state; one that follows
# snnTorch's (~70 ms, hundreds of MiB) finds them cold: interleaved every iteration, the
# fused median (about 3 ms) rises by 0.5 to 0.7 ms. In rounds of 5 only the first fused
# iteration of every other round follows snnTorch's (the order alternates), so the median is
# the iteration as training runs it, while the machine's load, which drifts over seconds,
# still reaches every backend alike (a round is 15 ms to 0.4 s).
ROUND = 5


def time_iterations(
    configs: dict[str, RunConfig],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    round_size: int = ROUND,
) -> dict[str, float]:
    """Median ms per training iteration of each config, interleaved on the same batches."""
    steps = {name: _trainer(config, device) for name, config in configs.items()}
    return time_steps(steps, batches, device, warmup, round_size)


def time_steps(
    steps: dict[str, Step],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    round_size: int = ROUND,
) -> dict[str, float]:
    """Median ms of each training step, interleaved in rounds on the same batches: each
    step runs `round_size` batches in a row, then the next step the same batches (which
    goes first alternates round by round; `round_size` 1 interleaves every iteration). The
    first `warmup` batches are untimed."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for number, first in enumerate(range(0, len(batches), round_size)):
        batch_round = range(first, min(first + round_size, len(batches)))
        for name in names if number % 2 == 0 else reversed(names):
            for i in batch_round:
                images, labels = batches[i]
                _sync(device)
                start = time.perf_counter()
                steps[name](images, labels)
                _sync(device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _peak_memory_child(settings: dict, device_name: str, queue) -> None:
    config = make_run_config(settings)
    device = torch.device(device_name)
    step = _trainer(config, device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(config.batch_size, 784, generator=generator).to(device)
    labels = torch.randint(0, 10, (config.batch_size,), generator=generator).to(device)
    step(images[:2], labels[:2])  # compiles kernels and creates Adam's state, at tiny cost
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(images, labels)
        torch.cuda.synchronize()
        queue.put((torch.cuda.max_memory_allocated() - base) / 2**20)
        return
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    step(images, labels)
    queue.put((_rss_kib("VmHWM") - base) / 1024)


def peak_memory_mb(config: RunConfig, device: torch.device) -> float:
    """Memory one training step adds at its peak, measured in a fresh process (MiB)."""
    if device.type not in ("cpu", "cuda") or not Path("/proc/self/clear_refs").exists():
        return float("nan")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_peak_memory_child, args=(config.model_dump(), str(device), queue)
    )
    process.start()
    try:
        value = queue.get(timeout=600)
    finally:
        process.join()
    return float(value)


def run_case(
    settings: dict,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    memory: bool = True,
    round_size: int = ROUND,
) -> CaseResult:
    """Reference against fused for one configuration."""
    configs = {
        backend: make_run_config({**settings, "backend": backend, "device": str(device)})
        for backend in BACKENDS
    }
    ms = time_iterations(configs, batches, device, warmup, round_size)
    per_epoch = 60_000 // configs["fused"].batch_size
    return CaseResult(
        settings=settings,
        ms_per_iteration=ms,
        ratio=ms["reference"] / ms["fused"],
        epoch_seconds={name: value * per_epoch / 1000 for name, value in ms.items()},
        peak_memory_mb={
            name: peak_memory_mb(config, device) if memory else float("nan")
            for name, config in configs.items()
        },
    )


def scaling(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    round_size: int = ROUND,
) -> list[dict]:
    """Fused ms per iteration as num_steps and hidden grow (is the cost linear?)."""
    configs = {
        ",".join(f"{k}={v}" for k, v in s.items()): make_run_config({**s, "device": str(device)})
        for s in SCALING
    }
    ms = time_iterations(configs, batches, device, warmup, round_size)
    return [
        {"settings": s, "ms_per_iteration": ms[name]}
        for s, name in zip(SCALING, configs, strict=True)
    ]


PEERS = ("spikingjelly", "norse")  # the packages of the `peers` extra (pyproject.toml)
PEERS_INSTALL = "pip install '.[peers]'"


class SnnTorchStaticNet(ReferenceNet):
    """snnTorch's Leaky neurons built as the reference builds them, but fc1 computed once
    before the step loop: the input is the same image at every step."""

    def forward(self, x: torch.Tensor) -> NetOutput:
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        cur1 = self.fc1(x)
        spk2_rec, mem2_rec = [], []
        for _ in range(self.num_steps):
            spk1, mem1 = self.lif1(cur1, mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return NetOutput(torch.stack(spk2_rec), torch.stack(mem2_rec), None)


def _atan_only(config: RunConfig, library: str) -> None:
    if config.surrogate != "atan":
        raise ConfigError(f"the {library} row is set up for the atan surrogate only")


class SpikingJellyNet(nn.Module):
    """SpikingJelly's multi-step LIFNode, set as close to snnTorch's Leaky as it allows
    (module docstring): fc1 once, each LIF layer over all steps in one call."""

    def __init__(self, config: RunConfig):
        from spikingjelly.activation_based import neuron, surrogate

        super().__init__()
        _atan_only(config, "SpikingJelly")
        self.num_steps = config.num_steps
        self.threshold = config.threshold
        lif = dict(
            tau=1 / (1 - config.beta),
            decay_input=False,
            v_threshold=config.threshold,
            v_reset=None,
            surrogate_function=surrogate.ATan(alpha=config.surrogate_slope),
            detach_reset=True,
            step_mode="m",
        )
        self.fc1 = nn.Linear(NUM_INPUTS, config.hidden)
        self.lif1 = neuron.LIFNode(**lif)
        self.fc2 = nn.Linear(config.hidden, NUM_OUTPUTS)
        self.lif2 = neuron.LIFNode(**lif, store_v_seq=True)

    def forward(self, x: torch.Tensor) -> NetOutput:
        from spikingjelly.activation_based import functional

        functional.reset_net(self)  # its neurons keep their membranes between calls
        cur1 = self.fc1(x)
        spikes1 = self.lif1(cur1.expand(self.num_steps, *cur1.shape))
        spikes = self.lif2(self.fc2(spikes1))
        membranes = self.lif2.v_seq + spikes.detach() * self.threshold  # before the reset
        return NetOutput(spikes, membranes, None)


def _snntorch_reset(beta: float) -> Callable:
    """A Norse ResetMethod that, after Norse's decay at the next step, is snnTorch's reset:
    subtract thr / beta now (beta thr / beta = thr then), the spike detached."""

    def reset(z: torch.Tensor, v: torch.Tensor, v_reset, v_th: torch.Tensor) -> torch.Tensor:
        return v - z.detach() * (v_th / beta)

    return reset


class NorseNet(nn.Module):
    """Norse's LIFBoxCell, set as close to snnTorch's Leaky as it allows (module docstring):
    fc1 once, a loop over steps."""

    def __init__(self, config: RunConfig):
        from norse.torch import LIFBoxCell, LIFBoxParameters

        super().__init__()
        _atan_only(config, "Norse")
        self.num_steps = config.num_steps
        self.scale = 1 / (1 - config.beta)  # its decay multiplies the input by 1 - beta
        self.reset_step = config.threshold / config.beta
        params = LIFBoxParameters(
            tau_mem_inv=torch.as_tensor(1 - config.beta),
            v_th=torch.as_tensor(config.threshold),
            method="circ",
            alpha=torch.as_tensor(2 / (math.pi * config.surrogate_slope)),
            reset_method=_snntorch_reset(config.beta),
        )
        self.fc1 = nn.Linear(NUM_INPUTS, config.hidden)
        self.lif1 = LIFBoxCell(params, dt=1.0)
        self.fc2 = nn.Linear(config.hidden, NUM_OUTPUTS)
        self.lif2 = LIFBoxCell(params, dt=1.0)

    def forward(self, x: torch.Tensor) -> NetOutput:
        cur1 = self.fc1(x) * self.scale
        state1 = state2 = None
        spk2_rec, mem2_rec = [], []
        for _ in range(self.num_steps):
            spk1, state1 = self.lif1(cur1, state1)
            spk2, state2 = self.lif2(self.fc2(spk1) * self.scale, state2)
            spk2_rec.append(spk2)
            mem2_rec.append(state2.v + spk2.detach() * self.reset_step)  # before the reset
        return NetOutput(torch.stack(spk2_rec), torch.stack(mem2_rec), None)


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    build: Callable[[RunConfig], nn.Module]
    compiled: bool = False  # under torch.compile (`--compile` only)


ROWS = (
    Row("reference", "snnTorch as written (reference)", ReferenceNet),
    Row("snntorch_fc1_once", "snnTorch, fc1 once", SnnTorchStaticNet),
    Row("snntorch_compile", "snnTorch, torch.compile", ReferenceNet, compiled=True),
    Row("spikingjelly", "SpikingJelly LIFNode multi-step", SpikingJellyNet),
    Row("norse", "Norse LIFBoxCell", NorseNet),
    Row("fused_torch", "fused, torch ops", lambda config: FusedNet(config, kernel="torch")),
    Row("fused", "fused, numba kernel (fused)", lambda config: FusedNet(config, kernel="numba")),
)


def peer_versions() -> dict[str, str]:
    """The installed version of each package of the `peers` extra; a ConfigError naming
    those missing and the install command when any is."""
    versions, missing = {}, []
    for package in PEERS:
        try:
            with warnings.catch_warnings():  # Norse's import warns about torch.jit.script
                warnings.simplefilter("ignore")
                __import__(package)
            versions[package] = metadata.version(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ConfigError(f"--peers needs {' and '.join(missing)} (not installed): {PEERS_INSTALL}")
    return versions


def _model_with_weights(row: Row, config: RunConfig, fc1: nn.Linear, fc2: nn.Linear) -> nn.Module:
    """`row`'s network with fc1 and fc2 copied from the given pair (before any compile)."""
    model = row.build(config)
    with torch.no_grad():
        for mine, theirs in ((model.fc1, fc1), (model.fc2, fc2)):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    return torch.compile(model) if row.compiled else model


def initial_loss(
    model: nn.Module, config: RunConfig, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """The loss on a batch before any step; its backward runs too (gradients dropped,
    weights untouched), so compiled graphs and kernels are built before timing."""
    out = model(images)
    loss = decoding.loss(config.decoding, out.spikes, out.membranes, labels)
    value = float(loss.detach())
    loss.backward()
    for param in model.parameters():
        param.grad = None
    return value


def peer_rows(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    warmup: int,
    compiled: bool = False,
    round_size: int = ROUND,
) -> list[dict]:
    """Every row of the tutorial-5 case: ms per iteration (median, interleaved in rounds),
    x snnTorch (the reference's ms over the row's) and the initial loss, on the same
    weights."""
    config = make_run_config({"device": str(device)})
    rows = [row for row in ROWS if compiled or not row.compiled]
    torch.manual_seed(config.seed)
    fc1, fc2 = nn.Linear(NUM_INPUTS, config.hidden), nn.Linear(config.hidden, NUM_OUTPUTS)
    images, labels = batches[0]
    steps, losses = {}, {}
    for row in rows:
        model = _model_with_weights(row, config, fc1, fc2).to(device)
        losses[row.name] = initial_loss(model, config, images, labels)
        steps[row.name] = _training_step(model, config, device)
    ms = time_steps(steps, batches, device, warmup, round_size)
    return [
        {
            "name": row.name,
            "label": row.label,
            "ms_per_iteration": ms[row.name],
            "x_snntorch": ms["reference"] / ms[row.name],
            "initial_loss": losses[row.name],
        }
        for row in rows
    ]


def profile_fused(
    batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, warmup: int
) -> list[dict]:
    """Where the fused backend's tutorial-5 training iteration spends its time: PyTorch's
    profiler over the batches after `warmup` untimed ones, each operation's own time (ms an
    iteration), longest first. The kernels and sparse products are autograd functions, so
    they show by name (_FusedLIFNet and _FusedLIFNetBackward, _FusedLinear...)."""
    from torch.profiler import ProfilerActivity, profile

    step = _trainer(make_run_config({"device": str(device)}), device)
    for images, labels in batches[:warmup]:
        step(images, labels)
    timed = batches[warmup:]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for images, labels in timed:
            step(images, labels)
            _sync(device)
    rows = [
        {"name": event.key, "ms_per_iteration": event.self_cpu_time_total / 1000 / len(timed),
         "calls_per_iteration": event.count / len(timed)}
        for event in profiler.key_averages()
    ]  # fmt: skip
    return sorted(rows, key=lambda row: -row["ms_per_iteration"])


def format_profile(rows: list[dict], top: int = 12) -> str:
    """The longest operations of `profile_fused` and the total, as a table."""
    total = sum(row["ms_per_iteration"] for row in rows)
    lines = [f"{'operation (own time)':<44}{'ms/iter':>9}{'calls/iter':>12}"]
    for row in rows[:top]:
        lines.append(
            f"{row['name']:<44}{row['ms_per_iteration']:>9.3f}{row['calls_per_iteration']:>12.1f}"
        )
    lines.append(f"{'all operations':<44}{total:>9.3f}")
    return "\n".join(lines)


def load_batches(
    data_dir: Path | None, device: torch.device, count: int, batch_size: int = 128
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` shuffled training batches of MNIST, on `device`."""
    dataset = data.load(data_dir, device, train_subset=count * batch_size)
    generator = torch.Generator().manual_seed(0)
    return list(data.train_batches(dataset.train, batch_size, generator))


def bench(
    device_name: str = "auto",
    iterations: int = 30,
    warmup: int = 5,
    data_dir: Path | None = None,
    cases: tuple[dict, ...] = CASES,
    with_scaling: bool = True,
    memory: bool = True,
    peers: bool = False,
    compiled: bool = False,
    round_size: int = ROUND,
) -> dict:
    """Run every case (and the scaling series); return a JSON-ready dict of the figures.
    `peers`: instead the rows of `peer_rows` (`compiled` adds snnTorch under torch.compile),
    whose reference and fused rows give the ratio."""
    if compiled and not peers:
        raise ConfigError("--compile adds a row to the --peers table: give both")
    versions = peer_versions() if peers else {}
    device = resolve_device(device_name)
    batches = load_batches(data_dir, device, warmup + iterations)
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "iterations": iterations,
        "warmup": warmup,
        "round": round_size,
    }
    if peers:
        rows = peer_rows(batches, device, warmup, compiled, round_size)
        by_name = {row["name"]: row for row in rows}
        versions = {"snntorch": metadata.version("snntorch"), **versions}
        ratio = by_name["reference"]["ms_per_iteration"] / by_name["fused"]["ms_per_iteration"]
        return {**report, "versions": versions, "rows": rows, "ratio": ratio}
    results = [
        run_case(settings, batches, device, warmup, memory, round_size) for settings in cases
    ]
    report["cases"] = [asdict(r) for r in results]
    report["ratio"] = results[0].ratio
    if with_scaling:
        report["scaling"] = scaling(batches, device, warmup, round_size)
    return report


def format_rows(report: dict) -> list[str]:
    """`peer_rows`' rows side by side, the initial losses against the reference's."""
    reference = next(row for row in report["rows"] if row["name"] == "reference")
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items())
    lines = [
        f"tutorial-5 (rate, batch 128), the same initial weights and batches; {versions}",
        f"{'row':<34}{'ms/iter':>9}{'x snnTorch':>12}{'initial loss':>14}{'- reference':>13}",
    ]
    for row in report["rows"]:
        lines.append(
            f"{row['label']:<34}{row['ms_per_iteration']:>9.1f}{row['x_snntorch']:>12.2f}"
            f"{row['initial_loss']:>14.6f}{row['initial_loss'] - reference['initial_loss']:>13.2e}"
        )
    return lines


def format_report(report: dict) -> str:
    """The figures as a plain-text table."""
    lines = [
        f"device {report['device']} ({report['device_name']}, {report['threads']} threads); "
        f"median of {report['iterations']} iterations after {report['warmup']} warm-up, "
        f"interleaved in rounds of {report['round']}",
    ]
    if "rows" in report:
        lines += format_rows(report)
        lines.append(f"ratio (tutorial-5 settings, rate): {report['ratio']:.1f}x")
        return "\n".join(lines)
    lines += [
        f"{'case':<28}{'reference ms':>13}{'fused ms':>10}{'ratio':>7}"
        f"{'ref epoch s':>12}{'fused epoch s':>14}{'ref MiB':>9}{'fused MiB':>10}",
    ]
    for case in report["cases"]:
        name = ",".join(f"{k}={v}" for k, v in case["settings"].items())
        ms, epoch, mem = case["ms_per_iteration"], case["epoch_seconds"], case["peak_memory_mb"]
        lines.append(
            f"{name:<28}{ms['reference']:>13.1f}{ms['fused']:>10.2f}{case['ratio']:>7.1f}"
            f"{epoch['reference']:>12.1f}{epoch['fused']:>14.1f}"
            f"{mem['reference']:>9.1f}{mem['fused']:>10.1f}"
        )
    if "scaling" in report:
        lines.append("fused scaling (ms per iteration):")
        for row in report["scaling"]:
            name = ",".join(f"{k}={v}" for k, v in row["settings"].items())
            lines.append(f"  {name:<26}{row['ms_per_iteration']:>8.2f}")
    lines.append(f"ratio (tutorial-5 settings, rate): {report['ratio']:.1f}x")
    return "\n".join(lines)


def tracking_overhead(
    data_dir: Path | None = None, repeats: int = 3, settings: dict | None = None
) -> dict:
    """Wall time of a training run with and without MLflow logging, interleaved.

    The logged run goes to a fresh SQLite store (created before timing starts) and includes
    everything a one-seed trial of a study does in MLflow: the configuration's parent run
    (params, dataset inputs, mean and sd at the end), the seed's run (params, inputs and
    config artifact, batched metrics, curves artifact), both ended.
    """
    import tempfile

    from harness.data import subset
    from harness.tracking import (
        MlflowClient,
        RunLogger,
        dataset_inputs,
        experiment_id,
        finish_parent_run,
        start_parent_run,
    )
    from harness.train import train

    config = make_run_config(settings or {})
    device = resolve_device(config.device)
    dataset = data.load(
        data_dir, device, config.train_subset, config.test_subset, dataset=config.dataset
    )
    warmup = data.Dataset(
        subset(dataset.train, 10 * config.batch_size, "first", 0), dataset.test, ""
    )
    times: dict[str, list[float]] = {"plain": [], "mlflow": []}
    logging: list[float] = []  # seconds spent inside MLflow calls, per logged run
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        experiment = experiment_id(client, "overhead", Path(tmp) / "artifacts")
        train(config, warmup)  # loads the kernels before anything is timed
        for repeat in range(repeats):
            for mode in ("plain", "mlflow") if repeat % 2 == 0 else ("mlflow", "plain"):
                start = time.perf_counter()
                if mode == "plain":
                    train(config, dataset)
                else:
                    spent = [0.0]

                    def timed(call, *args, spent=spent):
                        begin = time.perf_counter()
                        call(*args)
                        spent[0] += time.perf_counter() - begin

                    begin = time.perf_counter()
                    inputs = dataset_inputs(
                        dataset.name, dataset.checksum,
                        {"train": len(dataset.train), "test": len(dataset.test)},
                    )  # fmt: skip
                    params = config.model_dump()
                    parent = start_parent_run(
                        client, experiment, f"overhead/{repeat}", {}, params, inputs
                    )
                    logger = RunLogger(client, experiment, f"overhead/{repeat}/s0", {}, parent)
                    logger.log_config(params, inputs)
                    spent[0] += time.perf_counter() - begin
                    result = train(config, dataset, [lambda event, log=logger: timed(log, event)])
                    timed(logger.finish, result)
                    summary = [{"status": result.status, **result.metrics}]
                    timed(finish_parent_run, client, parent, summary, result.status)
                    logging.append(spent[0])
                times[mode].append(time.perf_counter() - start)
    plain, logged = statistics.median(times["plain"]), statistics.median(times["mlflow"])
    return {
        "plain_seconds": plain,
        "mlflow_seconds": logged,
        "overhead_percent": 100 * (logged - plain) / plain,
        "logging_seconds": statistics.median(logging),
        "logging_percent": 100 * statistics.median(logging) / plain,
        "repeats": repeats,
        "runs": times,
    }
