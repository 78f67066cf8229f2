"""Federated evaluation on a client's private validation split, released only as DP allows.

Under ``privacy.mode=none`` the exact loss and accuracy are returned (nothing is protected).
Under a DP mode, federated evaluation is **off** unless ``privacy.eval_epsilon > 0``; then each
evaluation releases one noisy statistic through the Laplace mechanism and records it in the
client's ledger (:class:`privacy.PureDpEvent`, ``mechanism="evaluation"``) before it leaves:

* classification: the number of correct predictions, an integer query of sensitivity 1 under
  replace-one (one replaced record changes the count by at most 1; ``n_val`` is public), plus
  discrete Laplace noise of scale ``1/eval_epsilon`` (the geometric mechanism, Ghosh,
  Roughgarden and Sundararajan 2009; exact sampling, Canonne, Kamath and Steinke 2020), so the
  release is ``eval_epsilon``-DP; accuracy_dp = noisy count / ``n_val``, clipped to [0, 1]
  (post-processing);
* regression: the sum of squared errors, each clipped to [0, 1], sensitivity 1 under
  replace-one, released with the snapped Laplace mechanism
  (:class:`privacy.laplace.SnappedLaplace`);
  mse_dp = noisy sum / ``n_val`` (post-processing).

The raw loss is never released under DP. The evaluation is declined (nothing released, no
event) when the ledger could not afford it within ``privacy.target_epsilon``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from privacy import PureDpEvent, is_private
from privacy.laplace import IntegerSource, SnappedLaplace, discrete_laplace
from tasks.training.local import LedgerStore
from tasks.training.loops import evaluate

if TYPE_CHECKING:  # the adapter's type only: nothing here reads the flat run config
    from protocol.settings import RunSettings

EVAL_SQUARED_ERROR_CLIP = 1.0
"""Per-record clip of the squared error in a regression's released sum (its sensitivity)."""


@dataclass(frozen=True)
class EvalConfig:
    """What a federated evaluation reads of a run, as explicit parameters.

    Built by :meth:`from_settings`, the one conversion from the run's settings.

    Attributes
    ----------
    mode : str
        ``privacy.mode``: raw metrics under a mode that is not private, a noisy one otherwise.
    eval_epsilon : float
        ``privacy.eval_epsilon``: the epsilon of one evaluation's release (0: off under DP).
    target_epsilon : float
        ``privacy.target_epsilon``: the ledger's cap when the node sets none.
    """

    mode: str
    eval_epsilon: float
    target_epsilon: float

    @classmethod
    def from_settings(cls, settings: RunSettings) -> EvalConfig:
        """The evaluation parameters of a run's settings."""
        return cls(
            mode=settings.privacy_mode,
            eval_epsilon=settings.privacy_eval_epsilon,
            target_epsilon=settings.privacy_target_epsilon,
        )


@dataclass
class EvalResult:
    """What an evaluation may send: raw metrics (no privacy only) or DP ones, or a refusal."""

    num_examples: int
    loss: float = math.nan
    accuracy: float = math.nan
    accuracy_dp: float = math.nan
    loss_dp: float = math.nan
    epsilon: float = math.nan
    declined: bool = False
    reason: str = ""


def evaluate_private(
    config: EvalConfig,
    model: nn.Module,
    x_val: np.ndarray,
    y_val: np.ndarray,
    device: torch.device,
    ledger: LedgerStore,
    server_round: int,
    source: IntegerSource,
    budget: float | None = None,
) -> EvalResult:
    """Evaluate ``model`` on the validation split and release what the privacy mode allows.

    Parameters
    ----------
    config
        The run's evaluation parameters (privacy mode, ``privacy.eval_epsilon``, the
        target): :meth:`EvalConfig.from_settings`.
    model, device
        The received global model, on ``device``.
    x_val, y_val
        The client's validation split (private).
    ledger
        The client's ledger store; an evaluation's spend is saved before anything leaves.
    server_round
        The round, recorded with the event.
    budget
        The epsilon the ledger may reach (the node's cap); the run's target if None.
    source
        The noise source (:func:`privacy.laplace.make_source`: OS entropy unless
        ``privacy.reproducible_noise``).

    """
    n = len(y_val)
    cap = config.target_epsilon if budget is None else budget
    if not is_private(config.mode):
        loss, acc = evaluate(model, x_val, y_val, device) if n else (math.nan, math.nan)
        return EvalResult(n, loss=loss, accuracy=acc, epsilon=math.inf)
    eps = config.eval_epsilon
    book = ledger.load()
    if eps <= 0:
        return EvalResult(
            n,
            epsilon=book.epsilon(),
            declined=True,
            reason="declined: federated evaluation is off under DP (privacy.eval_epsilon=0)",
        )
    event = PureDpEvent(epsilon=float(eps), round=server_round, mechanism="evaluation")
    if n == 0 or book.epsilon_if(event) > cap * (1 + 1e-9):
        return EvalResult(
            n,
            epsilon=book.epsilon(),
            declined=True,
            reason=(
                f"declined: an evaluation at epsilon {eps:g} would take epsilon from "
                f"{book.epsilon():.4g} past the budget {cap:g}"
                if n
                else "declined: no validation records"
            ),
        )
    regression = np.issubdtype(np.asarray(y_val).dtype, np.floating)
    with torch.no_grad():
        model.eval()
        out = model(torch.as_tensor(x_val).to(device)).cpu()
    # The spend is on record before anything computed from the data is released.
    book.record(event)
    ledger.save(book)
    if regression:
        err = (out.reshape(-1).double() - torch.as_tensor(y_val).double()) ** 2
        clipped = np.minimum(err.numpy(), EVAL_SQUARED_ERROR_CLIP)
        mech = SnappedLaplace(epsilon=float(eps), sensitivity=EVAL_SQUARED_ERROR_CLIP, dim=1)
        noisy = float(mech.release(np.array([clipped.sum()]), source)[0])
        mse = min(max(noisy / n, 0.0), EVAL_SQUARED_ERROR_CLIP)
        return EvalResult(n, loss_dp=mse, epsilon=book.epsilon())
    correct = int((out.argmax(1) == torch.as_tensor(y_val)).sum())
    noisy_count = correct + discrete_laplace(1 / Fraction(float(eps)), source)
    return EvalResult(n, accuracy_dp=min(max(noisy_count / n, 0.0), 1.0), epsilon=book.epsilon())
