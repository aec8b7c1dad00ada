"""The neuron models a run may use: one table, everything else reads it.

Each model is an snnTorch neuron (reset by subtraction, snnTorch's defaults otherwise) that
both layers of the network use. No torch import here: config.py reads the names and
parameters to refuse bad input before anything heavy loads; the backends read the rest
(the reference's snnTorch class, the fused backend's scan in harness/network/scans.py, by name).

Adding a neuron model: an entry here and its scan in harness/network/scans.py (plus a RunConfig
field for a parameter no model had before).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NeuronSpec:
    """One neuron model.

    `params`: the run settings it takes, named as snnTorch's constructor names them;
    `defaults`: the values of those a run leaves unset (RunConfig fills them in);
    `snntorch`/`snntorch_init`: its snnTorch class and the method that gives the initial
    state (the reference backend);
    `scan`: the function of harness.network.scans that runs a layer of it over all steps, called as
    scan(current, num_steps, **params, surrogate=..., slope=...) -> (spikes, membranes);
    `kernels`: the fast kernels of the fused backend that support it ("numba": the CPU kernel
    of harness.network.kernels; the scan runs anywhere); `state_tensors`, `constant_bytes`: what
    snnTorch holds per layer (a tensor per neuron for each state variable, and the bytes of
    its constant buffers), for the efficiency metrics' footprint.
    """

    name: str
    title: str
    params: tuple[str, ...]
    snntorch: str
    snntorch_init: str
    scan: str
    kernels: tuple[str, ...]
    state_tensors: int
    constant_bytes: int
    defaults: dict[str, float] = field(default_factory=dict)

    def scan_function(self) -> Callable[..., Any]:
        """The torch scan of harness.network.scans (imports torch)."""
        return getattr(importlib.import_module("harness.network.scans"), self.scan)


# snnTorch's buffers besides the state: beta, threshold and graded_spikes_factor (float32,
# 4 bytes each) and reset_mechanism_val (int64, 8 bytes); Synaptic adds alpha (float32).
_LIF_CONSTANTS = 3 * 4 + 8

NEURONS: dict[str, NeuronSpec] = {
    spec.name: spec
    for spec in (
        NeuronSpec(
            name="leaky",
            title="leaky integrate-and-fire (snntorch.Leaky)",
            params=("beta", "threshold"),
            snntorch="Leaky",
            snntorch_init="init_leaky",
            scan="lif_scan",
            kernels=("numba",),
            state_tensors=1,
            constant_bytes=_LIF_CONSTANTS,
        ),
        NeuronSpec(
            name="synaptic",
            title="synaptic-current LIF (snntorch.Synaptic)",
            params=("alpha", "beta", "threshold"),
            snntorch="Synaptic",
            snntorch_init="init_synaptic",
            scan="synaptic_scan",
            kernels=("numba",),
            state_tensors=2,
            constant_bytes=_LIF_CONSTANTS + 4,
            defaults={"alpha": 0.9},  # snnTorch's tutorial 4 and its Synaptic docstring
        ),
    )
}
DEFAULT_NEURON = "leaky"
# Parameters some model does not take: a run sets one only with a model that takes it.
_PARAMS = dict.fromkeys(p for s in NEURONS.values() for p in s.params)
EXCLUSIVE_PARAMS = tuple(p for p in _PARAMS if any(p not in s.params for s in NEURONS.values()))


def spec(name: str) -> NeuronSpec:
    """The spec of a neuron model by name; KeyError names the allowed ones."""
    try:
        return NEURONS[name]
    except KeyError:
        raise KeyError(f"unknown neuron {name!r} (allowed: {', '.join(NEURONS)})") from None


def owners(param: str) -> list[str]:
    """The neuron models that take `param`."""
    return [s.name for s in NEURONS.values() if param in s.params]


def misplaced_param(neuron: str, values: dict[str, Any]) -> str | None:
    """A one-line complaint if `values` sets a parameter that `neuron` does not take, else
    None. Unset parameters are None."""
    entry = spec(neuron)
    for param in EXCLUSIVE_PARAMS:
        if values.get(param) is not None and param not in entry.params:
            return (
                f"'{param}' is a parameter of neuron {' / '.join(owners(param))}, not of "
                f"neuron {neuron} (its parameters: {', '.join(entry.params)})"
            )
    return None
