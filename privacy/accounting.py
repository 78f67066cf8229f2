"""Privacy accountants for DP-SGD's sampled Gaussian mechanism, in a registry.

The neighbouring relation
-------------------------
Every fedpriv guarantee is stated under **replace-one**: two datasets are neighbours when they
have the same number of records ``n`` and differ in one record. Replies publish ``n`` (the
example count the server weights by, the Poisson rate ``q = 1/ceil(n/B)`` and the number of
steps all follow from it), and under replace-one ``n`` is the same on both neighbours, so
publishing it costs nothing. Under add/remove-one, the relation most DP-SGD papers (and
Opacus' accountants) use, ``n`` itself differs between neighbours and sending it would break
the guarantee; that is why the add/remove accountants of Opacus (``rdp``, ``prv``) are not
offered, and Opacus' ``gdp`` (an asymptotic approximation that under-states epsilon) is
refused outright.

The accountant
--------------
``pld``: privacy loss distributions (Koskela, Jalko, Honkela 2020; Meiser and Mohammadi 2018;
Doroshenko, Ghazi, Kamath, Kumar, Manurangsi 2022, "Connect the dots: tighter discrete
approximations of privacy loss distributions") from google's ``dp_accounting``: the Poisson
subsampled Gaussian under ``NeighboringRelation.REPLACE_ONE``, composed over all steps, with the
*pessimistic* discretisation, so the epsilon it returns is an upper bound of the true one (never
an under-statement), and at value discretisation 1e-3 within 1e-5 relative of the 1e-4 one while
15 times faster. It is the tightest valid accountant available here (RDP is looser, and
dp_accounting's RDP does not support replace-one for Poisson sampling).

A new accountant registers itself with :func:`register_accountant`; nothing else names one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import dp_accounting as dpa
from dp_accounting.pld import pld_privacy_accountant

__all__ = [
    "ACCOUNTANTS",
    "NEIGHBOURING_RELATION",
    "Accountant",
    "History",
    "calibrate_noise",
    "check_accountant",
    "get_accountant",
    "register_accountant",
]

NEIGHBOURING_RELATION = "replace_one"
"""The relation of every guarantee: same ``n``, one record replaced (``n`` is public)."""

History = tuple[tuple[float, float, int], ...]
"""``((noise_multiplier, sample_rate, steps), ...)``: compositions of the sampled Gaussian."""


class Accountant(Protocol):
    """Composes sampled-Gaussian histories into an ``(epsilon, delta)`` guarantee."""

    @property
    def name(self) -> str:
        """Registry key (``privacy.accountant``)."""
        ...

    @property
    def relation(self) -> str:
        """The neighbouring relation its epsilon holds under."""
        ...

    def epsilon(self, history: History, delta: float) -> float:
        """Epsilon of the composed ``history`` at ``delta`` (an upper bound, never below)."""
        ...


ACCOUNTANTS: dict[str, Accountant] = {}

_REFUSED = {
    "gdp": (
        "Opacus' Gaussian-DP accountant is an asymptotic approximation that under-states "
        "epsilon (calibrated for 4 it gives 5.77 by PLD), so it is not a guarantee"
    ),
    "rdp": (
        "Opacus' RDP accountant assumes add/remove-one neighbours, but every reply publishes "
        "the example count n, so the guarantee is stated under replace-one (n public); "
        "'pld' is valid there and tighter"
    ),
    "prv": (
        "Opacus' PRV accountant assumes add/remove-one neighbours, but every reply publishes "
        "the example count n, so the guarantee is stated under replace-one (n public); "
        "'pld' is valid there"
    ),
}


def register_accountant(accountant: Accountant) -> Accountant:
    """Add ``accountant`` to :data:`ACCOUNTANTS` under its ``name``."""
    ACCOUNTANTS[accountant.name] = accountant
    return accountant


def check_accountant(name: str) -> None:
    """Raise ``ValueError`` naming ``privacy.accountant`` unless ``name`` is registered."""
    if name in ACCOUNTANTS:
        return
    if name in _REFUSED:
        raise ValueError(
            f"privacy.accountant={name!r} is refused: {_REFUSED[name]}; use one of "
            f"{sorted(ACCOUNTANTS)}"
        )
    raise ValueError(f"privacy.accountant must be one of {sorted(ACCOUNTANTS)}, got {name!r}")


def get_accountant(name: str) -> Accountant:
    """The registered accountant ``name`` (see :func:`check_accountant` for the errors)."""
    check_accountant(name)
    return ACCOUNTANTS[name]


@dataclass(frozen=True)
class PldAccountant:
    """dp_accounting's PLD accountant under replace-one, pessimistic (an upper bound).

    Attributes
    ----------
    value_discretization_interval : float
        The PLD's grid of privacy-loss values; the pessimistic rounding makes a coarser grid
        looser, never invalid.

    """

    name: str = "pld"
    relation: str = NEIGHBOURING_RELATION
    value_discretization_interval: float = 1e-3

    def epsilon(self, history: History, delta: float) -> float:
        """Epsilon of ``history`` at ``delta`` (0.0 for an empty history)."""
        return _pld_epsilon(self.value_discretization_interval, _canonical(history), delta)


def _canonical(history: History) -> History:
    """Merge equal ``(noise_multiplier, sample_rate)`` pairs (exact) and sort (memo key)."""
    merged: dict[tuple[float, float], int] = {}
    for nm, q, steps in history:
        if steps > 0:
            merged[(float(nm), float(q))] = merged.get((float(nm), float(q)), 0) + int(steps)
    return tuple(sorted((nm, q, s) for (nm, q), s in merged.items()))


@functools.lru_cache(maxsize=4096)
def _pld_epsilon(vdi: float, history: History, delta: float) -> float:
    if not history:
        return 0.0
    acc = pld_privacy_accountant.PLDAccountant(
        dpa.NeighboringRelation.REPLACE_ONE, value_discretization_interval=vdi
    )
    for nm, q, steps in history:
        event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(nm))
        acc.compose(dpa.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


register_accountant(PldAccountant())


@functools.lru_cache(maxsize=256)
def calibrate_noise(
    accountant: str,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    rel_tol: float = 0.01,
) -> float:
    """The smallest noise multiplier (to ``rel_tol``) whose epsilon is at most the target.

    Bisection on the noise multiplier, whose epsilon falls as it grows: the returned value's
    epsilon is in ``[target_epsilon * (1 - rel_tol), target_epsilon]``, checked by the same
    accountant that reports it, so calibration never lands above the target.

    Raises
    ------
    ValueError
        If the target cannot be met by any noise multiplier up to 2**20.

    """
    acc = get_accountant(accountant)

    def eps(sigma: float) -> float:
        return acc.epsilon(((sigma, sample_rate, steps),), delta)

    return _bisect_decreasing(eps, target_epsilon, rel_tol)


def _bisect_decreasing(eps: Callable[[float], float], target: float, rel_tol: float) -> float:
    hi = 1.0
    while eps(hi) > target:
        hi *= 2.0
        if hi > 2.0**20:
            raise ValueError(f"no noise multiplier up to 2**20 reaches epsilon {target:g}")
    lo = 0.0
    while eps(hi) < target * (1 - rel_tol) and hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2 if lo > 0 else hi / 2
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    if not math.isfinite(eps(hi)) or eps(hi) > target:
        raise ValueError(f"calibration failed: epsilon {eps(hi)} > target {target}")
    return hi
