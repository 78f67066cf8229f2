"""A neural network trained with the functional mechanism on its output layer only.

Why not "backprop the hidden layers, perturb only the output layer"? Hidden-layer weights
trained by plain backpropagation on private data are a deterministic function of that
data; releasing them (every federated round sends the model) is not differentially
private at all. Worse, the output layer's sensitivity analysis (Zhang et al. 2012, FM
Lemma 1) assumes each record's contribution to the objective depends on that record
only; with a data-trained feature map, changing one record changes every record's
features, so ``Delta`` no longer bounds the change and the output layer's noise proves
nothing either.

:class:`PublicFeatureNetwork` avoids both: its hidden layer is a fixed random projection
with a ``tanh`` nonlinearity drawn from a *public* seed (or any weights trained on public
data, passed in), so it never sees private data; each record's features are a function of
that record alone and lie in the L2 unit ball by construction. The only thing learnt from
private data is the output layer, released through the functional mechanism
(FM Algorithm 1, logistic objective of Section 5, ``Delta = d^2/4 + 3d`` with ``d`` the
feature dimension). Everything released (public hidden layer + noisy output objectives and
their minimisers) is ``epsilon``-DP.

Multi-class in :meth:`PublicFeatureNetwork.fit_private`: one-vs-rest, one logistic objective
per class, each released at ``epsilon / K``; every record enters all ``K`` objectives, so by
basic composition (Dwork & Roth 2014, Thm 3.16) the ``K`` releases together are
``epsilon``-DP. The ``fm_network`` model does better: one softmax release for all classes,
whose noise does not grow with ``K`` (:mod:`privacy.functional.softmax`).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from privacy.functional.bounds import FeatureBounds
from privacy.functional.mechanism import FunctionalMechanism, default_ridge
from privacy.functional.objective import QuadraticObjective, minimise
from privacy.laplace import IntegerSource
from privacy.ledger import PureDpEvent

__all__ = ["PublicFeatureNetwork"]

FloatArray = npt.NDArray[np.float64]


class PublicFeatureNetwork:
    """Public random ``tanh`` features + functional-mechanism logistic output layer.

    ``features(x) = [tanh(W z + b), 1] / sqrt(hidden + 1)`` with ``z = bounds.normalise(x)``
    and ``W ~ N(0, weight_scale^2)``, ``b ~ U(-1, 1)`` drawn from ``seed`` (public config),
    or given ``W``/``b`` trained on public data. Each feature lies in ``(-1, 1) /
    sqrt(hidden + 1)``, so ``||features||_2 <= 1``: FM Section 5's assumption holds with
    ``d = hidden + 1``.

    Parameters
    ----------
    bounds : FeatureBounds
        Public bounds of the raw inputs.
    hidden : int, default 64
        Number of hidden units.
    seed : int, default 0
        Public seed of the random hidden layer (not a secret, not the noise seed).
    weight_scale : float, default 3.0
        Std of the hidden weights (inputs have ``||z||_2 <= 1``).
    weights, bias : numpy.ndarray, optional
        Hidden layer trained on public data (shape ``(hidden, bounds.dim)`` and
        ``(hidden,)``), instead of the random one.

    """

    def __init__(
        self,
        bounds: FeatureBounds,
        hidden: int = 64,
        seed: int = 0,
        weight_scale: float = 3.0,
        weights: npt.ArrayLike | None = None,
        bias: npt.ArrayLike | None = None,
    ) -> None:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"model.hidden must be a positive int, got {hidden!r}")
        if not (math.isfinite(weight_scale) and weight_scale > 0):
            raise ValueError(f"model.weight_scale must be > 0, got {weight_scale}")
        self.bounds = bounds
        rng = np.random.default_rng(seed)
        w = rng.normal(0.0, weight_scale, size=(hidden, bounds.dim))
        b = rng.uniform(-1.0, 1.0, size=hidden)
        self.hidden_weights = w if weights is None else np.asarray(weights, dtype=np.float64)
        self.hidden_bias = b if bias is None else np.asarray(bias, dtype=np.float64)
        shapes = (self.hidden_weights.shape, self.hidden_bias.shape)
        if shapes != ((hidden, bounds.dim), (hidden,)):
            raise ValueError(
                f"hidden layer must have shapes ({hidden}, {bounds.dim}) and ({hidden},), "
                f"got {self.hidden_weights.shape} and {self.hidden_bias.shape}"
            )
        self.output_weights: FloatArray | None = None  # (feature_dim, outputs)
        self.objectives: list[QuadraticObjective] = []  # the released noisy objectives
        self.epsilon: float | None = None

    @property
    def feature_dim(self) -> int:
        """Dimension ``d`` of :meth:`features` (hidden units + intercept)."""
        return int(self.hidden_weights.shape[0]) + 1

    def features(self, x: npt.ArrayLike) -> FloatArray:
        """Bounded features of raw inputs: ``[tanh(W z + b), 1] / sqrt(d)``, ``||.||_2 <= 1``."""
        z = self.bounds.normalise(x)
        h = np.tanh(z @ self.hidden_weights.T + self.hidden_bias)
        out = np.hstack([h, np.ones((len(h), 1))]) / math.sqrt(self.feature_dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.where(norms > 1.0, out / (norms * (1.0 + 1e-12)), out)

    def fit_private(
        self,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        epsilon: float,
        generator: IntegerSource,
        num_classes: int = 2,
        ridge: float | None = None,
        bound: str = "paper",
    ) -> PublicFeatureNetwork:
        """Fit the output layer under ``epsilon``-DP (one noise draw per objective).

        ``num_classes == 2``: one logistic objective (label 1 vs 0) at ``epsilon``.
        ``num_classes = K > 2``: ``K`` one-vs-rest logistic objectives at ``epsilon / K``
        each, ``epsilon`` in total by basic composition. ``ridge=None`` uses
        :func:`privacy.functional.mechanism.default_ridge` (public); ``bound`` picks the
        sensitivity as in :class:`FunctionalMechanism`.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"dataset.num_classes must be an int >= 2, got {num_classes!r}")
        labels = np.asarray(y).reshape(-1)
        if not np.isin(labels, np.arange(num_classes)).all():
            raise ValueError(f"labels must be in 0..{num_classes - 1}, got {np.unique(labels)}")
        outputs = 1 if num_classes == 2 else num_classes
        mech = FunctionalMechanism(epsilon=epsilon / outputs, kind="logistic", bound=bound)
        feats = self.features(x)
        ridge = default_ridge(mech, self.feature_dim) if ridge is None else ridge
        targets = [labels == 1] if outputs == 1 else [labels == k for k in range(outputs)]
        self.objectives = [
            mech.perturb(mech.objective(feats, t.astype(np.float64)), generator) for t in targets
        ]
        self.output_weights = np.column_stack([minimise(o, ridge=ridge) for o in self.objectives])
        self.epsilon = float(epsilon)
        return self

    def decision_function(self, x: npt.ArrayLike) -> FloatArray:
        """Logits ``features(x) @ output_weights``, shape ``(n, outputs)``."""
        if self.output_weights is None:
            raise ValueError("the output layer is not fitted; call fit_private first")
        return self.features(x) @ self.output_weights

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Predicted class labels."""
        logits = self.decision_function(x)
        if logits.shape[1] == 1:
            return (logits[:, 0] > 0).astype(np.int64)
        return logits.argmax(axis=1).astype(np.int64)

    def event(self, round: int = 0) -> PureDpEvent:  # noqa: A002 - matches PureDpEvent.round
        """``PureDpEvent(epsilon)`` of the whole fitted output layer (all classes together)."""
        if self.epsilon is None:
            raise ValueError("the output layer is not fitted; call fit_private first")
        return PureDpEvent(epsilon=self.epsilon, round=round)
