"""The fused backend computes what snnTorch computes: spikes, membranes and gradients."""

import pytest
import torch
from snntorch import functional as SF

from harness import decoding
from harness.config import make_run_config
from harness.model import FusedNet, build_model


def twin_models(kernel="auto", **settings):
    config = make_run_config({"hidden": 64, **settings})
    torch.manual_seed(1)
    reference = build_model(config.model_copy(update={"backend": "reference"}))
    fused = FusedNet(config, kernel=kernel)
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


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("settings", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_fused_matches_the_snntorch_reference(settings, kernel):
    config, reference, fused = twin_models(kernel, **settings)
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(32, 784, generator=generator) * 1.5
    labels = torch.randint(0, 10, (32,), generator=generator)
    ref_out, ref_loss, ref_grads = run(reference, config, images, labels)
    out, loss, grads = run(fused, config, images, labels)

    assert ref_out.spikes.sum() > 0  # the comparison is not vacuous
    near_threshold = (ref_out.membranes - config.threshold).abs() < 1e-6
    assert torch.equal(out.spikes[~near_threshold], ref_out.spikes[~near_threshold])
    # 1e-6, relative where |U| > 1: float32 spacing at |U| = 8 is already 9.5e-7.
    torch.testing.assert_close(out.membranes, ref_out.membranes, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for name, ref_grad in ref_grads.items():
        assert ref_grad.abs().max() > 0, name
        scale = float(ref_grad.abs().max())
        torch.testing.assert_close(grads[name], ref_grad, rtol=1e-5, atol=1e-5 * scale)


def test_hidden_spike_counts_agree_in_eval_mode():
    config, reference, fused = twin_models("numba")
    images = torch.rand(8, 784, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        counts = [model.eval()(images).hidden_spikes for model in (reference, fused)]
    assert counts[0] > 0 and float(counts[0]) == float(counts[1])
    torch_path = FusedNet(config, kernel="torch").eval()
    torch_path.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert float(torch_path(images).hidden_spikes) == float(counts[1])


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
