"""From per-round scores to aggregation weights: reputation memory, thresholds, normalisation.

The strategy calls a :class:`ReliabilityWeighting` once per round with the trained clients'
updates and gets back normalised weights ``a_i`` (sum 1, or all 0) and the updates ``u_i`` to
aggregate as ``g_new = g + sum_i a_i * u_i``; when every weight is 0 it keeps ``g``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from reliability.scorers import Scorer
from reliability.types import RoundInput, Weights

__all__ = ["ReliabilityWeighting", "Reputation", "aggregation_weights"]


def _check_decay(decay: float) -> float:
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
        raise ValueError(f"aggregation.decay must be in [0, 1), got {decay!r}")
    return float(decay)


def _check_threshold(threshold: float) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or threshold < 0
    ):
        raise ValueError(f"aggregation.threshold must be a finite number >= 0, got {threshold!r}")
    return float(threshold)


def _check_scores(scores: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{what} must hold one value per client ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{what} must be finite and >= 0, got {arr.tolist()}")
    return arr


class Reputation:
    """Exponentially decaying memory of each client's scores, keyed by stable client id.

    After a round in which client ``i`` scored ``s``::

        rep_i = decay * rep_i(previous) + (1 - decay) * s

    A client that scores badly every round loses weight geometrically (factor ``decay`` per
    round); an honest client with one unlucky round recovers the same way (with ``decay=0.5``
    it is back above 0.9 of its former reputation three rounds later). Clients that do not take
    part in a round keep their reputation unchanged.

    Parameters
    ----------
    decay : float, default 0.5
        Weight of the past, in ``[0, 1)``; 0 means no memory (this round's score only).
    initial : float or None, default None
        Reputation a client is assumed to have before its first round. ``None`` (default) starts
        a new client at its first score, so a newcomer whose first update is an outlier gets no
        free pass; a number (e.g. 1.0, "trusted until shown otherwise") is used as the prior.

    Raises
    ------
    ValueError
        If ``decay`` is not in ``[0, 1)`` or ``initial`` is negative or not finite.

    """

    def __init__(self, decay: float = 0.5, initial: float | None = None) -> None:
        self.decay = _check_decay(decay)
        if initial is not None and (
            isinstance(initial, bool)
            or not isinstance(initial, int | float)
            or not math.isfinite(initial)
            or initial < 0
        ):
            raise ValueError(f"reliability.initial must be None or a number >= 0, got {initial!r}")
        self.initial = None if initial is None else float(initial)
        self._rep: dict[int, float] = {}

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._rep

    def __getitem__(self, client_id: int) -> float:
        return self._rep[client_id]

    def update(self, client_ids: Sequence[int], scores: Iterable[float]) -> np.ndarray:
        """Fold this round's ``scores`` into the reputations of ``client_ids``.

        Returns
        -------
        numpy.ndarray
            The updated reputations of ``client_ids``, in that order.

        Raises
        ------
        ValueError
            If the scores are not one finite value ``>= 0`` per client, or ids repeat.

        """
        ids = [int(c) for c in client_ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"client ids must be unique within a round, got {ids}")
        values = _check_scores(list(scores), len(ids), "scores")
        out = np.empty(len(ids), dtype=np.float64)
        for j, (cid, s) in enumerate(zip(ids, values, strict=True)):
            prev = self._rep.get(cid, self.initial if self.initial is not None else float(s))
            out[j] = self._rep[cid] = self.decay * prev + (1.0 - self.decay) * float(s)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: settings and reputations (client ids as strings)."""
        return {
            "decay": self.decay,
            "initial": self.initial,
            "reputation": {str(c): r for c, r in sorted(self._rep.items())},
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Reputation:
        """Rebuild a :class:`Reputation` from :meth:`to_dict`'s output."""
        rep = cls(decay=state["decay"], initial=state.get("initial"))
        values = {int(c): float(r) for c, r in state.get("reputation", {}).items()}
        _check_scores(list(values.values()), len(values), "reputation")
        rep._rep = values
        return rep


def _check_relative(relative_threshold: float) -> float:
    if (
        isinstance(relative_threshold, bool)
        or not isinstance(relative_threshold, int | float)
        or not 0 <= relative_threshold <= 1
    ):
        raise ValueError(
            f"aggregation.relative_threshold must be in [0, 1], got {relative_threshold!r}"
        )
    return float(relative_threshold)


def aggregation_weights(
    reputations: np.ndarray,
    num_examples: Sequence[int],
    *,
    use_examples: bool = True,
    threshold: float = 0.0,
    relative_threshold: float = 0.0,
    by_reputation: bool = True,
) -> np.ndarray:
    """Normalised aggregation weights from reputations (and example counts).

    A client is *excluded* (weight 0) when its reputation is below the absolute ``threshold``
    or below ``relative_threshold`` times the median reputation of this round's clients. The
    relative rule is scale-free: it needs no knowledge of what a "good" score is for a given
    scorer, model or noise level, and as long as most clients are honest the median is an
    honest client's reputation. Each kept client gets ``raw_i = rep_i * n_i`` (``rep_i`` when
    ``use_examples`` is False; ``n_i`` or 1 when ``by_reputation`` is False, so that the
    reputation only decides who is kept and the kept clients are averaged as in FedAvg, which
    under DP averages the clients' noise best); the result is ``raw / sum(raw)``.

    Returns
    -------
    numpy.ndarray
        Weights ``>= 0`` summing to 1, or all zeros when every raw weight is 0 (the caller then
        keeps the previous model). Never NaN.

    Raises
    ------
    ValueError
        If reputations or example counts are not finite and ``>= 0``, their lengths differ, or
        ``threshold`` is invalid.

    """
    threshold = _check_threshold(threshold)
    relative_threshold = _check_relative(relative_threshold)
    rep = _check_scores(reputations, len(num_examples), "reputations")
    counts = _check_scores(list(num_examples), len(rep), "num_examples")
    cut = max(threshold, relative_threshold * float(np.median(rep)) if len(rep) else 0.0)
    kept = (rep >= cut) & (rep > 0)
    raw = np.where(kept, rep if by_reputation else 1.0, 0.0)
    if use_examples:
        raw = raw * counts
    total = float(raw.sum())
    if not total > 0 or not math.isfinite(total):
        return np.zeros_like(raw)
    return np.asarray(raw / total, dtype=np.float64)


class ReliabilityWeighting:
    """Scorer + reputation + thresholded normalisation: one call per round for the strategy.

    Parameters
    ----------
    scorer : Scorer
        Scores each round's clients (see :func:`reliability.make_scorer`).
    decay : float, default 0.5
        Memory of :class:`Reputation`, in ``[0, 1)``.
    threshold : float, default 0.0
        Clients whose reputation is below this get weight 0.
    use_examples : bool, default True
        Multiply reputations by example counts (FedAvg-style) before normalising.
    initial : float or None, default None
        Prior reputation of new clients (``None``: their first score).
    relative_threshold : float, default 0.0
        Clients whose reputation is below this share of the round's median reputation get
        weight 0 (see :func:`aggregation_weights`).
    by_reputation : bool, default True
        Weigh the kept clients by reputation (True) or equally, by example counts (False).

    """

    def __init__(
        self,
        scorer: Scorer,
        decay: float = 0.5,
        threshold: float = 0.0,
        use_examples: bool = True,
        initial: float | None = None,
        relative_threshold: float = 0.0,
        by_reputation: bool = True,
    ) -> None:
        self.scorer = scorer
        self.reputation = Reputation(decay=decay, initial=initial)
        self.threshold = _check_threshold(threshold)
        self.relative_threshold = _check_relative(relative_threshold)
        if not isinstance(by_reputation, bool):
            raise ValueError(f"aggregation.by_reputation must be a bool, got {by_reputation!r}")
        self.by_reputation = by_reputation
        if not isinstance(use_examples, bool):
            raise ValueError(f"reliability.use_examples must be a bool, got {use_examples!r}")
        self.use_examples = use_examples

    def __call__(
        self, r: RoundInput
    ) -> tuple[np.ndarray, tuple[Weights, ...], dict[str, np.ndarray]]:
        """Weights, updates to aggregate and per-client details for round ``r``.

        Returns
        -------
        weights : numpy.ndarray
            Normalised aggregation weights (sum 1, or all 0: keep the previous model).
        updates : tuple of Weights
            The updates to aggregate (possibly transformed by the scorer).
        details : dict of str to numpy.ndarray
            The scorer's diagnostics plus ``score``, ``reputation`` and ``weight``.

        Raises
        ------
        ValueError
            If the scorer returns anything but one finite score ``>= 0`` per client, or a
            different number of updates.

        """
        result = self.scorer.score(r)
        what = f"scores of aggregation.scorer={self.scorer.name!r}"
        scores = _check_scores(result.scores, len(r), what)
        if len(result.updates) != len(r):
            raise ValueError(
                f"aggregation.scorer={self.scorer.name!r} returned {len(result.updates)} "
                f"updates for {len(r)} clients"
            )
        rep = self.reputation.update(r.client_ids, scores)
        weights = aggregation_weights(
            rep,
            r.num_examples,
            use_examples=self.use_examples,
            threshold=self.threshold,
            relative_threshold=self.relative_threshold,
            by_reputation=self.by_reputation,
        )
        details = dict(result.details)
        details.update(score=scores, reputation=rep, weight=weights)
        return weights, result.updates, details

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state for checkpoints (scorer name and reputations)."""
        return {"scorer": self.scorer.name, "reputation": self.reputation.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises
        ------
        ValueError
            If the checkpoint was written with a different scorer (its reputations are on
            another scale).

        Notes
        -----
        The reputations come from the checkpoint; ``decay`` and ``initial`` stay this run's.

        """
        if state["scorer"] != self.scorer.name:
            raise ValueError(
                f"aggregation.scorer of the checkpoint is {state['scorer']!r}, "
                f"this run uses {self.scorer.name!r}"
            )
        saved = dict(state["reputation"])
        # This run's decay and prior (its config) win over the checkpoint's.
        saved.update(decay=self.reputation.decay, initial=self.reputation.initial)
        self.reputation = Reputation.from_dict(saved)
