"""Client-level differential privacy added by the server: DP-FedAvg with fixed or adaptive clipping.

The mechanism (one round)
-------------------------
McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent Language Models"
(ICLR 2018), DP-FedAvg with the fixed-denominator estimator; adaptive clipping from Andrew,
Thakkar, McMahan and Ramaswamy, "Differentially Private Learning with Adaptive Clipping"
(NeurIPS 2021), Algorithm 1 with the centred count of its Section 3.

1. Every one of the ``N`` clients is sampled independently with probability ``q``
   (Poisson sampling, :func:`poisson_sample`); ``m = q N`` clients are expected.
2. Each sampled client's update ``u_i`` (its weights minus the global ones, floating-point
   arrays only) is clipped to L2 norm ``C``: ``u_i min(1, C / ||u_i||)``.
3. The server releases ``g + (sum_i clip(u_i) + N(0, (z_u C)^2 I)) / m``. The denominator is
   the *expected* ``m``, never the number of replies (which depends on the sample).
4. ``adaptive`` also releases ``sum_i (b_i - 1/2) + N(0, sigma_b^2)`` with
   ``b_i = [||u_i|| <= C]`` and moves ``C <- C exp(-eta (b_bar - gamma))`` with
   ``b_bar = released / m + 1/2`` towards the ``gamma`` quantile of the norms.

Neighbouring relation and sensitivity
-------------------------------------
Two federations are neighbours when **one client's whole data is replaced** by any other data
(the number of clients ``N`` is public, as ``n`` is for the sample-level guarantee). A
client's contribution to the released sum is its clipped update, of norm at most ``C``, so
in units of the noise std each contribution lies in a ball of radius ``1/z_u``: the round is
the Poisson-subsampled Gaussian under replace-one with noise multiplier ``z_u``, which is what
dp_accounting's ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under ``REPLACE_ONE``
accounts (contributions ``+s`` and ``-s`` about an absent client; :mod:`privacy.accounting`).

With adaptive clipping the contribution is the pair ``(clip(u_i) / (z_u C),
(b_i - 1/2) / sigma_b)``, of norm at most ``(z_u^-2 + (2 sigma_b)^-2)^(1/2)``: the two releases
together are one Gaussian mechanism with noise multiplier
``z = (z_u^-2 + (2 sigma_b)^-2)^(-1/2)`` (Andrew et al., Theorem 1). So ``z`` is calibrated for
the planned rounds, and ``z_u = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, which needs ``2 sigma_b > z``.

A client that is sampled but does not reply (or declines, or is rejected as malformed)
contributes 0, inside the ball; so does an absent one. Anything that lets one client's data
move another client's contribution (a norm screen relative to the others, a median, a
selection, weights scored against the other updates) breaks the bound and is not used.

Accounting
----------
Each round is one ``SampledGaussianEvent(z, q, steps=1)`` in a server ledger
(:class:`privacy.ledger.PrivacyLedger`, the clients' event format), composed by the PLD
accountant (pessimistic: an upper bound). :class:`ClientLevelDp` refuses a round whose event
would take the ledger past ``target_epsilon`` (the budget guard).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from privacy.calibration_cache import calibrated_noise
from privacy.ledger import PrivacyLedger, SampledGaussianEvent
from privacy.rng import hardened_normal, make_generator

__all__ = [
    "CLIPPINGS",
    "AdaptiveClip",
    "CentralPlan",
    "ClientLevelDp",
    "ClipRule",
    "FixedClip",
    "clip_update",
    "plan_central",
    "poisson_sample",
    "server_ledger_epsilon",
]

Arrays = Mapping[str, np.ndarray]

SERVER_LEDGER = Path("ledgers") / "server.json"
"""The server ledger's place in a run directory (the clients' are ``ledgers/client-N.json``)."""


def poisson_sample(ids: Sequence[int], rate: float, rng: random.Random) -> list[int]:
    """Each id independently with probability ``rate`` (the sampling that earns amplification).

    ``rng`` must be secret from the adversary (``secrets.SystemRandom()``): amplification
    holds only when who was sampled stays hidden.
    """
    return sorted(i for i in ids if rng.random() < rate)


def _floating(a: np.ndarray) -> bool:
    return bool(np.issubdtype(np.asarray(a).dtype, np.floating))


def clip_update(update: Arrays, clip: float) -> tuple[dict[str, np.ndarray], float]:
    """``update`` scaled to L2 norm at most ``clip`` (flat clip over its float arrays).

    Returns the clipped float arrays (float64) and the norm before clipping. Arrays that are
    not floating point are left out: they are never released under central DP.
    """
    floats = {k: np.asarray(v, dtype=np.float64) for k, v in update.items() if _floating(v)}
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in floats.values()))
    factor = 1.0 if norm <= clip else clip / norm
    return {k: v * factor for k, v in floats.items()}, norm


@dataclass(frozen=True)
class CentralPlan:
    """The noise of a run, calibrated once for its planned rounds.

    Attributes
    ----------
    clipping : str
        ``fixed`` or ``adaptive`` (:data:`CLIPPINGS`).
    noise_multiplier : float
        ``z``: the accounted noise multiplier of one round (both releases together).
    update_noise_multiplier : float
        ``z_u``: the noise std on the sum of clipped updates over the clip.
    count_stddev : float
        ``sigma_b``: the noise std on the centred clipped count (0 for ``fixed``).
    sample_rate, expected_clients : float
        ``q`` and ``m = q N``.
    rounds : int
        The rounds the calibration planned for.
    target_epsilon, delta : float
        The client-level budget.

    """

    clipping: str
    noise_multiplier: float
    update_noise_multiplier: float
    count_stddev: float
    sample_rate: float
    expected_clients: float
    rounds: int
    target_epsilon: float
    delta: float

    def event(self, rnd: int) -> SampledGaussianEvent:
        """The ledger event of round ``rnd``."""
        return SampledGaussianEvent(self.noise_multiplier, self.sample_rate, 1, rnd)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored beside the server ledger)."""
        return asdict(self)


def plan_central(
    clipping: str,
    target_epsilon: float,
    delta: float,
    num_clients: int,
    sample_rate: float,
    rounds: int,
    count_stddev_fraction: float = 0.05,
) -> CentralPlan:
    """Calibrate ``z`` for ``rounds`` rounds at rate ``q`` and split it (adaptive).

    Raises
    ------
    ValueError
        Naming the setting: fewer than one expected client, or (adaptive) a clipped-count
        noise too small to leave any noise for the updates (``2 sigma_b <= z``).

    """
    if clipping not in CLIPPINGS:
        raise ValueError(f"central_dp.mode must be one of {['none', *CLIPPINGS]}, got {clipping!r}")
    m = sample_rate * num_clients
    if m < 1:
        raise ValueError(
            f"federation.fraction_train={sample_rate:g} gives {m:.3g} expected clients a round "
            f"(federation.num_clients={num_clients}); central DP needs at least 1"
        )
    z = calibrated_noise("pld", target_epsilon, delta, sample_rate, rounds)  # searched once
    sigma_b = count_stddev_fraction * m if CLIPPINGS[clipping].noisy_count else 0.0
    z_u = z
    if sigma_b > 0:
        if 2 * sigma_b <= z:
            raise ValueError(
                f"central_dp.count_stddev_fraction={count_stddev_fraction:g} gives a clipped-"
                f"count noise std {sigma_b:.3g} ({count_stddev_fraction:g} x {m:.3g} expected "
                f"clients), but the calibrated noise multiplier {z:.3g} needs more than "
                f"{z / 2:.3g} (Andrew et al. 2021, Thm 1: 2 sigma_b > z); raise it, "
                "central_dp.target_epsilon or federation.fraction_train"
            )
        z_u = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
    return CentralPlan(clipping, z, z_u, sigma_b, sample_rate, m, rounds, target_epsilon, delta)


class ClipRule(Protocol):
    """How the clip norm evolves: :class:`FixedClip`, :class:`AdaptiveClip`."""

    noisy_count: bool
    clip: float
    """The clip norm of the coming round."""

    def observe(self, unclipped_fraction: float) -> None:
        """Move the clip after a round, from the noisy fraction of unclipped updates."""
        ...


@dataclass
class FixedClip:
    """A constant clip norm (DP-FedAvg, McMahan et al. 2018)."""

    clip: float
    noisy_count: bool = False

    def observe(self, unclipped_fraction: float) -> None:
        """Nothing moves."""


@dataclass
class AdaptiveClip:
    """Geometric quantile tracking of the update norms (Andrew et al. 2021, Eq. 3).

    ``C <- C exp(-lr (b_bar - quantile))``, where ``b_bar`` is the (noisy) fraction of updates
    whose norm was at most ``C``: too many under the clip shrink it, too few grow it.
    """

    clip: float
    quantile: float = 0.5
    lr: float = 0.2
    noisy_count: bool = True

    def observe(self, unclipped_fraction: float) -> None:
        """One geometric step towards the target quantile."""
        self.clip *= math.exp(-self.lr * (unclipped_fraction - self.quantile))


CLIPPINGS: dict[str, Any] = {"fixed": FixedClip, "adaptive": AdaptiveClip}
"""``central_dp.mode`` -> its :class:`ClipRule` class; a new rule registers here."""


class ClientLevelDp:
    """The server's client-level DP state: plan, clip rule, ledger; releases one round at a time.

    Parameters
    ----------
    plan : CentralPlan
        From :func:`plan_central`.
    rule : ClipRule
        The clip norm and how it moves.
    ledger : PrivacyLedger, optional
        Events already spent (a resumed run); a new one at ``plan.delta`` otherwise.
    noise : callable, optional
        ``noise(std, shape) -> array``; fresh secret-seeded hardened noise by default.

    """

    def __init__(
        self,
        plan: CentralPlan,
        rule: ClipRule,
        ledger: PrivacyLedger | None = None,
        noise: Callable[[float, tuple[int, ...]], np.ndarray] | None = None,
    ) -> None:
        self.plan = plan
        self.rule = rule
        self.ledger = ledger or PrivacyLedger(delta=plan.delta, accountant="pld")
        self._noise = noise or _secret_normal

    def epsilon(self) -> float:
        """The client-level epsilon spent so far (recomputed from the ledger)."""
        return self.ledger.epsilon()

    def guard(self, rnd: int) -> str:
        """Why round ``rnd`` may not be released (empty: it may)."""
        after = self.ledger.epsilon_if(self.plan.event(rnd))
        if after <= self.plan.target_epsilon:
            return ""
        return (
            f"client-level budget: round {rnd} would take epsilon from {self.epsilon():.4g} to "
            f"{after:.4g}, past central_dp.target_epsilon={self.plan.target_epsilon:g}"
        )

    def release(
        self, rnd: int, reference: Arrays, updates: Sequence[Arrays]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Round ``rnd``'s noisy model from the sampled clients' ``updates``.

        The event is recorded before the model is returned. Non-float arrays keep the
        reference's values. Returns the new weights (the reference's dtypes) and what the
        round used (``clip``, ``unclipped_fraction``: the noisy estimate, NaN for ``fixed``).
        """
        if reason := self.guard(rnd):
            raise RuntimeError(reason)
        plan, clip = self.plan, self.rule.clip
        total = {k: np.zeros(np.shape(v)) for k, v in reference.items() if _floating(v)}
        centred = 0.0
        for u in updates:
            clipped, norm = clip_update(u, clip)
            for k in total:
                total[k] += clipped[k]
            centred += (1.0 if norm <= clip else 0.0) - 0.5
        std = plan.update_noise_multiplier * clip
        new = {}
        for k, ref in reference.items():
            if k in total:
                noisy = total[k] + self._noise(std, tuple(np.shape(ref)))
                new[k] = (np.asarray(ref, np.float64) + noisy / plan.expected_clients).astype(
                    np.asarray(ref).dtype
                )
            else:
                new[k] = np.array(ref, copy=True)
        unclipped = math.nan
        if self.rule.noisy_count:
            noisy_count = centred + float(self._noise(plan.count_stddev, ())[()])
            unclipped = noisy_count / plan.expected_clients + 0.5
        self.ledger.record(plan.event(rnd))
        self.rule.observe(unclipped)
        return new, {"clip": clip, "unclipped_fraction": unclipped}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the ledger, the clip norm and the plan (for checkpoints)."""
        return {
            "ledger": self.ledger.to_dict(),
            "clip": self.rule.clip,
            "plan": self.plan.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        The stored plan is kept: a resumed run that raises ``federation.rounds`` does not
        re-plan the noise of the rounds already released; the guard stops at the budget.
        """
        self.ledger = PrivacyLedger.from_dict(dict(state["ledger"]))
        self.rule.clip = float(state["clip"])
        if "plan" in state:
            self.plan = CentralPlan(**state["plan"])

    def ledger_file(self) -> dict[str, Any]:
        """The server ledger's file content: the clients' format, plus the unit and plan."""
        return self.ledger.to_dict() | {"unit": "client", "plan": self.plan.to_dict()}


def _secret_normal(std: float, shape: tuple[int, ...]) -> np.ndarray:
    """Gaussian noise from a generator seeded from OS entropy, fresh for every draw.

    :func:`privacy.rng.hardened_normal`: the same floating-point hardening as DP-SGD's noise.
    """
    return hardened_normal(shape, std, make_generator(None, secure=True))


def server_ledger_epsilon(run_dir: Path) -> float | None:
    """The client-level epsilon recomputed from ``run_dir``'s server ledger (None: no file)."""
    path = run_dir / SERVER_LEDGER
    if not path.exists():
        return None
    return PrivacyLedger.from_dict(json.loads(path.read_text(encoding="utf-8"))).epsilon()
