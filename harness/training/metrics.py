"""The metrics a run reports: one table, name -> what the rest of the code needs to know.

Config validation (which metrics a study may optimise), MLflow's parent runs, the report's
table, `harness compare` and the CLI read this table. A new metric is an entry here, computed
in `harness.training.loop.evaluate` (a test-set metric) or `harness.training.efficiency` (an
efficiency metric, with `efficiency` its kind: per test sample, or fixed by the weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    label: str  # column heading in reports
    digits: int  # decimals shown
    direction: Literal["maximize", "minimize"] | None  # which way is better (None: neither)
    objective: bool = True  # may a study optimise it?
    efficiency: Literal["workload", "static"] | None = None  # one of NeuroBench's, of which kind


METRICS: dict[str, Metric] = {
    "test_accuracy": Metric("test accuracy", 4, "maximize"),
    "rate_accuracy": Metric("rate acc.", 4, "maximize"),
    "latency_accuracy": Metric("latency acc.", 4, "maximize"),
    "test_loss": Metric("test loss", 3, "minimize"),
    "train_seconds": Metric("train s", 1, "minimize", objective=False),
    "hidden_firing_rate": Metric("hidden rate", 4, None, objective=False),
    "output_firing_rate": Metric("output rate", 4, None, objective=False),
    # NeuroBench 2.3's metrics (computed by `training.efficiency`; README "Efficiency metrics").
    # Workload: per test sample, over the whole test set. Fewer operations cost less energy on
    # any hardware, so the counts are minimised; sparser activity is what makes an SNN cheap
    # on event-driven hardware, so activation sparsity is maximised (each only means something
    # beside accuracy: a silent network is perfectly sparse and useless).
    "activation_sparsity": Metric("act. sparsity", 4, "maximize", efficiency="workload"),
    "synops_effective_macs": Metric("eff. MACs", 0, "minimize", efficiency="workload"),
    "synops_effective_acs": Metric("eff. ACs", 0, "minimize", efficiency="workload"),
    "synops_dense": Metric("dense synops", 0, "minimize", efficiency="workload"),
    "membrane_updates": Metric("membrane updates", 0, "minimize", efficiency="workload"),
    # Not NeuroBench's: arithmetic energy per inference from the effective MACs and ACs and the
    # run's `energy_model` (harness/training/energy.py); an estimate, not a measurement.
    "energy_estimate_pj": Metric("energy pJ", 0, "minimize", efficiency="workload"),
    # Static: fixed by the configuration (hidden size), not learned, so not study objectives.
    "footprint_bytes": Metric("footprint B", 0, "minimize", objective=False, efficiency="static"),
    "parameter_count": Metric("parameters", 0, "minimize", objective=False, efficiency="static"),
    "connection_sparsity": Metric(
        "conn. sparsity", 4, "maximize", objective=False, efficiency="static"
    ),
}
OBJECTIVE_METRICS = tuple(name for name, spec in METRICS.items() if spec.objective)
EFFICIENCY_METRICS = tuple(name for name, spec in METRICS.items() if spec.efficiency)

# Per layer, logged beside the table's metrics (MLflow groups them by the part before "/"):
# each layer of neurons' firing rate (firing_rate/layerK), and each synapse's effective
# operations (MACs + ACs) per test sample (synops/synapseK), numbered from 1 in the order the
# network runs them. In a chain (the built-in networks) synapse K feeds layer K; a network of
# your own may have more synapses than layers (a recurrent layer's own weights).
LAYER_METRICS = {
    "firing_rate": ("layer", "firing rate"),
    "synops": ("synapse", "effective synops per sample"),
}


def layer_metric(kind: str, number: int) -> str:
    """The MLflow name of a per-layer metric: `firing_rate/layer2`, `synops/synapse1`."""
    return f"{kind}/{LAYER_METRICS[kind][0]}{number}"
