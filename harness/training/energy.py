"""Energy per operation: the table behind `energy_estimate_pj`, without torch.

`energy_estimate_pj` is the arithmetic energy of one inference, estimated from the efficiency
metrics: effective MACs x the energy of a multiply-accumulate + effective ACs x the energy of
an accumulate (an addition). It is an estimate for a given process and number format, not a
measurement: it leaves out memory traffic (reading weights and membranes, often the larger
part on real hardware), leakage and control. Comparisons between configurations on the same
entry are what it is for.

A new entry is a line in ENERGY_MODELS with its source; `energy_model:` in a study chooses it.
"""

from __future__ import annotations

from dataclasses import dataclass

HOROWITZ = (
    'M. Horowitz, "Computing\'s energy problem (and what we can do about it)", ISSCC 2014, '
    "45 nm CMOS"
)


@dataclass(frozen=True)
class EnergyModel:
    mac_pj: float  # one multiply-accumulate: a multiply and an add
    ac_pj: float  # one accumulate: an add (a spike into a synapse)
    source: str


ENERGY_MODELS: dict[str, EnergyModel] = {
    # 32-bit float: multiply 3.7 pJ, add 0.9 pJ
    "horowitz45_fp32": EnergyModel(3.7 + 0.9, 0.9, f"{HOROWITZ}, 32-bit float"),
    # 16-bit float: multiply 1.1 pJ, add 0.4 pJ
    "horowitz45_fp16": EnergyModel(1.1 + 0.4, 0.4, f"{HOROWITZ}, 16-bit float"),
    # 32-bit integer: multiply 3.1 pJ, add 0.1 pJ
    "horowitz45_int32": EnergyModel(3.1 + 0.1, 0.1, f"{HOROWITZ}, 32-bit integer"),
    # 8-bit integer: multiply 0.2 pJ, add 0.03 pJ
    "horowitz45_int8": EnergyModel(0.2 + 0.03, 0.03, f"{HOROWITZ}, 8-bit integer"),
}
DEFAULT_ENERGY_MODEL = "horowitz45_fp32"


def energy_pj(macs: float, acs: float, model: str = DEFAULT_ENERGY_MODEL) -> float:
    """Arithmetic energy in picojoules of `macs` multiply-accumulates and `acs` accumulates."""
    spec = ENERGY_MODELS[model]
    return macs * spec.mac_pj + acs * spec.ac_pj
