"""Certified L2 -> L2 Lipschitz upper bounds of feed-forward models, layer by layer.

A model ``f = f_n o ... o f_1`` (an ``nn.Sequential``, nested ones flattened) has
``Lip(f) <= prod_i Lip(f_i)``: the product of per-layer bounds is a certified upper bound
whenever each factor is. Output perturbation (:mod:`privacy.inference.mechanisms`) needs
exactly such a bound; a model with a layer this module cannot bound is refused, with the
layer named (:class:`UnsupportedLayerError`). Every bound holds in ``eval()`` mode (the mode
predictions are made in; dropout is then the identity).

Per layer (registry :data:`LAYER_RULES`):

* ``Linear``: its spectral norm ``||W||_2``, computed exactly (SVD in float64), times
  ``1 + 1e-9`` against rounding. Bias terms never change a Lipschitz constant.
* ``Conv2d`` (zero padding, groups 1, dilation 1): the operator norm of the convolution as a
  linear map on the layer's actual input shape. Small operators: exactly, from the dense
  matrix (the convolution applied to the identity basis; the largest eigenvalue of its Gram
  matrix, float64). Large ones: the bound of Sedghi, Gupta and Long (ICLR 2019, "The
  Singular Values of Convolutional Layers"): a stride-1 circular convolution on an ``N_h x
  N_w`` grid is block-diagonalised by the 2-D DFT, so its norm is the largest singular value
  of the ``c_out x c_in`` transfer matrices over the ``N_h N_w`` frequencies. With ``N = H +
  2p`` the zero-padded convolution is that circular one restricted (zero-embed the input,
  keep the outputs whose window does not wrap), and a stride only subsamples the outputs, so
  both are bounded by it. Either way a power iteration on the operator itself (``conv2d``
  and its adjoint ``conv_transpose2d``) gives a lower estimate, recorded beside the bound as
  a tightness check (power iteration converges from below, so it is never used as the
  bound).
* ``ReLU``, ``Tanh``, ``Identity``, ``Flatten``, ``Dropout``: 1; ``Sigmoid``: 1/4;
  ``LeakyReLU``: ``max(1, |slope|)``.
* ``MaxPool2d`` (dilation 1): ``sqrt(m)`` with ``m = ceil(k_h/s_h) ceil(k_w/s_w)`` the most
  windows one input belongs to (``|max a - max b| <= ||a - b||_2`` per window, summed over
  windows); 1 for non-overlapping pooling. ``AvgPool2d`` (counting padding, no ceil mode):
  ``sqrt(m / (k_h k_w))``.
* ``GroupNorm``: ``max |gamma| / sqrt(eps)``. Per group, ``u -> u / sqrt(||u||^2/m + eps)``
  (after centring, a projection) has Jacobian norm ``1 / sqrt(var + eps) <= 1/sqrt(eps)``,
  attained as the group's variance tends to 0, so this global bound is tight and very large
  (about 316 |gamma| at eps 1e-5): output perturbation of a GroupNorm model is costly.
* ``BatchNorm1d/2d`` in eval mode with running statistics: an affine map per channel,
  ``max |gamma| / sqrt(running_var + eps)``. Refused without running statistics.
* :class:`InputAffine` (the public map from the query space to the model's raw input):
  ``max |scale|``; :func:`fold_input_affine` folds it into a following ``Linear`` instead,
  which gives the tighter ``||W diag(scale)||_2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROUNDING = 1e-9
"""Relative upward correction of every computed norm (float64 SVD is accurate to ~1e-15)."""
DENSE_LIMIT = 10_000_000
"""Convolutions whose dense matrix has at most this many entries are bounded exactly."""
POWER_ITERATIONS = 60


class UnsupportedLayerError(ValueError):
    """A layer whose Lipschitz constant this module cannot certify."""


class InputAffine(nn.Module):
    """``x -> shift + scale * x`` per feature: from the public query space to raw features."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).reshape(shape))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The affine map, feature by feature."""
        return self.shift + self.scale * x


@dataclass(frozen=True)
class LayerBound:
    """One layer's certified bound, how it was found, and a lower estimate where computed."""

    index: int
    layer: str
    bound: float
    method: str
    estimate: float = math.nan


@dataclass(frozen=True)
class LipschitzCertificate:
    """The model's bound (product of :attr:`layers`' bounds) and its per-layer factors."""

    bound: float
    input_shape: tuple[int, ...]
    layers: tuple[LayerBound, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN estimates as ``None``)."""
        rows = []
        for layer in self.layers:
            row = asdict(layer)
            row["estimate"] = None if math.isnan(layer.estimate) else layer.estimate
            rows.append(row)
        return {"bound": self.bound, "input_shape": list(self.input_shape), "layers": rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LipschitzCertificate:
        """Inverse of :meth:`to_dict`."""
        layers = tuple(
            LayerBound(
                **(row | {"estimate": math.nan if row["estimate"] is None else row["estimate"]})
            )
            for row in data["layers"]
        )
        return cls(float(data["bound"]), tuple(data["input_shape"]), layers)


Rule = Callable[[nn.Module, tuple[int, ...]], tuple[float, str, float]]
LAYER_RULES: dict[type[nn.Module], Rule] = {}


def register_layer_rule(*kinds: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Register a rule ``(layer, input_shape) -> (bound, method, estimate)``."""

    def deco(rule: Rule) -> Rule:
        for kind in kinds:
            LAYER_RULES[kind] = rule
        return rule

    return deco


def _up(x: float) -> float:
    return float(x) * (1.0 + ROUNDING)


def _spectral(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix.detach().double(), ord=2))


@register_layer_rule(nn.Identity, nn.Flatten, nn.ReLU, nn.Tanh, nn.Dropout)
def _one(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    return 1.0, "1-Lipschitz", math.nan


@register_layer_rule(nn.Sigmoid)
def _sigmoid(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    return 0.25, "sigmoid' <= 1/4", math.nan


@register_layer_rule(nn.LeakyReLU)
def _leaky(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    assert isinstance(layer, nn.LeakyReLU)
    return max(1.0, abs(float(layer.negative_slope))), "max(1, |slope|)", math.nan


@register_layer_rule(nn.Linear)
def _linear(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    assert isinstance(layer, nn.Linear)
    norm = _spectral(layer.weight)
    return _up(norm), "exact spectral norm (SVD)", norm


@register_layer_rule(InputAffine)
def _affine(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    assert isinstance(layer, InputAffine)
    norm = float(layer.scale.abs().max())
    return norm, "max |scale|", norm


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _conv_params(layer: nn.Conv2d, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    if (
        layer.groups != 1
        or _pair(layer.dilation) != (1, 1)
        or layer.padding_mode != "zeros"
        or isinstance(layer.padding, str)
    ):
        raise UnsupportedLayerError(
            f"{layer!r}: only groups=1, dilation=1 and integer zero padding are supported"
        )
    return _pair(layer.stride), _pair(layer.padding)


def conv_power_estimate(layer: nn.Conv2d, shape: tuple[int, ...], iterations: int) -> float:
    """Power iteration on ``A^T A`` with ``A`` the convolution (no bias) on ``shape``.

    The adjoint is ``conv_transpose2d`` with the output padding that restores ``shape``. The
    result is ``||A v|| / ||v||`` for the final iterate: a lower bound on ``||A||_2``.
    """
    stride, padding = _conv_params(layer, shape)
    w = layer.weight.detach().double()
    gen = torch.Generator().manual_seed(0)  # a start vector, not noise: reproducible is fine
    v = torch.randn((1, *shape), generator=gen, dtype=torch.float64)
    kh, kw = w.shape[2:]
    _, h, wd = shape
    for _ in range(iterations):
        v = v / v.norm()
        y = F.conv2d(v, w, stride=stride, padding=padding)
        ho, wo = y.shape[2:]
        out_pad = (
            h - ((ho - 1) * stride[0] - 2 * padding[0] + kh),
            wd - ((wo - 1) * stride[1] - 2 * padding[1] + kw),
        )
        v = F.conv_transpose2d(y, w, stride=stride, padding=padding, output_padding=out_pad)
    v = v / v.norm()
    return float(F.conv2d(v, w, stride=stride, padding=padding).norm())


def conv_dense_norm(layer: nn.Conv2d, shape: tuple[int, ...]) -> float:
    """Exact ``||A||_2`` from the dense matrix.

    The convolution applied to the identity basis (float64), then the square root of the
    largest eigenvalue of the smaller Gram matrix.
    """
    stride, padding = _conv_params(layer, shape)
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    cols = F.conv2d(basis, layer.weight.detach().double(), stride=stride, padding=padding)
    matrix = cols.reshape(n, -1)  # A^T
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return math.sqrt(max(0.0, float(torch.linalg.eigvalsh(gram).max())))


def conv_fft_bound(layer: nn.Conv2d, shape: tuple[int, ...]) -> float:
    """Sedghi et al. (2019): the circular convolution's norm on the padded grid, an upper bound."""
    _, padding = _conv_params(layer, shape)
    _, h, wd = shape
    w = layer.weight.detach().double()
    grid = (max(h + 2 * padding[0], w.shape[2]), max(wd + 2 * padding[1], w.shape[3]))
    transfer = torch.fft.fft2(w, s=grid).permute(2, 3, 0, 1)  # (N_h, N_w, c_out, c_in)
    return float(torch.linalg.matrix_norm(transfer, ord=2).max())


@register_layer_rule(nn.Conv2d)
def _conv(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    assert isinstance(layer, nn.Conv2d)
    estimate = conv_power_estimate(layer, shape, POWER_ITERATIONS)
    n_in = int(np.prod(shape))
    with torch.no_grad():
        n_out = int(np.prod(layer(torch.zeros(1, *shape)).shape[1:]))
    if n_in * n_out <= DENSE_LIMIT:
        norm, method = conv_dense_norm(layer, shape), "exact operator norm (dense)"
    else:
        norm, method = conv_fft_bound(layer, shape), "circular-convolution bound (FFT)"
    return _up(max(norm, estimate)), method, estimate


def _pool_overlap(kernel: Any, stride: Any) -> int:
    (kh, kw), (sh, sw) = _pair(kernel), _pair(stride if stride is not None else kernel)
    return math.ceil(kh / sh) * math.ceil(kw / sw)


@register_layer_rule(nn.MaxPool2d)
def _maxpool(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    assert isinstance(layer, nn.MaxPool2d)
    if _pair(layer.dilation) != (1, 1):
        raise UnsupportedLayerError(f"{layer!r}: only dilation=1 is supported")
    m = _pool_overlap(layer.kernel_size, layer.stride)
    return math.sqrt(m), f"sqrt(windows per input = {m})", math.nan


@register_layer_rule(nn.AvgPool2d)
def _avgpool(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    assert isinstance(layer, nn.AvgPool2d)
    if not layer.count_include_pad or layer.divisor_override is not None or layer.ceil_mode:
        raise UnsupportedLayerError(
            f"{layer!r}: needs count_include_pad=True, ceil_mode=False and no divisor_override "
            "(otherwise a border window divides by fewer than k_h k_w)"
        )
    kh, kw = _pair(layer.kernel_size)
    m = _pool_overlap(layer.kernel_size, layer.stride)
    return math.sqrt(m / (kh * kw)), "sqrt(windows per input / window size)", math.nan


@register_layer_rule(nn.GroupNorm)
def _groupnorm(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    assert isinstance(layer, nn.GroupNorm)
    gamma = float(layer.weight.detach().abs().max()) if layer.affine else 1.0
    return _up(gamma / math.sqrt(layer.eps)), "max|gamma| / sqrt(eps) (global)", math.nan


@register_layer_rule(nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm(layer: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float]:
    assert isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d)
    if layer.running_var is None:
        raise UnsupportedLayerError(
            f"{layer!r}: without running statistics it normalises by the batch"
        )
    gamma = layer.weight.detach().abs() if layer.affine else torch.ones_like(layer.running_var)
    per_channel = gamma.double() / torch.sqrt(layer.running_var.double() + layer.eps)
    return _up(float(per_channel.max())), "eval mode: max|gamma| / sqrt(var + eps)", math.nan


def leaf_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of a (nested) ``nn.Sequential`` in order; anything else is one leaf."""
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in leaf_layers(child)]
    return [model]


def lipschitz_bound(model: nn.Module, input_shape: tuple[int, ...]) -> LipschitzCertificate:
    """A certified upper bound of ``model``'s L2 -> L2 Lipschitz constant on ``input_shape``.

    Raises
    ------
    UnsupportedLayerError
        Naming the first layer (index and module) that has no rule in :data:`LAYER_RULES`.
        A model that is not an ``nn.Sequential`` is one such layer.
    """
    was_training = model.training
    model.eval()
    try:
        shape = tuple(int(s) for s in input_shape)
        rows: list[LayerBound] = []
        x = torch.zeros(1, *shape)
        for i, layer in enumerate(leaf_layers(model)):
            rule = LAYER_RULES.get(type(layer))
            if rule is None:
                supported = sorted(k.__name__ for k in LAYER_RULES)
                raise UnsupportedLayerError(
                    f"lipschitz: layer {i} ({layer.__class__.__name__}: {layer!r}) has no "
                    f"certified Lipschitz bound; supported layers: {supported}"
                )
            try:
                bound, method, estimate = rule(layer, tuple(x.shape[1:]))
            except UnsupportedLayerError as err:
                raise UnsupportedLayerError(f"lipschitz: layer {i} {err}") from None
            rows.append(LayerBound(i, repr(layer), bound, method, estimate))
            with torch.no_grad():
                x = layer(x)
        total = math.prod(r.bound for r in rows)
        return LipschitzCertificate(total, shape, tuple(rows))
    finally:
        model.train(was_training)


def fold_input_affine(
    model: nn.Module, scale: np.ndarray, shift: np.ndarray, input_shape: tuple[int, ...]
) -> nn.Sequential:
    """``model o InputAffine(scale, shift)``, folded into the first ``Linear`` where possible.

    For ``Sequential(Flatten, Linear, ...)`` (or ``Sequential(Linear, ...)`` on flat inputs) the
    result's first ``Linear`` has weight ``W diag(scale)`` and bias ``b + W shift``: the same
    function, and a tighter certified bound than ``||W||_2 max|scale|``. Otherwise the
    affine map is prepended as a layer. The input model is not modified.
    """
    import copy

    layers = [copy.deepcopy(m) for m in leaf_layers(model)]
    scale_t = torch.tensor(np.array(scale, dtype=np.float32).ravel())
    shift_t = torch.tensor(np.array(shift, dtype=np.float32).ravel())
    first = 1 if layers and isinstance(layers[0], nn.Flatten) else 0
    if len(layers) > first and isinstance(layers[first], nn.Linear):
        lin = layers[first]
        assert isinstance(lin, nn.Linear)
        if lin.in_features == scale_t.numel():
            with torch.no_grad():
                w = lin.weight.clone()
                bias = lin.bias if lin.bias is not None else torch.zeros(lin.out_features)
                folded = nn.Linear(lin.in_features, lin.out_features)
                folded.weight.copy_(w * scale_t[None, :])
                folded.bias.copy_(bias + w @ shift_t)
            layers[first] = folded
            return nn.Sequential(*layers)
    if bool((scale_t == 1).all()) and bool((shift_t == 0).all()):
        return nn.Sequential(*layers)  # the identity (pixels): nothing to fold
    affine = InputAffine(scale_t.numpy(), shift_t.numpy(), tuple(input_shape))
    return nn.Sequential(affine, *layers)
