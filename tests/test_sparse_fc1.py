"""The fused backend's fc1 for sparse inputs (MNIST is ~80 % zeros) computes nn.Linear."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.network.kernels.sparse_linear import sparse_linear
from tests.helpers import assert_same, run, twin_models


def sparse_images(density: float, batch: int = 64, seed: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(batch, 784, generator=generator)
    return values * (torch.rand(batch, 784, generator=generator) < density)


@pytest.mark.parametrize("density", [0.0, 0.05, 0.19, 0.6])
def test_fc1_equals_a_linear_layer_forward_and_backward(density):
    torch.manual_seed(3)
    layer = nn.Linear(784, 300)
    weight_t = nn.Parameter(layer.weight.detach().t().contiguous())  # (in, out)
    bias = nn.Parameter(layer.bias.detach().clone())
    images = sparse_images(density).requires_grad_()
    expected_images = images.detach().clone().requires_grad_()

    out = sparse_linear(images, weight_t, bias)
    expected = F.linear(expected_images, layer.weight, layer.bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(weight_t.grad, layer.weight.grad.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, layer.bias.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(images.grad, expected_images.grad, rtol=1e-5, atol=1e-5)
    # in the parameter's layout, contiguous: fused Adam copies nothing
    assert weight_t.grad.stride() == weight_t.stride() == (300, 1)


def test_fused_matches_the_reference_on_sparse_images():
    """The parity test's images are dense (the dense product then runs); MNIST's are not."""
    config, reference, fused = twin_models("numba")
    images = sparse_images(0.19, batch=32)
    labels = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(8))
    assert_same(config, reference, fused, images, labels)
    out, _, _ = run(fused, config, images, labels)
    assert out.spikes.sum() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_weights_of_a_cuda_run_load_on_a_machine_without_one(tmp_path):
    """A run's config names its device; its weights still load (and compute) here."""
    from harness.config import make_run_config
    from harness.network.model import build_model, load_weights, save_weights

    config = make_run_config({"hidden": 32, "device": "cpu"})
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = tmp_path / "model.pt"
    save_weights(model.state_dict(), path, config)
    loaded = load_weights(str(path), config.model_copy(update={"device": "cuda"})).eval()
    images = sparse_images(0.19, batch=8)
    with torch.no_grad():
        assert torch.equal(loaded(images).membranes, model(images).membranes)


def test_the_fused_fc1_is_nn_linear_stored_transposed():
    """Same draws from the seed as nn.Linear, nn.Linear's state dict both ways, and a
    contiguous (in, out) parameter with a gradient in its layout (fused Adam copies none)."""
    from harness.config import make_run_config
    from harness.network.model import build_model

    config = make_run_config({"hidden": 40})
    torch.manual_seed(5)
    fused = build_model(config)
    torch.manual_seed(5)
    reference = build_model(config.model_copy(update={"backend": "reference"}))
    assert torch.equal(fused.fc1.weight, reference.fc1.weight)
    assert fused.fc1.weight_t.shape == (784, 40) and fused.fc1.weight_t.is_contiguous()

    state = fused.state_dict()
    assert list(state) == [k for k in reference.state_dict() if k.startswith(("fc1", "fc2"))]
    assert state["fc1.weight"].shape == (40, 784)
    with torch.no_grad():
        reference.fc1.weight.mul_(2.0)
    fused.load_state_dict(reference.state_dict(), strict=False)  # snnTorch's buffers extra
    assert torch.equal(fused.fc1.weight, reference.fc1.weight)
    assert fused.fc1.weight_t.is_contiguous()

    images, labels = sparse_images(0.19, batch=16), torch.randint(0, 10, (16,))
    _, _, grads = run(fused, config, images, labels)
    assert fused.fc1.weight_t.grad.stride() == fused.fc1.weight_t.stride()
    assert grads["fc1.weight"].shape == (40, 784) and grads["fc1.weight"].abs().max() > 0
