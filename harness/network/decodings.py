"""The output decodings a run may use: one table, everything else reads it.

How the output layer's spikes and membranes become a loss and a predicted class:

- rate: loss = sum over steps of CrossEntropy(U_out[t], y) (the tutorial's eq. 10);
  prediction = argmax of the spike counts.
- latency: prediction = the neuron that fires first (never firing counts as step T - 1; ties
  go to the lower class index); loss = CrossEntropy(-first_spike_time, y), with gradient -1 on
  the spike at the first-spike step, which then flows through the surrogate to the membranes
  (snntorch.functional.ce_temporal_loss and accuracy_temporal semantics).

No torch import here (config.py reads the names); the functions live in
harness/network/readout.py, named by each entry. Adding a decoding: an entry here and its two
functions there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DecodingSpec:
    """One decoding: `loss`, `predict` name functions of harness.network.readout; the loss
    reads the output `loss_reads` ((T, B, C) spikes or membranes) and the targets."""

    name: str
    title: str
    loss: str
    loss_reads: Literal["spikes", "membranes"]
    predict: str


DECODINGS: dict[str, DecodingSpec] = {
    spec.name: spec
    for spec in (
        DecodingSpec("rate", "rate (spike count)", "rate_loss", "membranes", "rate_predict"),
        DecodingSpec(
            "latency", "latency (first spike)", "latency_loss", "spikes", "latency_predict"
        ),
    )
}
DEFAULT_DECODING = "rate"


def spec(name: str) -> DecodingSpec:
    """The table's entry for `name`, or ValueError naming the allowed ones."""
    if name not in DECODINGS:
        raise ValueError(f"unknown decoding {name!r} (allowed: {', '.join(DECODINGS)})")
    return DECODINGS[name]
