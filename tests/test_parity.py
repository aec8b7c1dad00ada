"""The fused backend computes what snnTorch computes: spikes, membranes and gradients."""

import pytest
import torch
from snntorch import functional as SF

from harness.config import make_run_config
from harness.network import encodings, readout
from harness.network.kernels import lif_scan
from harness.network.model import FusedNet
from tests.helpers import assert_same, images_and_labels, twin_models

CASES = [
    dict(beta=0.95, num_steps=25, surrogate="atan", slope=2.0, decoding="rate"),
    dict(beta=0.5, num_steps=10, surrogate="atan", slope=7.5, decoding="rate", threshold=0.25),
    dict(beta=0.99, num_steps=40, surrogate="fast_sigmoid", slope=5.0, decoding="rate"),
    dict(beta=1.0, num_steps=7, surrogate="fast_sigmoid", slope=100.0, decoding="rate"),
    dict(beta=0.9, num_steps=25, surrogate="atan", slope=0.5, decoding="latency"),
    dict(beta=0.8, num_steps=15, surrogate="fast_sigmoid", slope=25.0, decoding="latency"),
]


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("settings", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_fused_matches_the_snntorch_reference(settings, kernel):
    config, reference, fused = twin_models(kernel, **settings)
    assert_same(config, reference, fused, *images_and_labels())


# snnTorch's Synaptic: the numba kernel (auto picks it on the CPU) and the scan.
SYNAPTIC_CASES = [
    dict(num_steps=25, decoding="rate"),  # alpha unset: 0.9
    dict(alpha=0.5, beta=0.8, num_steps=10, surrogate="fast_sigmoid", slope=5.0, threshold=0.5),
    dict(alpha=1.0, beta=0.5, num_steps=15, surrogate="atan", slope=7.5, decoding="latency"),
    dict(alpha=0.95, beta=1.0, num_steps=7, surrogate="fast_sigmoid", threshold=2.0,
         decoding="latency"),
    dict(alpha=0.2, beta=0.99, num_steps=30, slope=0.5, threshold=0.25),
]  # fmt: skip


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("settings", SYNAPTIC_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_fused_synaptic_matches_snntorch_synaptic(settings, kernel):
    config, reference, fused = twin_models(kernel, neuron="synaptic", **settings)
    assert type(reference.lif1).__name__ == "Synaptic"
    assert float(reference.lif1.alpha) == pytest.approx(settings.get("alpha", 0.9))
    assert_same(
        config, reference, fused, *images_and_labels(3), membranes_to_scale=kernel == "numba"
    )


# Spike input (T, B, 784) from the run's encoding: the same spikes into both backends.
SPIKE_CASES = [
    dict(encoding="rate", beta=0.9, num_steps=12),
    dict(encoding="latency", beta=0.95, num_steps=20, decoding="latency", threshold=0.5),
    dict(encoding="rate", neuron="synaptic", alpha=0.8, beta=0.7, num_steps=10,
         surrogate="fast_sigmoid"),
    dict(encoding="latency", neuron="synaptic", beta=0.9, num_steps=16, decoding="latency"),
]  # fmt: skip


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("settings", SPIKE_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_fused_matches_the_reference_on_encoded_spikes(settings, kernel):
    config, reference, fused = twin_models(kernel, **settings)
    images, labels = images_and_labels(4)
    spikes = encodings.encode(
        config.encoding, images.clamp(0, 1), config.num_steps, torch.Generator().manual_seed(5)
    )
    assert spikes.shape == (config.num_steps, 32, 784)
    assert_same(config, reference, fused, spikes, labels)


def test_the_numba_kernel_refuses_a_neuron_model_it_does_not_run(monkeypatch):
    from dataclasses import replace

    from harness.network import neurons

    without = replace(neurons.NEURONS["synaptic"], kernels=())
    monkeypatch.setitem(neurons.NEURONS, "synaptic", without)
    synaptic = make_run_config({"hidden": 8, "neuron": "synaptic"})
    with pytest.raises(ValueError, match="kernel 'numba' does not run neuron synaptic .*leaky"):
        FusedNet(synaptic, kernel="numba")
    assert not FusedNet(synaptic)._numba(torch.zeros(2, 784))  # auto takes the scan


@pytest.mark.parametrize("neuron", ["leaky", "synaptic"])
def test_hidden_spike_counts_agree_in_eval_mode(neuron):
    config, reference, fused = twin_models("numba", neuron=neuron)
    images = torch.rand(8, 784, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        counts = [model.eval()(images).hidden_spikes for model in (reference, fused)]
    assert counts[0] > 0 and float(counts[0]) == float(counts[1])
    torch_path = FusedNet(config, kernel="torch").eval()
    torch_path.load_state_dict(fused.state_dict())
    with torch.no_grad():
        theirs, ours = torch_path(images), fused(images)
    assert float(theirs.hidden_spikes) == float(counts[1])
    for mine, other in zip(ours.layers, theirs.layers, strict=True):
        for a, b in zip(mine, other, strict=True):  # (the kernel gives the output's totals)
            assert torch.equal(a, b) if a.shape == b.shape else int(a.sum()) == int(b.sum())


def test_latency_decoding_matches_snntorch_functional():
    generator = torch.Generator().manual_seed(4)
    spikes = (torch.rand(20, 64, 10, generator=generator) < 0.08).float()
    spikes[:, 0, :] = 0  # a sample where nothing fires: every neuron counts as T - 1
    labels = torch.randint(0, 10, (64,), generator=generator)
    ours_in = spikes.clone().requires_grad_()
    theirs_in = spikes.clone().requires_grad_()
    ours = readout.latency_loss(ours_in, labels)
    theirs = SF.ce_temporal_loss()(theirs_in, labels)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad)
    accuracy = float((readout.latency_predict(spikes) == labels).float().mean())
    assert accuracy == pytest.approx(SF.accuracy_temporal(spikes, labels))
    assert readout.latency_predict(spikes)[0] == 0  # ties go to the lower class index


def test_rate_decoding_is_the_seeds_sum_of_per_step_losses():
    generator = torch.Generator().manual_seed(5)
    membranes = torch.randn(25, 32, 10, generator=generator)
    spikes = (membranes > 0.5).float()
    labels = torch.randint(0, 10, (32,), generator=generator)
    per_step = sum(torch.nn.functional.cross_entropy(membranes[t], labels) for t in range(25))
    torch.testing.assert_close(readout.rate_loss(membranes, labels), per_step)
    assert torch.equal(readout.rate_predict(spikes), spikes.sum(0).max(1).indices)


# The kernel runs fc2 and dL/dW2 over the hidden neurons that may fire (a static current of
# at least `reach`) where they are at most COMPACT_SHARE of a sample's.
REACH_CASES = [
    dict(num_steps=25, beta=0.95, threshold=1.0),
    dict(num_steps=7, beta=1.0, threshold=0.25),
    dict(num_steps=40, beta=0.5, threshold=2.0),
    dict(num_steps=25, beta=0.8, threshold=1.0, alpha=0.9),
    dict(num_steps=10, beta=1.0, threshold=0.5, alpha=1.0),
]


def _kernel_run(cur1, w2, b2, settings, activity=False):
    return lif_scan.fused_lif_net(
        cur1, w2, b2, settings["num_steps"], settings["beta"], settings["threshold"], "atan",
        2.0, activity=activity, alpha=settings.get("alpha"),
    )  # fmt: skip


@pytest.mark.parametrize("settings", REACH_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_a_neuron_below_the_reach_never_fires_and_one_just_above_does(settings, monkeypatch):
    least = lif_scan.reach(settings["num_steps"], settings.get("alpha"), settings["beta"],
                           settings["threshold"])  # fmt: skip
    # one sample, 2,000 hidden neurons: currents from -least to 2 least, and a pair a hair
    # either side of the bound without its margin
    exact = least / (1 - lif_scan.REACH_MARGIN)
    currents = torch.cat([
        torch.linspace(-least, 2 * least, 1998), torch.tensor([exact * 0.9999, exact * 1.0001])
    ]).float()  # fmt: skip
    w2, b2 = torch.zeros(10, 2000), torch.zeros(10)
    monkeypatch.setattr(lif_scan, "COMPACT_SHARE", 0.0)  # every sample dense: the scan as is
    _, _, counts, _ = _kernel_run(currents[None], w2, b2, settings, activity=True)
    fired = counts > 0
    assert not fired[currents < least].any()
    assert fired[currents >= exact * 1.0001].all()
    assert not fired[-2] and fired[-1]


@pytest.mark.parametrize("settings", REACH_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_the_listed_neurons_give_the_dense_paths_spikes_and_gradients(settings, monkeypatch):
    generator = torch.Generator().manual_seed(3)
    least = lif_scan.reach(settings["num_steps"], settings.get("alpha"), settings["beta"],
                           settings["threshold"])  # fmt: skip
    # 16 samples of 300 neurons, 10 to 60 % of each sample's able to fire
    share = torch.linspace(0.1, 0.6, 16)[:, None]
    cur1 = torch.where(
        torch.rand(16, 300, generator=generator) < share,
        least * (1 + 4 * torch.rand(16, 300, generator=generator)),
        -least + 1.9 * least * torch.rand(16, 300, generator=generator),
    ).float()  # fmt: skip
    w2 = torch.randn(10, 300, generator=generator) * 0.1
    b2 = torch.randn(10, generator=generator) * 0.1
    target = torch.randn(settings["num_steps"], 16, 10, generator=generator)
    results = {}
    for name, share_taken in (("dense", 0.0), ("listed", 1.0)):
        monkeypatch.setattr(lif_scan, "COMPACT_SHARE", share_taken)
        leaves = [x.clone().requires_grad_() for x in (cur1, w2, b2)]
        spikes, membranes, _, _ = _kernel_run(*leaves, settings)
        ((spikes + membranes) * target).sum().backward()
        results[name] = (spikes.detach(), membranes.detach(), *(x.grad for x in leaves))
    dense, listed = results["dense"], results["listed"]
    assert dense[0].sum() > 0
    assert torch.equal(dense[0], listed[0])  # the same spikes
    # fc2's sums run over fewer terms: rounding only, up to 1e-5 of each tensor's largest value
    for a, b in zip(dense[1:], listed[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


@pytest.mark.parametrize("share, listed", [(0.0, False), (1.0, True)])
def test_the_listed_forward_never_reads_the_silent_neurons_weights(share, listed, monkeypatch):
    """The probe that the listed path is taken at all: W2's columns at the neurons that cannot
    fire are NaN, which the dense product (0 x NaN) carries into every output membrane."""
    settings = REACH_CASES[0]
    least = lif_scan.reach(settings["num_steps"], None, settings["beta"], settings["threshold"])
    cur1 = torch.cat([torch.full((4, 100), 2 * least), torch.full((4, 200), -least)], 1)
    w2 = torch.ones(10, 300)
    w2[:, 100:] = float("nan")
    monkeypatch.setattr(lif_scan, "COMPACT_SHARE", share)
    _, membranes, _, _ = _kernel_run(cur1[None], w2, torch.zeros(10), settings)
    assert bool(membranes.isfinite().all()) == listed
