"""One training run: the tutorial's loop (Adam, batch loss, periodic test-batch loss, full test at
the end of each epoch), readable top to bottom. Each batch of images is encoded
(harness.network.encodings) before the model, so both backends get the same input: the
images, or spikes drawn from the run's own generators (training, test batches, evaluation:
one stream each).

The loop knows nothing of Optuna or MLflow. Metrics leave it as `Event`s through callbacks; a
callback that raises `StopRun` (for pruning, say) ends the run with that status.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from harness.config import RunConfig
from harness.data.loading import Batch, Dataset, Split, test_batches, train_batches
from harness.errors import ConfigError
from harness.network import encodings, readout
from harness.network.model import NUM_OUTPUTS, build_model
from harness.training import efficiency

# The metrics a finished run reports (the last evaluation's, and its training time).


@dataclass(frozen=True)
class Event:
    """A metric report: kind is "train" (one iteration), "eval" (a test batch) or "epoch"."""

    kind: str
    iteration: int
    epoch: int
    metrics: dict[str, float]


Callback = Callable[[Event], None]

# A loss this many times the first iteration's train loss has exploded: the run "diverged",
# though every number is still finite (lr=1e9 ends with test loss ~1e10 x the first loss; the
# tutorial's settings and their sweeps stay below 1x, an unstable lr=5e-2 reaches ~80x).
DIVERGENCE_FACTOR = 1000


class StopRun(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a callback to end the run early with `status` (e.g. "pruned")."""

    def __init__(self, status: str, message: str = ""):
        super().__init__(message or status)
        self.status = status
        self.message = message


@dataclass
class RunResult:
    """What a run produced: final metrics, curves, and how it ended."""

    config: RunConfig
    device: str
    status: str = "running"  # finished | diverged | pruned | ...
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[tuple[int, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] | None = None  # the trained weights, if save_model

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary the CLI prints."""
        return {
            **self.metrics,
            "device": self.device,
            "backend": self.config.backend,
            "status": self.status,
            "message": self.message,
            "config": self.config.model_dump(),
        }


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; a named device that is absent is a ConfigError."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    device = torch.device(name)
    present = {"cpu": True, "cuda": cuda, "mps": mps}[device.type]
    if device.type == "cuda" and cuda and device.index is not None:
        present = device.index < torch.cuda.device_count()
    if not present:
        available = ["cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])
        raise ConfigError(
            f"device '{name}' is not available here (available: {', '.join(available)})"
        )
    return device


def make_optimizer(model: torch.nn.Module, config: RunConfig, device: torch.device):
    """The tutorial's Adam; its fused (single-kernel) form where PyTorch has one for the device."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), fused=fused)


Encoder = Callable[[torch.Tensor], torch.Tensor]


def encoder(config: RunConfig, stream: str, device: torch.device) -> Encoder:
    """The run's input encoding of image batches (harness.network.encodings), drawing its
    spikes from the run's generator `stream`, on `device`; direct encoding passes the images
    through."""
    spec = encodings.spec(config.encoding)
    if not spec.spiking:
        return lambda images: images
    generator = encodings.generator(config.seed, stream, device)
    return lambda images: spec.encode(images, config.num_steps, generator)


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, config: RunConfig) -> dict[str, float]:
    """Loss of the run's decoding, both accuracies, firing rates and the efficiency metrics
    (`harness.training.efficiency`: NeuroBench's, per sample) over a whole split. Spike
    encodings draw from a generator seeded afresh at each call: every evaluation of a run sees
    the same spikes."""
    model.eval()
    batch_size = max(config.batch_size, 25_000 // config.num_steps)
    loss_sum = rate_hits = latency_hits = hidden = output = 0.0
    workload = efficiency.Workload(model, config.num_steps, config.energy_model)
    encode = encoder(config, "evaluation", split.images.device)
    for images, labels in test_batches(split, batch_size):
        inputs = encode(images)
        out = model(inputs)
        workload.add(inputs, out)
        loss_sum += float(readout.loss(config.decoding, out.spikes, out.membranes, labels)) * len(
            labels
        )
        rate_hits += float((readout.rate_predict(out.spikes) == labels).sum())
        latency_hits += float((readout.latency_predict(out.spikes) == labels).sum())
        hidden += float(out.hidden_spikes)
        output += float(out.spikes.sum())
    model.train()
    count = len(split)
    hidden_neurons = sum(math.prod(shape) for shape in model.neuron_shapes[:-1])
    rate_acc, latency_acc = rate_hits / count, latency_hits / count
    return {
        "test_loss": loss_sum / count,
        "test_accuracy": rate_acc if config.decoding == "rate" else latency_acc,
        "rate_accuracy": rate_acc,
        "latency_accuracy": latency_acc,
        "hidden_firing_rate": hidden / (count * hidden_neurons * config.num_steps)
        if hidden_neurons
        else 0.0,  # (a model of your own may have no hidden layer)
        "output_firing_rate": output / (count * NUM_OUTPUTS * config.num_steps),
        **workload.metrics(),
        **efficiency.static_metrics(model, config.neuron),
        **workload.layer_metrics(),
    }


@torch.no_grad()
def _test_batch(
    model: torch.nn.Module, batch: Batch, how: str, encode: Encoder
) -> dict[str, float]:
    """Loss and accuracy on one test batch (the tutorial's per-report test loss)."""
    images, labels = batch
    out = model(encode(images))
    loss = readout.loss(how, out.spikes, out.membranes, labels)
    hits = (readout.predict(how, out.spikes) == labels).float().mean()
    return {"test_loss": float(loss), "test_batch_accuracy": float(hits)}


def _endless(split: Split, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffled test batches forever (the tutorial draws the next test batch at each report)."""
    batch_size = min(batch_size, len(split))
    while True:
        yield from train_batches(split, batch_size, generator)


def train(
    config: RunConfig,
    dataset: Dataset,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    stop_check: Callable[[], None] | None = None,
) -> RunResult:
    """Train the network of `config` on `dataset` and evaluate it; never raises on divergence.

    `stop_check` is called before every iteration and evaluation; it raises `StopRun` to end
    the run at that point (a stop signal, say), so no iteration is left half done.
    """
    device = resolve_device(config.device)
    result = RunResult(config=config, device=str(device))
    train_split, test_split = dataset.train.to(device), dataset.test.to(device)
    batches_per_epoch = len(train_split) // config.batch_size
    if batches_per_epoch == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(train_split)} train images"
        )

    start = time.perf_counter()  # a run's time includes building its model and optimizer
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config, device)
    order = torch.Generator().manual_seed(config.seed)
    test_stream = _endless(
        test_split, config.batch_size, torch.Generator().manual_seed(config.seed + 1)
    )
    encode_train = encoder(config, "train", device)
    encode_test = encoder(config, "test_batches", device)

    def emit(event: Event) -> None:
        for callback in callbacks:
            callback(event)

    pending: list[torch.Tensor] = []  # batch losses not yet copied to the host

    def loss_limit() -> float:
        """A loss above this has exploded: DIVERGENCE_FACTOR x the first iteration's loss."""
        start = result.train_loss[0] if result.train_loss else math.inf
        return DIVERGENCE_FACTOR * start if start > 0 else math.inf

    def flush(epoch: int) -> None:
        # One host sync per report, not per iteration; divergence is caught here.
        if not pending:
            return
        values = torch.stack(pending).tolist()
        first = iteration - len(values) + 1
        pending.clear()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise StopRun(
                    "diverged", f"train loss became {value} at iteration {first + offset}"
                )
            if value > loss_limit():
                raise StopRun(
                    "diverged",
                    f"train loss became {value:.4g} at iteration {first + offset}, over "
                    f"{DIVERGENCE_FACTOR}x the first iteration's {result.train_loss[0]:.4g}",
                )
            result.train_loss.append(value)
            emit(Event("train", first + offset, epoch, {"train_loss": value}))
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise StopRun("diverged", f"weights became non-finite by iteration {iteration}")
        if bar is not None:
            bar.set_postfix(loss=f"{values[-1]:.3f}", refresh=False)

    total = config.epochs * batches_per_epoch
    bar = tqdm(total=total, desc="train", unit="it", leave=False) if progress else None
    iteration = 0
    try:
        for epoch in range(config.epochs):
            for images, labels in train_batches(train_split, config.batch_size, order):
                if stop_check is not None:
                    stop_check()
                out = model(encode_train(images))
                loss = readout.loss(config.decoding, out.spikes, out.membranes, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                pending.append(loss.detach())
                iteration += 1
                if bar is not None:
                    bar.update()
                if iteration % config.eval_every == 0:
                    flush(epoch)
                    batch = next(test_stream)
                    test_metrics = _test_batch(model, batch, config.decoding, encode_test)
                    result.test_loss.append((iteration, test_metrics["test_loss"]))
                    emit(Event("eval", iteration, epoch, test_metrics))
            flush(epoch)
            if stop_check is not None:
                stop_check()
            metrics = evaluate(model, test_split, config)
            if not math.isfinite(metrics["test_loss"]):
                raise StopRun("diverged", f"test loss became {metrics['test_loss']}")
            if metrics["test_loss"] > loss_limit():
                raise StopRun(
                    "diverged",
                    f"test loss became {metrics['test_loss']:.4g}, over {DIVERGENCE_FACTOR}x "
                    f"the first iteration's train loss {result.train_loss[0]:.4g}",
                )
            result.epochs.append({"epoch": epoch, **metrics})
            emit(Event("epoch", iteration, epoch, metrics))
        result.status = "finished"
    except StopRun as stop:
        result.status, result.message = stop.status, stop.message
    finally:
        if bar is not None:
            bar.close()
    result.metrics = {
        **(result.epochs[-1] if result.epochs else {}),
        "train_seconds": time.perf_counter() - start,
        "iterations": iteration,
    }
    result.metrics.pop("epoch", None)
    if config.save_model and result.status == "finished":
        result.state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return result
