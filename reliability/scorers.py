"""Reliability scorers: one score ``>= 0`` per client and round, from what clients released.

Every scorer reads only the updates ``d_i = w_i - g`` and example counts that the clients
already released under their own DP mechanism, plus (FLTrust) the server's update on its own
clean data. Scoring is therefore post-processing and costs the clients no privacy; each
scorer's ``privacy_note`` says so in one sentence for the results.

Scorers are looked up by name in :data:`SCORERS`; add one with :func:`register_scorer`::

    @register_scorer("my_scorer")
    class MyScorer:
        name = "my_scorer"
        needs_server_data = False
        privacy_note = "Reads only the released updates; post-processing, no privacy cost."

        def score(self, r: RoundInput) -> Scores: ...
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from reliability._flat import flatten, flatten_all, scale
from reliability.types import RoundInput, Scores

__all__ = [
    "SCORERS",
    "FLTrustScorer",
    "MedianAgreementScorer",
    "OutputAgreementScorer",
    "Scorer",
    "UniformScorer",
    "make_scorer",
    "register_scorer",
]


class Scorer(Protocol):
    """Scores the clients of one round; see the module docstring for the privacy contract."""

    name: str
    needs_server_data: bool
    privacy_note: str

    def score(self, r: RoundInput) -> Scores:
        """Return one score ``>= 0`` per client of ``r`` (and the updates to aggregate)."""
        ...


SCORERS: dict[str, Callable[..., Scorer]] = {}
"""Registry of scorer factories by name (``aggregation.scorer``)."""

F = TypeVar("F", bound=Callable[..., Scorer])


def register_scorer(name: str) -> Callable[[F], F]:
    """Class/function decorator that adds a scorer factory to :data:`SCORERS` as ``name``.

    Raises
    ------
    ValueError
        If ``name`` is already registered.

    """

    def decorator(factory: F) -> F:
        if name in SCORERS:
            raise ValueError(f"reliability scorer {name!r} is already registered")
        SCORERS[name] = factory
        return factory

    return decorator


def make_scorer(name: str, **params: Any) -> Scorer:
    """Build the scorer registered as ``name`` with keyword ``params``.

    Raises
    ------
    ValueError
        If ``name`` is not registered, or ``params`` do not fit the scorer's factory.

    """
    if name not in SCORERS:
        raise ValueError(f"aggregation.scorer must be one of {sorted(SCORERS)}, got {name!r}")
    factory = SCORERS[name]
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as err:
        raise ValueError(
            f"aggregation.scorer={name!r} does not accept parameters {params}: {err}"
        ) from None
    return factory(**params)


def _positive(setting: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"reliability.{setting} must be > 0, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"reliability.{setting} must be finite, got {value!r}")
    return float(value)


def _empty(r: RoundInput) -> Scores:
    return Scores(np.zeros(0, dtype=np.float64), r.updates)


@register_scorer("uniform")
class UniformScorer:
    """Every client scores 1: plain FedAvg (weights then come from example counts alone).

    Reads nothing; the baseline against which the other scorers are compared.
    """

    name = "uniform"
    needs_server_data = False
    privacy_note = "Reads nothing from the clients; no privacy cost."

    def score(self, r: RoundInput) -> Scores:
        """Score 1 for every client; updates unchanged."""
        return Scores(np.ones(len(r), dtype=np.float64), r.updates)


_FLTRUST_NORMS = ("median", "server", "none")


@register_scorer("fltrust")
class FLTrustScorer:
    """FLTrust: trust = ReLU(cosine to the server's root-data update), updates rescaled to its norm.

    Cao et al., NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping". The server trains one round on its own small, clean root data set; its
    update ``d_0`` is the trust anchor. Client ``i`` gets the trust score
    ``ReLU(cos(d_i, d_0))`` and its update is rescaled to a common norm so that no client can
    dominate by magnitude. The paper's aggregate ``sum_i TS_i * u_i / sum_i TS_i`` is what
    :class:`~reliability.ReliabilityWeighting` computes with ``decay=0`` and
    ``use_examples=False``; other settings add memory across rounds or weigh by example counts
    on top of the trust scores.

    The paper rescales to ``||d_0||`` (``norm="server"``). Under DP-SGD a client's released
    update is mostly calibrated noise and is many times longer than the server's noise-free
    update on a small root set, so that rescaling shrinks every step and stalls learning
    (measured: 0.22 test accuracy after 5 rounds instead of 0.63 on MNIST at epsilon 4). The
    default ``norm="median"`` rescales to the median norm of the round's client updates
    instead: still one common norm (no client dominates by magnitude), robust while fewer than
    half of the clients inflate or shrink their updates, and on the scale the clients' own
    training produces. ``norm="none"`` keeps the updates as released.

    Reads the clients' released updates and the server's own update: post-processing of
    DP releases plus server-held data, so it costs the clients no privacy.

    Parameters
    ----------
    norm : {"median", "server", "none"}, default "median"
        Common norm every client update is rescaled to (see above).
    eps : float, default 1e-12
        Norms below ``eps`` count as zero: a zero update has cosine 0 (trust 0), and a zero
        server update gives every client trust 0 (the strategy then keeps the global model).

    Notes
    -----
    ``details`` holds ``cosine`` (cosine to the server update) and ``norm`` (the client's
    update norm before rescaling).

    """

    name = "fltrust"
    needs_server_data = True
    privacy_note = (
        "Reads the clients' released updates and the server's own root-data update; "
        "post-processing, no privacy cost."
    )

    def __init__(self, norm: str = "median", eps: float = 1e-12) -> None:
        if norm not in _FLTRUST_NORMS:
            raise ValueError(
                f"reliability.fltrust.norm must be one of {list(_FLTRUST_NORMS)}, got {norm!r}"
            )
        self.norm = norm
        self.eps = _positive("fltrust.eps", eps)

    def score(self, r: RoundInput) -> Scores:
        """Trust ``ReLU(cos(d_i, d_0))`` per client and the updates rescaled to one norm.

        Raises
        ------
        ValueError
            If the round has no server update.

        """
        if r.server_update is None:
            raise ValueError(
                "aggregation.scorer='fltrust' needs server data "
                "(aggregation.server_data_size > 0), got none"
            )
        if len(r) == 0:
            return _empty(r)
        keys, mat = flatten_all(r.updates)
        anchor = flatten(r.server_update, keys)
        anchor_norm = float(np.linalg.norm(anchor))
        norms = np.linalg.norm(mat, axis=1)
        cosine = np.zeros(len(r), dtype=np.float64)
        ok = norms > self.eps
        if anchor_norm > self.eps:
            cosine[ok] = (mat[ok] @ anchor) / (norms[ok] * anchor_norm)
        cosine = np.clip(cosine, -1.0, 1.0)
        trust = np.maximum(cosine, 0.0)
        if self.norm == "none":
            return Scores(trust, r.updates, {"cosine": cosine, "norm": norms})
        target = anchor_norm if self.norm == "server" else float(np.median(norms))
        factors = np.where(ok, target / np.where(ok, norms, 1.0), 0.0)
        updates = tuple(scale(u, float(f)) for u, f in zip(r.updates, factors, strict=True))
        return Scores(trust, updates, {"cosine": cosine, "norm": norms})


def _euclidean(mat: np.ndarray, center: np.ndarray) -> np.ndarray:
    return np.asarray(np.linalg.norm(mat - center, axis=1), dtype=np.float64)


def _angular(mat: np.ndarray, center: np.ndarray) -> np.ndarray:
    """``1 - cos(x_i, center)`` in ``[0, 2]``; a zero vector counts as orthogonal (1)."""
    norms = np.linalg.norm(mat, axis=1) * np.linalg.norm(center)
    cos = np.divide(mat @ center, norms, out=np.zeros(len(mat)), where=norms > 0)
    return np.asarray(1.0 - np.clip(cos, -1.0, 1.0), dtype=np.float64)


_DISSIMILARITIES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "distance": _euclidean,
    "cosine": _angular,
}


@register_scorer("median_agreement")
class MedianAgreementScorer:
    """Data-free agreement with the coordinate-wise median of the round's updates.

    The center ``m`` is the coordinate-wise median of all flattened updates (robust while
    fewer than half of the clients are corrupted). Each client's dissimilarity ``s_i`` to ``m``
    is the Euclidean distance (``metric="distance"``) or ``1 - cos(d_i, m)``
    (``metric="cosine"``). The score is scale-free and relative to the typical client::

        rel_i   = s_i / (median_j s_j + eps)
        score_i = exp(-max(0, rel_i - 1) / temperature)

    so every client at or below the median dissimilarity scores 1, and only clients
    *markedly* farther than the typical one lose weight (``rel = 2`` gives ``exp(-1) = 0.37``
    at the default temperature). Honest non-IID clients are all far from the median by similar
    amounts and keep scores near 1; a negated, free-riding (zero) or noise update is several
    typical distances away and scores near 0. With ``metric="cosine"``, an update pointing
    against the median (``cos <= 0``, a zero update included) scores 0 outright.

    Reads only the clients' released updates: post-processing, no privacy cost.

    Parameters
    ----------
    metric : {"distance", "cosine"}, default "distance"
        Dissimilarity to the median.
    temperature : float, default 1.0
        How fast the score falls beyond the typical dissimilarity (smaller is stricter).
    eps : float, default 1e-12
        Added to the median dissimilarity so that identical updates do not divide by zero.

    Notes
    -----
    ``details`` holds ``dissimilarity`` (``s_i``) and ``relative`` (``rel_i``).

    """

    name = "median_agreement"
    needs_server_data = False
    privacy_note = "Reads only the clients' released updates; post-processing, no privacy cost."

    def __init__(self, metric: str = "distance", temperature: float = 1.0, eps: float = 1e-12):
        if metric not in _DISSIMILARITIES:
            raise ValueError(
                f"reliability.median_agreement.metric must be one of "
                f"{sorted(_DISSIMILARITIES)}, got {metric!r}"
            )
        self.metric = metric
        self.temperature = _positive("median_agreement.temperature", temperature)
        self.eps = _positive("median_agreement.eps", eps)

    def score(self, r: RoundInput) -> Scores:
        """Score each client by its dissimilarity to the median relative to the typical one."""
        if len(r) == 0:
            return _empty(r)
        _, mat = flatten_all(r.updates)
        center = np.median(mat, axis=0)
        dissim = _DISSIMILARITIES[self.metric](mat, center)
        relative = dissim / (float(np.median(dissim)) + self.eps)
        scores = np.exp(-np.maximum(relative - 1.0, 0.0) / self.temperature)
        if self.metric == "cosine":
            scores = np.where(dissim >= 1.0, 0.0, scores)
        return Scores(scores, r.updates, {"dissimilarity": dissim, "relative": relative})


_CENTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "median": lambda m: np.median(m, axis=0),
    "mean": lambda m: m.mean(axis=0),
}


@register_scorer("output_agreement")
class OutputAgreementScorer:
    """Data-free: cosine of a client's output-layer update with the other clients' centre.

    Under DP-SGD every client's update is mostly Gaussian noise spread evenly over all
    parameters, while label-level corruption (flipped or noisy labels, another distribution)
    shows most in the output layer, which holds a small share of the parameters. So the score
    looks only at the last ``layers`` parameter arrays (by the model's parameter order; the
    default 2 is the output layer's weight and bias), where the corruption's signal is large
    against the noise, and compares each client with a centre that leaves it out, so that its
    own noise does not make it agree with itself::

        c_i     = coordinate-wise median (or mean) of the others' output-layer updates
        score_i = max(0, cos(d_i, c_i))

    A corrupted update points away from what the honest majority agrees on and scores near 0;
    honest non-IID clients still share most of the label structure and keep positive scores.
    One round's cosines are noisy under DP; the decaying reputation
    (:class:`~reliability.Reputation`) accumulates them across rounds, and a relative
    threshold (``aggregation.relative_threshold``) turns the accumulated evidence into
    exclusion. The centre is the robust-aggregation idea of Yin et al. (ICML 2018,
    coordinate-wise median) used as a reference, in the spirit of Zhao et al. (IEEE TIFS
    2019), who weigh participants by how well their contributions agree with the others'.

    Reads only the clients' released updates: post-processing, no privacy cost.

    Parameters
    ----------
    layers : int, default 2
        How many parameter arrays, counted from the end, are compared (``0``: all).
    center : {"median", "mean"}, default "median"
        Centre of the other clients' updates.

    Notes
    -----
    ``details`` holds ``cosine`` (to the leave-one-out centre).

    """

    name = "output_agreement"
    needs_server_data = False
    privacy_note = "Reads only the clients' released updates; post-processing, no privacy cost."

    def __init__(self, layers: int = 2, center: str = "median") -> None:
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(
                f"reliability.output_agreement.layers must be an int >= 0, got {layers!r}"
            )
        if center not in _CENTERS:
            raise ValueError(
                f"reliability.output_agreement.center must be one of {sorted(_CENTERS)}, "
                f"got {center!r}"
            )
        self.layers = layers
        self.center = center

    def score(self, r: RoundInput) -> Scores:
        """Score each client by its cosine with the leave-one-out centre of the others."""
        n = len(r)
        if n == 0:
            return _empty(r)
        keys = list(r.updates[0])
        keys = keys[-self.layers :] if self.layers else keys
        mat = np.stack([flatten({k: u[k] for k in keys}, keys) for u in r.updates])
        cosine = np.zeros(n, dtype=np.float64)
        if n > 1:
            for i in range(n):
                c = _CENTERS[self.center](np.delete(mat, i, axis=0))
                denom = float(np.linalg.norm(mat[i]) * np.linalg.norm(c))
                cosine[i] = float(mat[i] @ c) / denom if denom > 0 else 0.0
        cosine = np.clip(cosine, -1.0, 1.0)
        return Scores(np.maximum(cosine, 0.0), r.updates, {"cosine": cosine})
