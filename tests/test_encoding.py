"""Input encodings: snnTorch's spikegen exactly, from the run's own generators, the same
spikes for both backends."""

import pytest
import torch
from snntorch import spikegen

from harness.config import make_run_config
from harness.network import encodings
from harness.training.loop import evaluate, train


def mnist_like(batch: int, seed: int) -> torch.Tensor:
    """Images of MNIST's pixel values k / 255, half of them background (0)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 784), generator=generator).float() / 255
    pixels[torch.rand(batch, 784, generator=generator) < 0.5] = 0
    return pixels


@pytest.mark.parametrize("num_steps", [1, 2, 7, 25, 100])
def test_latency_is_spikegen_latency_of_snntorch_s_tutorial(num_steps):
    images = mnist_like(16, 0)
    images[0, :4] = torch.tensor([0.01, 0.0099, 1.0, 0.5])  # at, below the threshold; extremes
    ours = encodings.encode("latency", images, num_steps, torch.Generator())
    theirs = spikegen.latency(
        images, num_steps=num_steps, tau=5, threshold=0.01, clip=True, normalize=True,
        linear=True,
    )  # fmt: skip
    assert ours.shape == (num_steps, 16, 784) and torch.equal(ours, theirs)
    # one spike per pixel at or above the threshold, at round((T - 1) (1 - x)); none below
    assert torch.equal(ours.sum(0), (images >= 0.01).float())
    assert ours[0, 0, 2] == 1 and ours[:, 0, 1].sum() == 0
    assert ours[round((num_steps - 1) * 0.5), 0, 3] == 1


@pytest.mark.parametrize("num_steps", [1, 25])
def test_rate_draws_what_spikegen_rate_draws_after_manual_seed(num_steps):
    images = mnist_like(32, 1) * 1.2  # intensities above 1 are clamped to 1: always a spike
    torch.manual_seed(11)
    theirs = spikegen.rate(images, num_steps=num_steps)
    ours = encodings.encode("rate", images, num_steps, torch.Generator().manual_seed(11))
    assert ours.shape == (num_steps, 32, 784) and torch.equal(ours, theirs)
    assert set(ours.unique().tolist()) <= {0.0, 1.0}
    assert bool((ours[:, images >= 1] == 1).all()) and bool((ours[:, images == 0] == 0).all())


def test_direct_is_the_image_and_streams_are_reproducible_and_apart():
    images = mnist_like(8, 2)
    assert encodings.encode("direct", images, 25, torch.Generator()) is images
    draw = lambda seed, stream: encodings.encode(  # noqa: E731
        "rate", images, 5, encodings.generator(seed, stream)
    )
    assert torch.equal(draw(3, "train"), draw(3, "train"))
    assert not torch.equal(draw(3, "train"), draw(3, "evaluation"))
    assert not torch.equal(draw(3, "train"), draw(4, "train"))
    # apart from the run's other generators (seed, seed + 1: batch order, test batches)
    torch.manual_seed(3)
    assert not torch.equal(draw(3, "train"), spikegen.rate(images, num_steps=5))


SPIKING = {"hidden": 32, "num_steps": 6, "batch_size": 32, "eval_every": 10, "lr": 2e-3}


@pytest.mark.parametrize(
    "settings",
    [
        {"encoding": "rate", "neuron": "synaptic", "alpha": 0.7, "beta": 0.8},
        {"encoding": "latency", "neuron": "leaky", "decoding": "latency", "lr": 5e-3},
    ],
    ids=["rate-synaptic", "latency-leaky"],
)
def test_both_backends_train_on_the_same_spikes(tiny_dataset, settings):
    config = make_run_config({**SPIKING, **settings})
    fused = train(config, tiny_dataset)
    reference = train(config.model_copy(update={"backend": "reference"}), tiny_dataset)
    assert fused.status == reference.status == "finished"
    # same weights, same spikes: the same losses up to float rounding
    torch.testing.assert_close(
        torch.tensor(fused.train_loss), torch.tensor(reference.train_loss), rtol=1e-4, atol=1e-5
    )
    for name in ("test_accuracy", "synops_effective_acs", "synops_dense", "footprint_bytes"):
        assert fused.metrics[name] == pytest.approx(reference.metrics[name], rel=1e-3), name
    assert fused.metrics["test_accuracy"] > 0.5  # chance is 0.1
    assert fused.metrics["synops_effective_macs"] == 0  # spikes into fc1: accumulates only
    assert fused.metrics["synops_dense"] == 6 * (784 * 32 + 32 * 10)  # fc1 at every step


def test_evaluation_draws_the_same_spikes_every_time(tiny_dataset):
    config = make_run_config({**SPIKING, "encoding": "rate", "epochs": 1})
    torch.manual_seed(0)
    from harness.network.model import build_model

    model = build_model(config)
    first, second = (evaluate(model, tiny_dataset.test, config) for _ in range(2))
    assert first == second
    other = evaluate(model, tiny_dataset.test, config.model_copy(update={"seed": 1}))
    assert other["synops_effective_acs"] != first["synops_effective_acs"]  # other spikes
