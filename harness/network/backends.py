"""The backends a run may train with: one table, everything else reads it.

Both compute the same network (snnTorch's semantics, spike for spike); they differ in how.
No torch import here (config.py reads the names); `model` names the class in
harness/network/model.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendSpec:
    """One backend: `model` is its network class in harness.network.model."""

    name: str
    title: str
    model: str


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("reference", "snnTorch's Leaky/Synaptic, a step loop (the tutorial's)",
                    "ReferenceNet"),
        BackendSpec("fused", "closed-form LIF scans; on the CPU one numba kernel after fc1",
                    "FusedNet"),
    )
}  # fmt: skip
DEFAULT_BACKEND = "fused"
