"""The surrogate gradients a run may train with: one table, everything else reads it.

A spike is S = H(U - thr) forward; backward it takes the derivative of a smooth stand-in.
Each entry is snnTorch's own surrogate (`snntorch.surrogate`), with the same definition and
default slope. No torch import here: config.py reads the names and default slopes to refuse
bad input before anything heavy loads. The derivatives use only tensor methods, and the
snnTorch constructors import snnTorch when called.

Adding a surrogate: an entry here, and a branch of the CPU kernel's `_surrogate` for its
`kernel_code` in harness/network/kernels/lif_scan.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SurrogateSpec:
    """One surrogate. `derivative(x, slope)`: dS/dU at x = U - thr (a tensor);
    `snntorch`/`snntorch_slope`: the `snntorch.surrogate` function and the name of its
    sharpness argument; `default_slope`: snnTorch's default; `kernel_code`: the number the CPU
    kernel's `_surrogate` branches on."""

    name: str
    title: str
    derivative: Callable[[torch.Tensor, float], torch.Tensor]
    snntorch: str
    snntorch_slope: str
    default_slope: float
    kernel_code: int


def _atan(x: torch.Tensor, slope: float) -> torch.Tensor:
    # snnTorch's ATan: alpha / 2 / (1 + (pi / 2 * alpha * x)^2)
    return slope / 2 / (1 + (math.pi / 2 * slope * x).pow(2))


def _fast_sigmoid(x: torch.Tensor, slope: float) -> torch.Tensor:
    # snnTorch's FastSigmoid: 1 / (slope * |x| + 1)^2
    return 1.0 / (slope * x.abs() + 1.0).pow(2)


SURROGATES: dict[str, SurrogateSpec] = {
    spec.name: spec
    for spec in (
        SurrogateSpec(
            name="atan",
            title="arctangent",
            derivative=_atan,
            snntorch="atan",
            snntorch_slope="alpha",
            default_slope=2.0,
            kernel_code=0,
        ),
        SurrogateSpec(
            name="fast_sigmoid",
            title="fast sigmoid",
            derivative=_fast_sigmoid,
            snntorch="fast_sigmoid",
            snntorch_slope="slope",
            default_slope=25.0,
            kernel_code=1,
        ),
    )
}
DEFAULT_SURROGATE = "atan"


def spec(name: str) -> SurrogateSpec:
    """The spec of a surrogate by name; KeyError names the allowed ones."""
    try:
        return SURROGATES[name]
    except KeyError:
        raise KeyError(f"unknown surrogate {name!r} (allowed: {', '.join(SURROGATES)})") from None


def derivative(x: torch.Tensor, surrogate: str, slope: float) -> torch.Tensor:
    """dS/dU at x = U - thr, as snnTorch defines it."""
    return spec(surrogate).derivative(x, slope)


def snntorch_surrogate(surrogate: str, slope: float) -> Any:
    """The matching snnTorch surrogate (a spike function), for the reference backend."""
    from snntorch import surrogate as sg

    entry = spec(surrogate)
    return getattr(sg, entry.snntorch)(**{entry.snntorch_slope: slope})
