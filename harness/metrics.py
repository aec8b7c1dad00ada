"""The metrics a run reports: one table, name -> what the rest of the code needs to know.

Config validation (which metrics a study may optimise), MLflow's parent runs, the report's
table, `harness compare` and the CLI read this table; a new metric is added here (and computed
where its kind says: `train.evaluate` for evaluation metrics).
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


METRICS: dict[str, Metric] = {
    "test_accuracy": Metric("test accuracy", 4, "maximize"),
    "rate_accuracy": Metric("rate acc.", 4, "maximize"),
    "latency_accuracy": Metric("latency acc.", 4, "maximize"),
    "test_loss": Metric("test loss", 3, "minimize"),
    "train_seconds": Metric("train s", 1, "minimize", objective=False),
    "hidden_firing_rate": Metric("hidden rate", 4, None, objective=False),
    "output_firing_rate": Metric("output rate", 4, None, objective=False),
}
OBJECTIVE_METRICS = tuple(name for name, spec in METRICS.items() if spec.objective)
