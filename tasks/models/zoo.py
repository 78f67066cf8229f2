"""The model zoo: softmax regression, an MLP, two small CNNs and a 1-D CNN, registered by name.

No BatchNorm (per-sample gradients need layers that treat samples independently); the CNNs
use GroupNorm, as Opacus recommends. Each measured model names its fastest exact DP-SGD mode
(``privacy.grad_sample_mode=auto``): the median CPU-time ratio of a DP-SGD epoch to a plain
one in ``python bench/dp_overhead.py --repeats 9`` (``bench/dp_overhead_results.csv``).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.models.registry import ModelSpec, register_model


def _features(spec: ModelSpec) -> int:
    return int(np.prod(spec.input_shape))


@register_model("softmax")
def _softmax(spec: ModelSpec) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(spec), spec.num_classes))


@register_model("mlp", grad_sample_mode="ew")  # bench/dp_overhead.py: ew 3.35x, hooks 3.77x
def _mlp(spec: ModelSpec) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_features(spec), spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.num_classes),
    )


@register_model("cnn")
def _cnn(spec: ModelSpec) -> nn.Module:
    channels, height, width = spec.input_shape
    if height < 4 or width < 4:
        raise ValueError(f"model.name='cnn' needs images of at least 4x4, got {spec.input_shape}")
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.GroupNorm(4, 32),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), spec.hidden),
        nn.Tanh(),
        nn.Linear(spec.hidden, spec.num_classes),
    )


@register_model("dpcnn", grad_sample_mode="ghost")  # dp_overhead.py: ghost 1.83x, ew 2.14x
def _dpcnn(spec: ModelSpec) -> nn.Module:
    """The small tanh CNN of Tramer & Boneh (ICLR 2021, Table 9), built for DP-SGD.

    Papernot et al. (AAAI 2021, "Tempered Sigmoid Activations for Deep Learning with
    Differential Privacy") showed that bounded activations such as tanh suit clipped, noisy
    gradients. Two strided convolutions keep the parameter count at about 26,000 on MNIST
    (the ``cnn`` above has about 110,000 with ``hidden=64``), so per-sample gradients are
    cheap; ``model.hidden`` is the width of the last hidden layer (the paper uses 32).
    """
    channels, height, width = spec.input_shape
    if height < 14 or width < 14:
        raise ValueError(
            f"model.name='dpcnn' needs images of at least 14x14, got {spec.input_shape}"
        )

    def side(n: int) -> int:  # conv 8/2/3, pool 2/1, conv 4/2/0, pool 2/1
        n = (n + 2 * 3 - 8) // 2 + 1 - 1
        return (n - 4) // 2 + 1 - 1

    return nn.Sequential(
        nn.Conv2d(channels, 16, 8, stride=2, padding=3),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(32 * side(height) * side(width), spec.hidden),
        nn.Tanh(),
        nn.Linear(spec.hidden, spec.num_classes),
    )


@register_model("cnn1d", grad_sample_mode="ew")  # bench/dp_overhead.py: ew 2.15x, hooks 2.64x
def _cnn1d(spec: ModelSpec) -> nn.Module:
    """A small 1-D CNN for sensor windows, input ``(channels, samples)``.

    Two convolution blocks with GroupNorm (Opacus-compatible: no BatchNorm) and tanh, a
    global average over time, then ``model.hidden`` units and the classes. An input of more
    dimensions, ``(channels, h, w)``, is read as ``channels`` sequences of ``h * w`` samples.
    """
    channels, length = spec.input_shape[0], int(np.prod(spec.input_shape[1:]))
    if length < 8:
        raise ValueError(f"model.name='cnn1d' needs at least 8 samples, got {spec.input_shape}")
    return nn.Sequential(
        nn.Flatten(start_dim=2),
        nn.Conv1d(channels, 32, 7, padding=3),
        nn.GroupNorm(4, 32),
        nn.Tanh(),
        nn.MaxPool1d(2),
        nn.Conv1d(32, 32, 5, padding=2),
        nn.GroupNorm(4, 32),
        nn.Tanh(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(32, spec.hidden),
        nn.Tanh(),
        nn.Linear(spec.hidden, spec.num_classes),
    )
