"""Compile the CPU kernels ahead of their first use (`make install` runs this).

numba compiles each kernel the first time a process calls it with new argument types, and
keeps the machine code in its cache (`cache=True`, beside the kernels' source), so only the
first run on a machine pays. This runs every kernel once on a tiny network, each neuron model
of the kernel, static and spike input, training and evaluation, so no study, test or bench
pays it later.

    python -m harness.network.kernels.warm
"""

from __future__ import annotations

import time

import torch

from harness.config import make_run_config
from harness.network import readout
from harness.network.model import NUM_INPUTS, build_model
from harness.network.neurons import NEURONS
from harness.training.efficiency import Workload


def warm() -> float:
    """Run each kernel once (train and eval, each neuron model and input kind); seconds."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    for neuron in (name for name, spec in NEURONS.items() if "numba" in spec.kernels):
        for encoding in ("direct", "rate"):
            config = make_run_config(
                {"neuron": neuron, "encoding": encoding, "hidden": 8, "num_steps": 2,
                 "device": "cpu"}
            )  # fmt: skip
            model = build_model(config)
            images = torch.rand(4, NUM_INPUTS, generator=generator)
            inputs = images if encoding == "direct" else (images > 0.5).float().expand(2, 4, -1)
            labels = torch.arange(4)
            out = model(inputs)
            readout.loss(config.decoding, out.spikes, out.membranes, labels).backward()
            model.eval()
            with torch.no_grad():
                Workload(model, config.num_steps).add(inputs, model(inputs))
    return time.perf_counter() - started


if __name__ == "__main__":
    print("compiling the CPU kernels (first use on this machine only) ...", flush=True)
    print(f"compiled the CPU kernels in {warm():.0f} s; numba caches them for every run")
