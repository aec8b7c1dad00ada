"""A network of your own for the harness: two hidden layers of leaky neurons, written as
snnTorch's tutorials and NeuroBench write a model (see the README, "Your own network").

    harness study examples/own_network/own_network.yaml
"""

import snntorch as snn
from torch import nn


def build(inputs, outputs, beta, threshold, spike_grad, width=128, depth=2, **settings):
    """Linear -> Leaky, `depth` times at `width`, then Linear -> Leaky for the classes.

    `inputs`, `outputs`, `beta`, `threshold` and `spike_grad` come from the run's settings;
    `width` and `depth` from its model_args; `**settings` takes what this model does not use
    (num_steps).
    """
    layers = []
    for size in [inputs] + [width] * (depth - 1):
        layers += [
            nn.Linear(size, width),
            snn.Leaky(beta=beta, threshold=threshold, spike_grad=spike_grad, init_hidden=True),
        ]
    layers += [
        nn.Linear(width, outputs),
        snn.Leaky(
            beta=beta, threshold=threshold, spike_grad=spike_grad, init_hidden=True, output=True
        ),
    ]
    return nn.Sequential(*layers)
