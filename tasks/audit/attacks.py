"""Membership attacks on the canaries, from what an attacker sees (never the coins).

Each attack maps an :class:`AttackView` to one score per canary, higher meaning "its coin was
heads" (the slot held ``(x_i, y_in_i)`` rather than ``(x_i, y_out_i)``):

* ``blackbox``: the final global model's loss on the replacement label minus its loss on the
  canary label (a loss-threshold attack on the released model; Yeom et al. 2018).
* ``whitebox``: the server's view. Every round it sees the global weights it sent and the
  audited client's reply; the score sums, over rounds, the alignment of the client's update
  ``w_client - w_global`` with the descent direction of the canary record against its
  replacement, ``-(clip(g_in) - clip(g_out))`` at ``w_global`` (per-record gradients, clipped
  to ``privacy.max_grad_norm`` as DP-SGD clips them). Nasr et al. 2021 and 2023: with the
  intermediate updates, the white-box adversary is the one DP-SGD's analysis is tight for.
* ``replay``: the white-box attack by an auditor who also knows the noise (the run used
  ``privacy.reproducible_noise=true`` and the auditor knows the seed): it replays the client's
  round from the same global weights with every slot holding its replacement, and aligns with
  ``w_client - w_replayed``, from which the same noise has cancelled.
* ``replay_objective`` (:mod:`tasks.audit.objective`): the same auditor against the functional
  mechanism's released objectives, in objective space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tasks.audit.canaries import Canaries, DiracCanaries
from tasks.models.registry import set_weights

Weights = dict[str, np.ndarray]
RIDGE = 1e-3
"""The ridge of the white-box regression, relative to the mean squared norm of a regressor."""


@dataclass(frozen=True)
class AttackView:
    """What an attack may read.

    Attributes
    ----------
    build : callable
        A fresh model of the run's architecture (the architecture is public).
    global_weights : list of dict
        The global weights the server sent in each round, first round first.
    client_weights : list of dict or None
        The audited client's reply in each round (None when it declined).
    final : dict
        The final global model (what a black-box attacker queries).
    canaries : Canaries or None
        The public design of input-space canaries (None under ``audit.canary_kind=gradient``).
    clip : float
        The per-record clipping norm the attacker assumes (public setting; 0: no clipping).
    replayed : list of dict or None
        The replayed reply of each round (``replay`` only).
    """

    build: Callable[[], nn.Module]
    global_weights: list[Weights]
    client_weights: list[Weights | None]
    final: Weights
    canaries: Canaries | None = None
    clip: float = 0.0
    replayed: list[Weights | None] | None = None
    known: tuple[np.ndarray, np.ndarray] | None = None
    """The audited client's own (non-canary) training records, for an attacker that knows them:
    ``whitebox_known`` only (the threat model of DP itself: everything but the coins)."""
    client_releases: Sequence[Weights | None] = ()
    """The audited client's released arrays each round (the functional mechanism's noisy
    objectives under ``privacy.functional_aggregation=objective``; None otherwise)."""
    replayed_release: Weights | None = None
    """The release redrawn on the reference data with the known noise (``replay_objective``)."""
    dirac: DiracCanaries | None = None
    """The public coordinates of Dirac gradient canaries (``audit.canary_kind=gradient``)."""
    others: Sequence[Sequence[Weights | None]] = ()
    """Each round, the replies of the clients other than the audited one (the server sees them)."""

    def input_canaries(self) -> Canaries:
        """The input-space canaries; ``ValueError`` when the run has gradient canaries."""
        if self.canaries is None:
            raise ValueError(
                "this attack scores input-space canaries: it needs audit.canary_kind=input"
            )
        return self.canaries


@torch.no_grad()
def _losses(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    model.eval()
    out = model(torch.as_tensor(x))
    return nn.functional.cross_entropy(out, torch.as_tensor(y), reduction="none").numpy()


def loss_scores(model: nn.Module, canaries: Canaries) -> np.ndarray:
    """``loss(x, y_out) - loss(x, y_in)`` per canary: large when the model learnt ``y_in``."""
    return _losses(model, canaries.x, canaries.y_out) - _losses(model, canaries.x, canaries.y_in)


def _flat_grads(model: nn.Module, x: np.ndarray, y: np.ndarray, clip: float) -> torch.Tensor:
    """Per-record gradients of the loss, flattened and clipped: shape ``(m, parameters)``."""
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, (p, buffers), (xb.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yb.unsqueeze(0))

    model.eval()
    try:
        grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, xt, yt)
        flat = torch.cat([grads[k].reshape(len(yt), -1) for k in params], dim=1)
    except Exception:  # a model torch.func cannot trace: one backward pass per record
        rows = []
        for i in range(len(yt)):
            g = torch.func.grad(loss)(params, xt[i], yt[i])
            rows.append(torch.cat([g[k].reshape(-1) for k in params]))
        flat = torch.stack(rows)
    if clip > 0:
        norms = flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        flat = flat * (clip / norms).clamp(max=1.0)
    return flat.detach()


def gradient_scores(
    model: nn.Module,
    start: Weights,
    update: Weights,
    canaries: Canaries,
    clip: float,
    known: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """How much of ``update`` each canary's direction explains, against its replacement.

    At ``start`` (parameters that do not train are left out), canary slot ``i`` adds
    ``-c_i (s_i + b_i d_i / 2)`` to the update, with ``s_i = clip(g_in) + clip(g_out)`` over 2,
    ``d_i = clip(g_in) - clip(g_out)`` and ``b_i = +1`` if its coin is heads, ``-1`` if not. The
    scores are the coefficients of the ``d_i`` in one ridge regression of ``-update`` on every
    ``d_i`` and ``s_i`` together (``(X X^T + lambda I)^-1 X (-update)``), each times
    ``||d_i||``: regressing on all canaries at once removes the cross-talk between their
    directions (many canaries, a small model) that a plain inner product picks up, and the
    ``s_i`` absorb the part of a slot's step that does not depend on its coin. The factor
    ``||d_i||`` puts isotropic noise on the same scale in every score. ``known``: the client's
    other training records, if the attacker knows them (DP's adversary may); their clipped
    gradients join the regression, so that their steps are not read as canary signal.
    """
    set_weights(model, start)
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    g_in = _flat_grads(model, canaries.x, canaries.y_in, clip).double()
    g_out = _flat_grads(model, canaries.x, canaries.y_out, clip).double()
    d = g_in - g_out
    parts = [d, 0.5 * (g_in + g_out)]
    if known is not None and len(known[1]):
        parts.append(_flat_grads(model, known[0], known[1], clip).double())
    x = torch.cat(parts)
    u = torch.cat(
        [torch.as_tensor(np.asarray(update[k], dtype=np.float64)).reshape(-1) for k in names]
    )
    gram = x @ x.T
    ridge = RIDGE * float(torch.diagonal(gram).mean()) + 1e-12
    eye = torch.eye(len(gram), dtype=gram.dtype)
    coef = torch.linalg.solve(gram + ridge * eye, x @ (-u))[: len(d)]
    return (coef * d.norm(dim=1)).numpy()


def centred(scores: np.ndarray, canaries: Canaries, passes: int = 3) -> np.ndarray:
    """Scores less an additive effect of each label, fitted on the scores themselves.

    A model's bias for a class moves every canary whose ``y_in`` (or ``y_out``) is that class
    the same way, whatever its coin; the coins are fair and independent of the labels, so
    removing per-label means (alternately over ``y_in`` and ``y_out``) reads no coin and
    leaves each canary's own signal. Uses public labels only.
    """
    s = np.asarray(scores, dtype=np.float64).copy()
    for _ in range(passes):
        for labels in (canaries.y_in, canaries.y_out):
            for c in np.unique(labels):
                hit = labels == c
                s[hit] -= s[hit].mean()
    return s


def _minus(a: Weights, b: Weights) -> Weights:
    return {k: np.asarray(a[k], dtype=np.float64) - np.asarray(b[k], dtype=np.float64) for k in a}


def blackbox(view: AttackView) -> np.ndarray:
    """Scores from the final global model's losses."""
    model = view.build()
    set_weights(model, view.final)
    canaries = view.input_canaries()
    return centred(loss_scores(model, canaries), canaries)


def _update_scores(
    view: AttackView,
    references: Sequence[Weights | None],
    known: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Summed :func:`gradient_scores` of the audited client's replies less ``references``.

    Rounds where the client sent nothing (or there is no reference) are skipped.
    """
    model = view.build()
    canaries = view.input_canaries()
    total = np.zeros(len(canaries))
    for g, w, ref in zip(view.global_weights, view.client_weights, references, strict=True):
        if w is not None and ref is not None:
            total += gradient_scores(model, g, _minus(w, ref), canaries, view.clip, known)
    return centred(total, canaries)


def whitebox(view: AttackView) -> np.ndarray:
    """Scores from the audited client's per-round updates (the server's view)."""
    return _update_scores(view, view.global_weights)


def whitebox_known(view: AttackView) -> np.ndarray:
    """``whitebox`` by an attacker that also knows the client's other records (not the coins)."""
    if view.known is None:
        raise ValueError("the whitebox_known attack needs the client's other records")
    return _update_scores(view, view.global_weights, view.known)


def replay(view: AttackView) -> np.ndarray:
    """Scores from the updates less a replay with the same (known) noise and no canary."""
    if view.replayed is None:
        raise ValueError("the replay attack needs the replayed rounds (privacy.reproducible_noise)")
    return _update_scores(view, view.replayed)


ATTACKS: dict[str, Callable[[AttackView], np.ndarray]] = {
    "blackbox": blackbox,
    "whitebox": whitebox,
    "whitebox_known": whitebox_known,
    "replay": replay,
}
"""The attacks by name (``audit.attacks``)."""

ATTACK_CANARIES: dict[str, str] = {name: "input" for name in ATTACKS}
"""The canary kind (:data:`tasks.audit.canaries.CANARY_KINDS`) each attack scores."""
