"""Attacks on the functional mechanism's released objectives: the seed-knowing auditor and more.

With ``privacy.reproducible_noise=true`` a functional-mechanism client draws its one release's
noise from a seeded source (:func:`privacy.functional.make_noise_generator` with the run's seed),
and with ``privacy.functional_aggregation=objective`` the server receives that release itself.
An auditor who knows the seed redraws the release on the reference dataset (every canary slot
holding its replacement ``(x_i, y_out_i)``) with the same noise: the snapped Laplace mechanism
adds ``gamma * Z`` with ``Z`` drawn independently of the data (:class:`privacy.laplace.
SnappedLaplace`), so the difference of the two releases is the exact statistic of the canaries
whose coin is heads, ``sum_i c_i d_i`` with ``d_i = phi(x_i, y_in_i) - phi(x_i, y_out_i)``,
up to one grid step per coefficient. The scores are the coefficients of the ``d_i`` in a ridge
regression of that difference (with a secret noise draw the difference would carry the full
noise, and the scores nothing). This is the failure the secret noise prevents: an epsilon-DP
claim with a noise draw anyone can repeat is no guarantee (``docs/privacy.md``).
``whitebox_objective`` is the same regression by DP's own adversary against secret noise: it
knows every record but the coins and subtracts their exact statistic instead of a replay.

The exact, noise-free statistic of records is the head kind's (:data:`EXACT_STATISTICS`, keyed
by :attr:`privacy.functional.HeadKind.name`): the softmax statistics
(:meth:`privacy.functional.SoftmaxStatistics.from_records`) or one quadratic objective per head
row (:data:`privacy.functional.OBJECTIVES`), each with its unreleased constant set to 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from privacy.functional import OBJECTIVES, SoftmaxStatistics, objectives_to_arrays
from tasks.audit.attacks import ATTACK_CANARIES, ATTACKS, RIDGE, AttackView, centred
from tasks.audit.canaries import Canaries
from tasks.models.functional import FunctionalModel

Arrays = dict[str, np.ndarray]
ExactStatistic = Callable[[np.ndarray, Sequence[np.ndarray], int], Arrays]
"""``(features (n, d) in the unit ball, one target vector per head row, rows) -> arrays``."""


def _softmax(feats: np.ndarray, targets: Sequence[np.ndarray], rows: int) -> Arrays:
    labels = np.column_stack(list(targets)).argmax(axis=1)
    return SoftmaxStatistics.from_records(feats, labels, rows).to_arrays()


def _per_row(name: str) -> ExactStatistic:
    def exact(feats: np.ndarray, targets: Sequence[np.ndarray], rows: int) -> Arrays:
        arrays = objectives_to_arrays([OBJECTIVES[name].build(feats, t) for t in targets])
        arrays["c"] = np.zeros_like(arrays["c"])  # the constant is not released
        return arrays

    return exact


EXACT_STATISTICS: dict[str, ExactStatistic] = {
    "softmax": _softmax,
    "logistic": _per_row("logistic"),
    "linear": _per_row("linear"),
}
"""Per head kind: the exact statistic its release perturbs (same arrays and keys)."""


def _flat(arrays: Arrays) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in sorted(arrays)])


def canary_directions(model: FunctionalModel, canaries: Canaries) -> np.ndarray:
    """``d_i``: the change of the exact statistic when slot ``i`` holds ``y_in`` not ``y_out``.

    Shape ``(m, coefficients)``, in the order of :func:`_flat` over the release's arrays.
    """
    if model.objective_kind not in EXACT_STATISTICS:
        raise ValueError(
            f"replay_objective knows the head kinds {sorted(EXACT_STATISTICS)}, got "
            f"{model.objective_kind!r}"
        )
    exact = EXACT_STATISTICS[model.objective_kind]
    rows = model.head.out_features
    feats = model.fm_features(canaries.x)
    out = []
    for i in range(len(canaries)):
        f = feats[i : i + 1]
        a = exact(f, model.fm_targets(canaries.y_in[i : i + 1]), rows)
        b = exact(f, model.fm_targets(canaries.y_out[i : i + 1]), rows)
        out.append(_flat(a) - _flat(b))
    return np.stack(out)


def objective_scores(difference: Arrays, directions: np.ndarray) -> np.ndarray:
    """Ridge coefficients of ``directions`` (rows) explaining ``difference``, times ``||d_i||``.

    ``(D D^T + lambda I)^-1 D v`` with ``lambda`` :data:`tasks.audit.attacks.RIDGE` times the
    mean squared norm of a direction, as :func:`tasks.audit.attacks.gradient_scores` does.
    """
    d = torch.as_tensor(directions, dtype=torch.float64)
    v = torch.as_tensor(_flat(difference), dtype=torch.float64)
    if v.shape[0] != d.shape[1]:
        raise ValueError(
            f"the release has {v.shape[0]} coefficients but the canaries' statistic has "
            f"{d.shape[1]}"
        )
    gram = d @ d.T
    ridge = RIDGE * float(torch.diagonal(gram).mean()) + 1e-12
    coef = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), d @ v)
    return (coef * d.norm(dim=1)).numpy()


def replay_objective(view: AttackView) -> np.ndarray:
    """Scores from the audited client's release less its replay with the same (known) noise."""
    released = next((r for r in view.client_releases if r is not None), None)
    if released is None or view.replayed_release is None:
        raise ValueError(
            "the replay_objective attack needs the audited client's released objectives and "
            "their replay (privacy.mode=functional, privacy.functional_aggregation=objective, "
            "privacy.reproducible_noise=true)"
        )
    model = view.build()
    if not isinstance(model, FunctionalModel):
        raise ValueError(f"replay_objective needs a functional model, got {type(model).__name__}")
    difference = {
        k: np.asarray(released[k], dtype=np.float64)
        - np.asarray(view.replayed_release[k], dtype=np.float64)
        for k in released
    }
    canaries = view.input_canaries()
    scores = objective_scores(difference, canary_directions(model, canaries))
    return centred(scores, canaries)


def _exact_of(model: FunctionalModel, x: np.ndarray, y: np.ndarray) -> Arrays:
    """The exact statistic of records ``(x, y)`` as the model's head kind releases it."""
    exact = EXACT_STATISTICS[model.objective_kind]
    return exact(model.fm_features(x), model.fm_targets(y), model.head.out_features)


def whitebox_objective(view: AttackView) -> np.ndarray:
    """Scores from the release less the exact statistic of everything but the coins.

    The attacker of DP itself: it knows the client's other records (``view.known``) and the
    canaries, so it subtracts the exact statistic of the reference dataset (every slot its
    replacement); what is left is ``sum_i c_i d_i`` plus the mechanism's noise, regressed on
    the ``d_i`` as :func:`replay_objective` does. Against secret noise this is the strongest
    reading of one release; the bound it gives must stay under the claim.
    """
    released = next((r for r in view.client_releases if r is not None), None)
    model = view.build()
    if released is None or view.known is None or not isinstance(model, FunctionalModel):
        raise ValueError(
            "the whitebox_objective attack needs a functional model's released objectives "
            "(privacy.functional_aggregation=objective) and the client's other records"
        )
    if model.objective_kind not in EXACT_STATISTICS:
        raise ValueError(
            f"whitebox_objective knows the head kinds {sorted(EXACT_STATISTICS)}, got "
            f"{model.objective_kind!r}"
        )
    c = view.input_canaries()
    x = np.concatenate([view.known[0], c.x.astype(view.known[0].dtype)])
    y = np.concatenate([view.known[1], c.y_out.astype(view.known[1].dtype)])
    reference = _exact_of(model, x, y)
    difference = {k: np.asarray(released[k], dtype=np.float64) - reference[k] for k in released}
    scores = objective_scores(difference, canary_directions(model, c))
    return centred(scores, c)


ATTACKS["replay_objective"] = replay_objective
ATTACKS["whitebox_objective"] = whitebox_objective
ATTACK_CANARIES["replay_objective"] = ATTACK_CANARIES["whitebox_objective"] = "input"
