"""Certified Lipschitz bounds: never below the model's Jacobian norm, layers refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from privacy.inference import UnsupportedLayerError, fold_input_affine, lipschitz_bound
from privacy.inference.lipschitz import conv_dense_norm, conv_fft_bound, conv_power_estimate
from tasks.data import DatasetSpec, load_dataset
from tasks.models import ModelSpec, build_model


def jacobian_norm(model: nn.Module, x: torch.Tensor) -> float:
    """Spectral norm of the model's input Jacobian at one input (the local Lipschitz constant)."""
    jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x)
    return float(torch.linalg.matrix_norm(jac.reshape(jac.shape[0], -1).double(), ord=2))


def trained(name: str, shape: tuple[int, ...], steps: int = 30) -> nn.Module:
    """A zoo model after a few SGD steps on digits (weights away from their initialisation)."""
    model = build_model(ModelSpec(name, shape, 10), seed=1)
    data = load_dataset(DatasetSpec("digits"))
    x = torch.as_tensor(data.x_train[:256])
    y = torch.as_tensor(data.y_train[:256])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("name", ["softmax", "mlp", "cnn"])
def test_bound_never_below_jacobian_norm_digits(name: str) -> None:
    model = trained(name, (1, 8, 8))
    cert = lipschitz_bound(model, (1, 8, 8))
    data = load_dataset(DatasetSpec("digits"))
    gen = torch.Generator().manual_seed(0)
    points = [torch.as_tensor(data.x_test[i]) for i in range(5)]
    points += [torch.rand((1, 8, 8), generator=gen) for _ in range(5)]
    points += [3 * torch.randn((1, 8, 8), generator=gen) for _ in range(3)]
    norms = [jacobian_norm(model, p) for p in points]
    assert max(norms) > 0
    assert all(n <= cert.bound for n in norms), (max(norms), cert.bound)
    if name != "cnn":  # no GroupNorm: the product bound is within a small factor here
        assert cert.bound < 50 * max(norms)


def test_bound_never_below_jacobian_norm_dpcnn_and_finite_differences() -> None:
    shape = (1, 16, 16)
    model = build_model(ModelSpec("dpcnn", shape, 10, hidden=16), seed=2).eval()
    cert = lipschitz_bound(model, shape)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.rand(shape, generator=gen)
        assert jacobian_norm(model, x) <= cert.bound
        d = torch.randn(shape, generator=gen)
        d = 0.3 * d / d.norm()
        with torch.no_grad():
            change = float((model((x + d)[None]) - model(x[None])).norm())
        assert change <= cert.bound * 0.3 + 1e-6


@pytest.mark.parametrize(
    "conv,shape",
    [
        (nn.Conv2d(2, 3, 3, padding=1), (2, 6, 6)),
        (nn.Conv2d(1, 4, 8, stride=2, padding=3), (1, 12, 12)),
        (nn.Conv2d(3, 2, 4, stride=2), (3, 9, 9)),
        (nn.Conv2d(2, 2, 3, padding=0), (2, 5, 7)),
    ],
)
def test_conv_bounds_order(conv: nn.Conv2d, shape: tuple[int, ...]) -> None:
    """power estimate <= exact dense norm <= circular FFT bound; the dense one is exact."""
    torch.manual_seed(3)
    nn.init.normal_(conv.weight)
    exact = conv_dense_norm(conv, shape)
    estimate = conv_power_estimate(conv, shape, 200)
    assert estimate <= exact * (1 + 1e-9)
    assert estimate == pytest.approx(exact, rel=1e-3)
    assert conv_fft_bound(conv, shape) >= exact * (1 - 1e-9)
    x = torch.randn(1, *shape, dtype=torch.float64)  # independent: the matrix from jacobian
    jac = torch.autograd.functional.jacobian(
        lambda z: torch.nn.functional.conv2d(
            z, conv.weight.double(), stride=conv.stride, padding=conv.padding
        ),
        x,
    )
    dense = jac.reshape(-1, int(np.prod(shape)))
    assert float(torch.linalg.matrix_norm(dense, ord=2)) == pytest.approx(exact, rel=1e-9)


def test_fft_bound_is_exact_for_circular_stride_one() -> None:
    """Sedghi et al.: with no padding on the circular grid the DFT norm is the operator norm."""
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False)
    torch.manual_seed(4)
    shape = (2, 6, 6)
    x = torch.randn(1, *shape)
    jac = torch.autograd.functional.jacobian(lambda z: conv(z), x).reshape(-1, 72)
    exact = float(torch.linalg.matrix_norm(jac.double(), ord=2))
    zero_padded = nn.Conv2d(2, 3, 3, padding=0, bias=False)
    zero_padded.weight.data.copy_(conv.weight.data)
    # the circular conv on 6x6 is the FFT transfer on a 6x6 grid: pad 0 gives N = H = 6
    assert conv_fft_bound(zero_padded, shape) == pytest.approx(exact, rel=1e-5)


def test_unsupported_layers_are_named() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"layer 2 \(GELU"):
        lipschitz_bound(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU()), (4,))
    logistic = build_model(ModelSpec("logistic", (7,), 2, dataset="adult"))
    with pytest.raises(UnsupportedLayerError, match="layer 0"):
        lipschitz_bound(logistic, (7,))
    with pytest.raises(UnsupportedLayerError, match="dilation"):
        lipschitz_bound(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2)), (1, 8, 8))
    bn = nn.BatchNorm1d(4, track_running_stats=False)
    with pytest.raises(UnsupportedLayerError, match="running statistics"):
        lipschitz_bound(nn.Sequential(bn), (4,))


def test_batchnorm_eval_and_groupnorm_bounds_hold() -> None:
    bn = nn.BatchNorm1d(4)
    assert bn.running_var is not None
    bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 0.1]))
    model = nn.Sequential(nn.Linear(3, 4), bn, nn.ReLU(), nn.Linear(4, 2))
    cert = lipschitz_bound(model, (3,))
    model.eval()
    for _ in range(5):
        assert jacobian_norm(model, torch.randn(3)) <= cert.bound
    gn = nn.Sequential(nn.GroupNorm(1, 4))
    cert_gn = lipschitz_bound(gn, (4, 1, 1))
    x = torch.tensor([1e-3, -1e-3, 2e-3, -2e-3]).reshape(4, 1, 1)  # variance near 0: steep
    assert jacobian_norm(gn, x) <= cert_gn.bound
    assert jacobian_norm(gn, x) > 0.3 * cert_gn.bound  # the global bound is nearly attained


def test_fold_input_affine_keeps_the_function_and_tightens_the_bound() -> None:
    model = build_model(ModelSpec("mlp", (3,), 2), seed=5).eval()
    scale, shift = np.array([73.0, 15.0, 1.0]), np.array([17.0, 1.0, 0.0])
    folded = fold_input_affine(model, scale, shift, (3,)).eval()
    q = torch.rand(16, 3)
    raw = (
        torch.as_tensor(shift, dtype=torch.float32)
        + torch.as_tensor(scale, dtype=torch.float32) * q
    )
    with torch.no_grad():
        assert torch.allclose(folded(q), model(raw), atol=1e-4)
    cert = lipschitz_bound(folded, (3,))
    assert cert.bound < lipschitz_bound(model, (3,)).bound * 73.0
    for row in q:
        assert jacobian_norm(folded, row) <= cert.bound
    prepended = fold_input_affine(
        build_model(ModelSpec("cnn", (1, 4, 4), 2)), np.full(16, 2.0), np.zeros(16), (1, 4, 4)
    )
    assert lipschitz_bound(prepended, (1, 4, 4)).layers[0].bound == 2.0


def test_certificate_round_trips() -> None:
    cert = lipschitz_bound(build_model(ModelSpec("dpcnn", (1, 14, 14), 10, hidden=8)), (1, 14, 14))
    again = type(cert).from_dict(cert.to_dict())
    assert again.bound == cert.bound and len(again.layers) == len(cert.layers)


def test_pooling_bounds_hold_for_overlapping_windows() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.AvgPool2d(3, 1, padding=1),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).eval()
    cert = lipschitz_bound(model, (1, 8, 8))
    assert [r.bound for r in cert.layers[1:3]] == [1.0, 2.0]  # sqrt(9/9), sqrt(2 * 2)
    for _ in range(5):
        assert jacobian_norm(model, torch.randn(1, 8, 8)) <= cert.bound
    with pytest.raises(UnsupportedLayerError, match="ceil_mode"):
        lipschitz_bound(nn.Sequential(nn.AvgPool2d(2, ceil_mode=True)), (1, 5, 5))
