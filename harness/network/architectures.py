"""The network architectures a run may train: one table, everything else reads it.

No torch import here (config.py reads the names); `layers` names the function of
harness/network/model.py that lists the architecture's blocks.

- `mlp`: Linear -> neurons per hidden width, then Linear -> neurons for the classes. `hidden`
  is its widths: 1000 (or [1000]) is tutorial 5's network, [500, 250] has two hidden layers.
- `csnn`: snnTorch tutorial 6's convolutional network on 28x28 images,
  12C5-MP2-64C5-MP2-FC10: Conv2d(1, 12, 5) -> MaxPool2d(2) -> neurons -> Conv2d(12, 64, 5) ->
  MaxPool2d(2) -> neurons -> Linear(1024, 10) -> neurons. `hidden` is not used.

Every architecture takes the run's neuron model, surrogate, threshold, beta, steps, encoding
and decoding. The fused backend runs `mlp` with one hidden layer (its CPU kernel computes
tutorial 5's shape); every other network trains on the reference backend (PyTorch's step loop:
CUDA, MPS or CPU).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    title: str
    layers: str  # the function of harness.network.model that lists its blocks
    input_shape: tuple[int, ...]  # one sample as its first synapse takes it


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec("mlp", "fully connected: Linear -> neurons per hidden width, then the "
                         "classes (tutorial 5)", "mlp_blocks", (28 * 28,)),
        ArchitectureSpec("csnn", "convolutional, 12C5-MP2-64C5-MP2-FC10 (tutorial 6)",
                         "csnn_blocks", (1, 28, 28)),
    )
}  # fmt: skip
DEFAULT_ARCHITECTURE = "mlp"
FUSED_ONLY = "architecture mlp with one hidden layer (tutorial 5's shape); use backend reference"

# Your own network (harness/network/user_model.py): `model: "module:function"`, and what the
# harness passes its factory besides the run's `model_args`.
USER_MODEL_PATTERN = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"
USER_MODEL_SETTINGS = ("inputs", "outputs", "num_steps", "beta", "threshold", "spike_grad")
