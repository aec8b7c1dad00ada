"""Your own network: `model: "my_module:build"` in a run's settings, trained by the reference
backend's loop and measured by the same metrics as the built-in networks.

The contract is NeuroBench's `SNNTorchModel` convention, so a model NeuroBench accepts works
here:
- `build(**settings)` returns an nn.Module of layers and snnTorch neurons built with
  `init_hidden=True`, the last one with `output=True`; `settings` holds `inputs` (784),
  `outputs` (10), `num_steps`, `beta`, `threshold`, `spike_grad` (the snnTorch surrogate of
  `surrogate` and `slope`) and the run's `model_args`; a factory takes what it needs and
  `**kwargs` for the rest;
- the harness calls it once a step with that step's input, (batch, 784), and gets
  `(spikes, membrane)`, each (batch, 10);
- the harness resets its neurons' state before each batch (the module's own `reset()` if it
  has one, else `snntorch.utils.reset`, as NeuroBench does).

Its synapses are its nn.Linear and nn.Conv2d modules, its layers of neurons its snnTorch
neurons, each in the order it calls them. Building a `UserNet` runs one step on one blank
sample to learn their shapes and check the contract; every breach is a ConfigError of one line
that names the contract.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.network.model import NUM_INPUTS, NUM_OUTPUTS, LayerActivity, NetOutput, _eval_output

CONTRACT = (
    "the contract: build(**settings) returns an nn.Module of layers and snnTorch neurons built "
    "with init_hidden=True, the last one with output=True; called once a step with that step's "
    f"input (batch, {NUM_INPUTS}), it returns (spikes, membrane), each (batch, {NUM_OUTPUTS})"
)
SYNAPSE_TYPES = (nn.Linear, nn.Conv2d)  # the connection layers the metrics count


def load_factory(spec: str) -> Callable[..., Any]:
    """The factory `module:attribute` names; ConfigError (one line) if it cannot be had."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any error of the user's module is theirs to read
        raise ConfigError(
            f"model '{spec}': cannot import module '{module_name}' ({type(err).__name__}: "
            f"{_first_line(err)}); it must be importable from the study file's folder or "
            f"PYTHONPATH; {CONTRACT}"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        found = "is not callable" if hasattr(module, attribute) else "has no attribute"
        raise ConfigError(
            f"model '{spec}': module '{module_name}' {found} '{attribute}'; {CONTRACT}"
        )
    return factory


def model_settings(config: Any) -> dict[str, Any]:
    """What the factory is called with: the run's settings it may need, then `model_args`."""
    from harness.network.surrogates import snntorch_surrogate

    return {
        "inputs": NUM_INPUTS,
        "outputs": NUM_OUTPUTS,
        "num_steps": config.num_steps,
        "beta": config.beta,
        "threshold": config.threshold,
        "spike_grad": snntorch_surrogate(config.surrogate, config.surrogate_slope),
        **config.model_args,
    }


def contract_error(spec: str, what: str) -> ConfigError:
    """The one line a breach of the contract prints."""
    return ConfigError(f"model '{spec}': {what}; {CONTRACT}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else "no message"


class UserNet(nn.Module):
    """A user's snnTorch module behind the harness's network interface (`NetOutput`,
    `synapses()`, `neuron_shapes`, `input_shape`). Its state dict is the user module's own,
    so saved weights load back into what `build` returns."""

    def __init__(self, config: Any):
        import snntorch as snn

        super().__init__()
        snn.SpikingNeuron.init()  # snnTorch keeps every neuron ever built (its issue #328)
        self.spec = config.model
        factory = load_factory(config.model)
        try:
            net = factory(**model_settings(config))
        except Exception as err:
            raise self._error(f"{config.model}(...) raised {type(err).__name__}: "
                              f"{_first_line(err)}") from None  # fmt: skip
        if not isinstance(net, nn.Module):
            raise self._error(
                f"{config.model}(...) returned {type(net).__name__}, not an nn.Module"
            )
        self.net = net
        self.num_steps = config.num_steps
        self.input_shape = (NUM_INPUTS,)
        self._neurons = [m for m in net.modules() if isinstance(m, snn.SpikingNeuron)]
        self._synapses = [m for m in net.modules() if isinstance(m, SYNAPSE_TYPES)]
        if not self._neurons:
            raise self._error("the module has no snnTorch neurons")
        if not self._synapses:
            raise self._error("the module has no nn.Linear or nn.Conv2d synapses")
        if not all(getattr(m, "init_hidden", False) for m in self._neurons):
            raise self._error("a neuron is built without init_hidden=True")
        self._observer: Callable[[int, torch.Tensor], None] | None = None
        self._activity: list[list[torch.Tensor]] | None = None
        self._step = 0
        self._probe()
        for index, neuron in enumerate(self._neurons):  # (in the order they are called)
            neuron.register_forward_pre_hook(self._before_neuron)
            neuron.register_forward_hook(partial_hook(self._after_neuron, index))
        for index, synapse in enumerate(self._synapses):
            synapse.register_forward_pre_hook(partial_hook(self._before_synapse, index))
        self.register_state_dict_post_hook(_without_prefix)
        self.register_load_state_dict_pre_hook(_with_prefix)

    def _error(self, what: str) -> ConfigError:
        return contract_error(self.spec, what)

    def _probe(self) -> None:
        """One step on one blank sample: each layer's shape, the order of the calls, and the
        output's form; the neurons' state after it (NeuroBench's footprint counts it)."""
        seen: dict[str, list[tuple[int, tuple[int, ...]]]] = {"synapse": [], "neuron": []}
        handles = [
            m.register_forward_hook(partial_hook(_record, seen["synapse"], i, "input"))
            for i, m in enumerate(self._synapses)
        ] + [
            m.register_forward_hook(partial_hook(_record, seen["neuron"], i, "output"))
            for i, m in enumerate(self._neurons)
        ]
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                self._reset()
                self._call(torch.zeros(1, NUM_INPUTS))
        except ConfigError:
            raise
        except Exception as err:  # the user's forward: theirs to read, in one line
            raise self._error(f"a step raised {type(err).__name__}: {_first_line(err)}") from None
        finally:
            for handle in handles:
                handle.remove()
            self.train(was_training)
        for kind, modules in (("synapse", self._synapses), ("neuron", self._neurons)):
            order = [i for i, _ in seen[kind]]
            if sorted(order) != list(range(len(modules))):
                raise self._error(
                    f"each {kind} must be called once a step, in the order it is built "
                    f"(calls seen: {order}, of {len(modules)})"
                )
            if order != list(range(len(modules))):  # the metrics read them in call order
                ranked = [modules[i] for i in order]
                modules[:] = ranked
                seen[kind].sort(key=lambda pair: order.index(pair[0]))
        self.synapse_input_shapes = [shape for _, shape in seen["synapse"]]
        self.neuron_shapes = [shape for _, shape in seen["neuron"]]
        if self.neuron_shapes[-1] != (NUM_OUTPUTS,):
            raise self._error(f"the last neurons have shape {self.neuron_shapes[-1]}")
        self.measured_state_bytes = sum(
            b.numel() * b.element_size() for m in self._neurons for b in m.buffers()
        )

    def _call(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the user's module, its output checked against the contract."""
        out = self.net(x)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            got = f"a {type(out).__name__}" + (
                f" of {len(out)}" if isinstance(out, tuple | list) else ""
            )
            raise self._error(f"a step returned {got}, not (spikes, membrane)")
        expected = (x.shape[0], NUM_OUTPUTS)
        for name, tensor in zip(("spikes", "membrane"), out, strict=True):
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected:
                shape = (
                    tuple(tensor.shape)
                    if isinstance(tensor, torch.Tensor)
                    else type(tensor).__name__
                )
                raise self._error(f"a step returned {name} of shape {shape}, not {expected}")
        return out[0], out[1]

    def _reset(self) -> None:
        """Each neuron's state back to rest, as NeuroBench resets a model between batches:
        the module's own `reset()`, else snntorch.utils.reset."""
        if callable(getattr(self.net, "reset", None)):
            self.net.reset()
        else:
            from snntorch import utils

            utils.reset(self.net)

    def synapses(self) -> list[nn.Module]:
        """Its synaptic layers in the order it calls them (for the efficiency metrics)."""
        return list(self._synapses)

    def observe_synapses(self, observer: Callable[[int, torch.Tensor], None] | None) -> None:
        """Call `observer(index, input)` with each synapse's input in eval mode (the
        efficiency metrics count a user model's operations this way: its wiring is its own)."""
        self._observer = observer

    def _before_synapse(self, index: int, module: nn.Module, args: tuple) -> None:
        if self._observer is not None and not self.training:
            self._observer(index, args[0])

    def _before_neuron(self, module: nn.Module, args: tuple) -> None:
        module._harness_previous = getattr(module, "mem", None)

    def _after_neuron(self, index: int, module: nn.Module, args: tuple, output: Any) -> None:
        if self._activity is None:
            return
        spikes = output[0] if isinstance(output, tuple) else output
        counts, updates = self._activity[index]
        counts += spikes.sum(0).to(torch.int64)
        previous = module._harness_previous
        if self._step and isinstance(previous, torch.Tensor) and previous.shape == module.mem.shape:
            updates += torch.count_nonzero(module.mem != previous)

    def forward(self, x: torch.Tensor):
        self._reset()
        batch = x.shape[-2] if x.dim() == 3 else x.shape[0]
        if not self.training:
            self._activity = [
                [x.new_zeros(shape, dtype=torch.int64), x.new_zeros((), dtype=torch.int64)]
                for shape in self.neuron_shapes
            ]
        spk_rec, mem_rec = [], []
        try:
            for step in range(self.num_steps):
                self._step = step
                h = x[step] if x.dim() == 3 else x
                spikes, membrane = self._call(h.reshape(batch, -1))
                spk_rec.append(spikes)
                mem_rec.append(membrane)
            activity, self._activity = self._activity, None
        finally:
            self._activity = None
        spikes, membranes = torch.stack(spk_rec), torch.stack(mem_rec)
        if self.training:
            return NetOutput(spikes, membranes, None)
        hidden = [LayerActivity(c, u) for c, u in activity[:-1]]
        return _eval_output(spikes, membranes, hidden)


def partial_hook(function: Callable[..., Any], *first: Any) -> Callable[..., Any]:
    """A hook that calls `function(*first, *hook_arguments)`."""
    return lambda *args: function(*first, *args)


def _record(
    seen: list, index: int, which: str, module: nn.Module, args: tuple, output: Any
) -> None:
    tensor = args[0] if which == "input" else (output[0] if isinstance(output, tuple) else output)
    seen.append((index, tuple(tensor.shape[1:])))


def _without_prefix(module: nn.Module, state_dict: dict, prefix: str, metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "net.")]:
        state_dict[prefix + key[len(prefix) + 4 :]] = state_dict.pop(key)


def _with_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for key in [
        k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "net.")
    ]:
        state_dict[prefix + "net." + key[len(prefix) :]] = state_dict.pop(key)


def dry_run(config: Any) -> None:
    """Build the model of `config` and run one batch of two samples through it, training
    (with a backward pass) and evaluating: every breach of the contract is found here, before
    a store is opened or data loaded. The global random state is left as it was."""
    from harness.network import encodings, readout

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        images = torch.rand(2, NUM_INPUTS)
        spec = encodings.spec(config.encoding)
        inputs = images
        if spec.spiking:
            inputs = spec.encode(images, config.num_steps, torch.Generator().manual_seed(0))
        labels = torch.tensor([0, 1])
        try:
            model = UserNet(config)
            out = model(inputs)
            readout.loss(config.decoding, out.spikes, out.membranes, labels).backward()
            model.eval()
            with torch.no_grad():
                model(inputs)
        except ConfigError:
            raise
        except Exception as err:
            what = f"a step raised {type(err).__name__}: {_first_line(err)}"
            raise contract_error(config.model, what) from None
        if not any(p.grad is not None for p in model.parameters()):
            raise contract_error(
                config.model,
                "no parameter received a gradient (is the output computed from its layers?)",
            )
