"""The functional-mechanism models ``logistic``, ``linear`` and ``fm_network``.

Registered in :mod:`tasks.models`' registry. A fixed, public normalisation of the raw input
into the L2 unit ball (the dataset's declared :class:`~tasks.data.bounds.PublicBounds`, record by
record), optionally fixed public hidden layers, then one trainable linear map without bias:
:class:`FunctionalModel`, whose exact objective a client can build and release.

``fm_network``'s hidden layers never see a client's data: a small CNN trained on the dataset's
declared public records where it has them (MNIST: the official validation images;
:mod:`tasks.models.extractor`), else a data-independent seeded random ``tanh`` layer. Its head
is the softmax expansion over all classes (objective kind ``softmax``), released once.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from privacy.functional import FeatureBounds, PublicFeatureNetwork, TargetBounds
from tasks.data.bounds import public_bounds
from tasks.models.extractor import PublicConvFeatures, public_extractor_state
from tasks.models.registry import ModelSpec, register_model

FUNCTIONAL_HEAD = "head.weight"
"""The weights entry the functional mechanism trains (:attr:`FunctionalModel.head`)."""


class PublicNormalise(nn.Module):
    """:meth:`FeatureBounds.normalise` in torch: clip, map to ``[-1, 1]``, intercept, unit ball.

    The bounds are non-persistent buffers (public constants, never sent or aggregated).
    :class:`FeatureBounds` stays the reference: the functional mechanism builds its
    objective with it, and a test checks both agree.
    """

    lower: torch.Tensor
    upper: torch.Tensor

    def __init__(self, bounds: FeatureBounds) -> None:
        super().__init__()
        self.bounds = bounds
        self.register_buffer(
            "lower", torch.tensor(np.array(bounds.lower), dtype=torch.float32), False
        )
        self.register_buffer(
            "upper", torch.tensor(np.array(bounds.upper), dtype=torch.float32), False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` (raw, flattened) as records with ``||z||_2 <= 1``."""
        lower = self.lower.to(x.dtype)
        upper = self.upper.to(x.dtype)
        z = 2.0 * (torch.minimum(torch.maximum(x, lower), upper) - lower) / (upper - lower) - 1.0
        z = z.clamp(-1.0, 1.0)
        dim = self.bounds.dim
        ones = torch.ones(len(z), 1, dtype=z.dtype, device=z.device)
        if self.bounds.rows == "scale":
            out = (torch.cat([z, ones], dim=1) if self.bounds.intercept else z) / math.sqrt(dim)
        else:
            radius = math.sqrt(1.0 - 1.0 / dim) if self.bounds.intercept else 1.0
            norms = z.norm(dim=1, keepdim=True)
            out = z * (radius / norms.clamp(min=radius))
            if self.bounds.intercept:
                out = torch.cat([out, ones / math.sqrt(dim)], dim=1)
        norms = out.norm(dim=1, keepdim=True)
        return torch.where(norms > 1.0, out / (norms * (1.0 + 1e-6)), out)


class TwoLogits(nn.Module):
    """``s -> [0, s]``: a logistic score as two logits, so cross-entropy is the logistic loss."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, 2)`` from scores ``(n, 1)``; ``softmax(.)[1] = sigmoid(s)``."""
        return torch.cat([torch.zeros_like(s), s], dim=1)


class Denormalise(nn.Module):
    """``s -> lower + (s + 1)(upper - lower)/2``: :meth:`TargetBounds.denormalise`, unclipped."""

    def __init__(self, target: TargetBounds) -> None:
        super().__init__()
        self.target = target

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Predictions ``(n,)`` on the target's own scale from scores ``(n, 1)``."""
        t = self.target
        return t.lower + (s.reshape(-1) + 1.0) * ((t.upper - t.lower) / 2.0)


class PublicTanhFeatures(nn.Module):
    """:meth:`PublicFeatureNetwork.features` in torch: ``[tanh(W z + b), 1] / sqrt(h + 1)``.

    ``W`` and ``b`` are persistent buffers drawn from a public seed: part of the global
    model the server sends (so every client uses the server's), never trained, no gradient.
    """

    hidden_weight: torch.Tensor
    hidden_bias: torch.Tensor

    def __init__(self, net: PublicFeatureNetwork) -> None:
        super().__init__()
        self.register_buffer(
            "hidden_weight", torch.tensor(np.array(net.hidden_weights), dtype=torch.float32)
        )
        self.register_buffer(
            "hidden_bias", torch.tensor(np.array(net.hidden_bias), dtype=torch.float32)
        )

    @property
    def dim(self) -> int:
        """Feature dimension: hidden units + intercept."""
        return int(self.hidden_weight.shape[0]) + 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Bounded features of normalised records."""
        h = torch.tanh(z @ self.hidden_weight.T + self.hidden_bias)
        ones = torch.ones(len(h), 1, dtype=h.dtype, device=h.device)
        out = torch.cat([h, ones], dim=1) / math.sqrt(self.dim)
        norms = out.norm(dim=1, keepdim=True)
        return torch.where(norms > 1.0, out / (norms * (1.0 + 1e-6)), out)


class FunctionalModel(nn.Module):
    """Public feature map, then a trainable linear ``head`` (no bias), then an output map.

    What the functional mechanism needs of a model (``privacy.mode=functional``):

    * :attr:`objective_kind`: ``"logistic"``, ``"linear"`` or ``"softmax"`` (a key of
      :data:`privacy.functional.HEAD_KINDS`, which releases and solves the head);
    * :meth:`fm_features`: the records the head sees, in the L2 unit ball, computed with
      the library's own numpy code (:class:`FeatureBounds`, :class:`PublicFeatureNetwork`,
      :meth:`PublicConvFeatures.features`), which raises a ``ValueError`` naming the
      column on a NaN;
    * :meth:`fm_targets`: one target vector per row of ``head.weight`` (an objective each,
      or for ``softmax`` the one-hot labels of one release);
    * ``head.weight`` of shape ``(outputs, dim)``.
    """

    objective_kind: str
    hidden: PublicTanhFeatures | None
    extractor: PublicConvFeatures | None
    head: nn.Linear

    def __init__(
        self,
        bounds: FeatureBounds,
        outputs: int,
        output_map: nn.Module,
        kind: str,
        hidden: PublicTanhFeatures | None = None,
        extractor: PublicConvFeatures | None = None,
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.normalise = PublicNormalise(bounds)
        self.hidden = hidden
        self.extractor = extractor
        dim = bounds.dim
        if extractor is not None:
            dim = extractor.dim
        elif hidden is not None:
            dim = hidden.dim
        self.head = nn.Linear(dim, outputs, bias=False)
        nn.init.zeros_(self.head.weight)  # the objectives are expanded at w = 0
        self.output_map = output_map
        self.objective_kind = kind

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``head(features(x))``: one score per output."""
        if self.extractor is not None:
            return self.head(self.extractor(x))
        z = self.normalise(self.flatten(x))
        if self.hidden is not None:
            z = self.hidden(z)
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or predictions on the target scale (regression)."""
        return self.output_map(self.scores(x))

    def fm_features(self, x: npt.ArrayLike) -> np.ndarray:
        """Records the head sees, float64, ``||.||_2 <= 1`` (numpy reference code)."""
        if self.extractor is not None:
            return self.extractor.features(np.asarray(x, dtype=np.float64))
        flat = np.asarray(x, dtype=np.float64).reshape(len(np.asarray(x)), -1)
        bounds = self.normalise.bounds
        if self.hidden is None:
            return bounds.normalise(flat)
        net = PublicFeatureNetwork(
            bounds,
            hidden=int(self.hidden.hidden_weight.shape[0]),
            weights=self.hidden.hidden_weight.detach().cpu().double().numpy(),
            bias=self.hidden.hidden_bias.detach().cpu().double().numpy(),
        )
        return net.features(flat)

    def fm_targets(self, y: npt.ArrayLike) -> list[np.ndarray]:
        """One target vector per head row (see the subclasses)."""
        raise NotImplementedError


class _Logistic(FunctionalModel):
    def fm_targets(self, y: npt.ArrayLike) -> list[np.ndarray]:
        labels = np.asarray(y).reshape(-1)
        if self.head.out_features == 1:
            return [(labels == 1).astype(np.float64)]
        # One indicator per class: one-vs-rest rows, or the softmax head's one-hot labels.
        return [(labels == k).astype(np.float64) for k in range(self.head.out_features)]


class _Linear(FunctionalModel):
    def __init__(self, bounds: FeatureBounds, target: TargetBounds) -> None:
        super().__init__(bounds, 1, Denormalise(target), "linear")
        self.target = target

    def fm_targets(self, y: npt.ArrayLike) -> list[np.ndarray]:
        return [self.target.normalise(y)]


def _bounds(spec: ModelSpec) -> FeatureBounds:
    bounds = public_bounds(spec.dataset).features
    if int(np.prod(spec.input_shape)) != len(bounds.names):
        raise ValueError(
            f"dataset.name={spec.dataset!r} declares bounds for {len(bounds.names)} features, "
            f"but its records have shape {spec.input_shape}"
        )
    return bounds


@register_model("logistic", objective="logistic")
def _logistic(spec: ModelSpec) -> nn.Module:
    """Logistic regression ``sigmoid(z^T w)`` on normalised records, as two logits ``[0, s]``."""
    if spec.num_classes != 2:
        raise ValueError(
            f"model.name='logistic' needs a dataset with 2 classes, got dataset.name="
            f"{spec.dataset!r} with {spec.num_classes}; use fm_network (one softmax release) "
            "or softmax"
        )
    return _Logistic(_bounds(spec), 1, TwoLogits(), "logistic")


@register_model("linear", regression=True, objective="linear")
def _linear(spec: ModelSpec) -> nn.Module:
    """Linear regression ``z^T w`` on normalised records, mapped back to the target's scale."""
    target = public_bounds(spec.dataset).target
    if target is None:
        raise ValueError(
            f"model.name='linear' needs public target bounds for dataset.name={spec.dataset!r}"
        )
    return _Linear(_bounds(spec), target)


@register_model("fm_network", objective="softmax")
def _fm_network(spec: ModelSpec) -> nn.Module:
    """Public hidden layers (never trained on client data) + one softmax head for all classes.

    The hidden layers are the public CNN of :mod:`tasks.models.extractor` when the dataset
    declares public records (``model.hidden`` bottleneck units), else a seeded random ``tanh``
    layer of ``model.hidden`` units (data-independent). The head (``num_classes`` rows) is
    released through the softmax expansion (:mod:`privacy.functional.softmax`).
    """
    if spec.num_classes < 2:
        raise ValueError(
            f"model.name='fm_network' needs a classification dataset, got dataset.name="
            f"{spec.dataset!r} with num_classes={spec.num_classes}"
        )
    bounds = _bounds(spec)
    state = public_extractor_state(spec.dataset, spec.hidden)
    if state is not None:
        extractor = PublicConvFeatures(state, spec.input_shape)
        return _Logistic(bounds, spec.num_classes, nn.Identity(), "softmax", extractor=extractor)
    # build_model seeded torch with the run seed: the public hidden layer derives from it.
    net = PublicFeatureNetwork(bounds, hidden=spec.hidden, seed=torch.initial_seed())
    return _Logistic(
        bounds, spec.num_classes, nn.Identity(), "softmax", hidden=PublicTanhFeatures(net)
    )
