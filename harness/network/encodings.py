"""Input encodings: how an image (B, 784), pixels in [0, 1], reaches the network's fc1.

One table, everything else reads it. No torch import at module level: config.py reads the
names; the functions import torch when called.

- direct: the image itself, the same current at every step (snnTorch's tutorial 5; the
  seed). The model receives (B, 784) and may apply fc1 once.
- rate: `snntorch.spikegen.rate(images, num_steps=T)` (gain 1, offset 0): at every step each
  pixel spikes with probability equal to its intensity clamped to [0, 1], independently
  (torch.bernoulli). (T, B, 784) of 0s and 1s.
- latency: `snntorch.spikegen.latency(images, num_steps=T, tau=5, threshold=0.01, clip=True,
  normalize=True, linear=True)` (snnTorch's tutorial 1): one spike per pixel, brighter
  earlier. With normalize=True and linear=True snnTorch replaces tau by T - 1 (the tau=5 of
  the call has no effect), so a pixel x spikes at step round((T - 1) * (1 - x)), rounding
  half to even (torch.round): x = 1 at step 0, x = 0.01 at round(0.99 (T - 1)). Pixels below
  the threshold (x < 0.01; MNIST's background) never spike (clip=True). Deterministic.
  snnTorch refuses pixels outside [0, 1]; here they are clamped into it first.

Spikes come from an explicit torch.Generator (`generator`), seeded from the run's seed and a
stream, so a run is reproducible and both backends see identical spikes. Rate encoding draws
exactly as snntorch.spikegen.rate after torch.manual_seed with the same seed (same
generator state, same torch.bernoulli).

Adding an encoding: an entry here (and its function); nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LATENCY_THRESHOLD = 0.01  # spikegen.latency's threshold: fainter pixels never spike


@dataclass(frozen=True)
class EncodingSpec:
    """One encoding. `encode(images, num_steps, generator)`: (B, in) -> the model's input;
    `spiking`: it gives (T, B, in) spikes (fc1 runs at every step, on binary input) rather than
    the (B, in) image; `snntorch`: the snnTorch call it equals."""

    name: str
    title: str
    encode: Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
    spiking: bool
    snntorch: str


def _direct(images: torch.Tensor, num_steps: int, generator: torch.Generator) -> torch.Tensor:
    return images


def _rate(images: torch.Tensor, num_steps: int, generator: torch.Generator) -> torch.Tensor:
    import torch

    # spikegen.rate repeats the image over steps, then clamps and draws; draws in that order
    probabilities = images.clamp(0, 1).expand(num_steps, *images.shape).contiguous()
    return torch.bernoulli(probabilities, generator=generator)


def _latency(images: torch.Tensor, num_steps: int, generator: torch.Generator) -> torch.Tensor:
    import torch

    images = images.clamp(0, 1)
    tau = num_steps - 1  # normalize=True: spikegen's tau becomes num_steps - 1
    # spikegen.latency_code_linear's arithmetic, in its order (so equal to the last bit)
    times = torch.clamp_max(-tau * (images - 1), -tau * (LATENCY_THRESHOLD - 1))
    spikes = images.new_zeros((num_steps, *images.shape))
    spikes.scatter_(0, torch.round(times).long().unsqueeze(0), 1.0)
    return spikes * (images >= LATENCY_THRESHOLD)  # clip=True


ENCODINGS: dict[str, EncodingSpec] = {
    spec.name: spec
    for spec in (
        EncodingSpec(
            name="direct",
            title="direct (the image as a constant current)",
            encode=_direct,
            spiking=False,
            snntorch="none: the image at every step",
        ),
        EncodingSpec(
            name="rate",
            title="rate (Bernoulli spikes, p = intensity)",
            encode=_rate,
            spiking=True,
            snntorch="snntorch.spikegen.rate(images, num_steps=T)",
        ),
        EncodingSpec(
            name="latency",
            title="latency (one spike per pixel, brighter earlier)",
            encode=_latency,
            spiking=True,
            snntorch=(
                "snntorch.spikegen.latency(images, num_steps=T, tau=5, threshold=0.01, "
                "clip=True, normalize=True, linear=True)"
            ),
        ),
    )
}
DEFAULT_ENCODING = "direct"

# A run's generator streams, each seeded from a hash of (seed, stream): apart from each other
# and, but for a 2**-32 chance, from the run's other generators (seeded seed and seed + 1).
# (Not seed + k * 2**32: the CPU generator keeps only the low 32 bits of its seed.)
STREAMS = ("train", "test_batches", "evaluation")


def spec(name: str) -> EncodingSpec:
    """The spec of an encoding by name; KeyError names the allowed ones."""
    try:
        return ENCODINGS[name]
    except KeyError:
        raise KeyError(f"unknown encoding {name!r} (allowed: {', '.join(ENCODINGS)})") from None


def generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one of a run's encoding streams (`STREAMS`), on `device`."""
    import torch

    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r} (allowed: {', '.join(STREAMS)})")
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little"))


def encode(
    name: str, images: torch.Tensor, num_steps: int, generator: torch.Generator
) -> torch.Tensor:
    """The model's input for a batch of images (B, in) under encoding `name`: the images
    themselves (direct) or spikes (T, B, in)."""
    return spec(name).encode(images, num_steps, generator)
