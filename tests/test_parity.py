"""The fused backend computes what snnTorch computes: spikes, membranes and gradients."""

import pytest
import torch
from snntorch import functional as SF

from harness import decoding
from harness.config import make_run_config
from harness.model import build_model
from harness.neurons import lif_scan


def twin_models(**settings):
    config = make_run_config({"hidden": 64, **settings})
    torch.manual_seed(1)
    reference = build_model(config.model_copy(update={"backend": "reference"}))
    fused = build_model(config.model_copy(update={"backend": "fused"}))
    fused.fc1.load_state_dict(reference.fc1.state_dict())
    fused.fc2.load_state_dict(reference.fc2.state_dict())
    return config, reference, fused


def run(model, config, images, labels):
    model.zero_grad()
    out = model(images)
    loss = decoding.loss(config.decoding, out.spikes, out.membranes, labels)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out, loss.detach(), grads


CASES = [
    dict(beta=0.95, num_steps=25, surrogate="atan", slope=2.0, decoding="rate"),
    dict(beta=0.5, num_steps=10, surrogate="atan", slope=7.5, decoding="rate", threshold=0.25),
    dict(beta=0.99, num_steps=40, surrogate="fast_sigmoid", slope=5.0, decoding="rate"),
    dict(beta=1.0, num_steps=7, surrogate="fast_sigmoid", slope=100.0, decoding="rate"),
    dict(beta=0.9, num_steps=25, surrogate="atan", slope=0.5, decoding="latency"),
    dict(beta=0.8, num_steps=15, surrogate="fast_sigmoid", slope=25.0, decoding="latency"),
]


@pytest.mark.parametrize("settings", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_fused_matches_the_snntorch_reference(settings):
    config, reference, fused = twin_models(**settings)
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(32, 784, generator=generator) * 1.5
    labels = torch.randint(0, 10, (32,), generator=generator)
    ref_out, ref_loss, ref_grads = run(reference, config, images, labels)
    out, loss, grads = run(fused, config, images, labels)

    assert ref_out.spikes.sum() > 0  # the comparison is not vacuous
    near_threshold = (ref_out.membranes - config.threshold).abs() < 1e-6
    assert torch.equal(out.spikes[~near_threshold], ref_out.spikes[~near_threshold])
    torch.testing.assert_close(out.membranes, ref_out.membranes, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for name, ref_grad in ref_grads.items():
        assert ref_grad.abs().max() > 0, name
        scale = float(ref_grad.abs().max())
        torch.testing.assert_close(grads[name], ref_grad, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("surrogate", ["atan", "fast_sigmoid"])
@pytest.mark.parametrize("static", [True, False])
def test_numba_and_torch_kernels_agree(surrogate, static):
    generator = torch.Generator().manual_seed(3)
    shape = (16, 50) if static else (12, 16, 50)
    current = (torch.randn(shape, generator=generator) * 0.6 + 0.2).requires_grad_()
    grad_spikes = torch.randn(12, 16, 50, generator=generator)
    grad_membranes = torch.randn(12, 16, 50, generator=generator)
    results = []
    for kernel in ("numba", "torch"):
        current.grad = None
        spikes, membranes = lif_scan(current, 12, 0.9, 1.0, surrogate, 3.0, kernel=kernel)
        ((spikes * grad_spikes).sum() + (membranes * grad_membranes).sum()).backward()
        results.append((spikes, membranes, current.grad.clone()))
    (s1, m1, g1), (s2, m2, g2) = results
    assert torch.equal(s1, s2) and 0 < s1.mean() < 1
    torch.testing.assert_close(m1, m2, rtol=0, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5 * float(g2.abs().max()))


def test_latency_decoding_matches_snntorch_functional():
    generator = torch.Generator().manual_seed(4)
    spikes = (torch.rand(20, 64, 10, generator=generator) < 0.08).float()
    spikes[:, 0, :] = 0  # a sample where nothing fires: every neuron counts as T - 1
    labels = torch.randint(0, 10, (64,), generator=generator)
    ours_in = spikes.clone().requires_grad_()
    theirs_in = spikes.clone().requires_grad_()
    ours = decoding.latency_loss(ours_in, labels)
    theirs = SF.ce_temporal_loss()(theirs_in, labels)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad)
    accuracy = float((decoding.latency_predict(spikes) == labels).float().mean())
    assert accuracy == pytest.approx(SF.accuracy_temporal(spikes, labels))
    assert decoding.latency_predict(spikes)[0] == 0  # ties go to the lower class index


def test_rate_decoding_is_the_seeds_sum_of_per_step_losses():
    generator = torch.Generator().manual_seed(5)
    membranes = torch.randn(25, 32, 10, generator=generator)
    spikes = (membranes > 0.5).float()
    labels = torch.randint(0, 10, (32,), generator=generator)
    per_step = sum(torch.nn.functional.cross_entropy(membranes[t], labels) for t in range(25))
    torch.testing.assert_close(decoding.rate_loss(membranes, labels), per_step)
    assert torch.equal(decoding.rate_predict(spikes), spikes.sum(0).max(1).indices)
