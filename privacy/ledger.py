"""Per-client ledger of privacy events over a whole federated run.

The ledger records every differentially private release a client makes (DP-SGD training
sessions, pure-DP releases), composes them into one ``(epsilon, delta)`` guarantee, and is
saved/loaded as JSON so the budget survives restarts. The design follows the composed events
of Google's ``dp_accounting`` and the ``history`` of Opacus' accountants.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from privacy.accounting import NEIGHBOURING_RELATION, check_accountant, get_accountant
from protocol.atomic import write_atomically

__all__ = ["Event", "PrivacyLedger", "PureDpEvent", "SampledGaussianEvent", "write_atomically"]

LEDGER_VERSION = 2
"""2: replace-one relation, dp_accounting PLD (1: Opacus accountants, add/remove-one)."""


def _check_round(rnd: int) -> None:
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        raise ValueError(f"event.round must be a non-negative int, got {rnd!r}")


@dataclass(frozen=True)
class SampledGaussianEvent:
    """One DP-SGD training session: ``steps`` applications of the sampled Gaussian mechanism.

    Each step Poisson-samples the data with rate ``sample_rate``, clips per-example gradients
    and adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` (DP-SGD, Abadi et al.
    2016, "Deep Learning with Differential Privacy"). Its Renyi DP is that of the sampled
    Gaussian mechanism (Mironov 2017, "Renyi Differential Privacy"; Mironov, Talwar, Zhang
    2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism").

    Attributes
    ----------
    noise_multiplier : float
        Noise std divided by the clipping norm; must be > 0.
    sample_rate : float
        Poisson sampling probability, in (0, 1].
    steps : int
        Number of noisy optimizer steps, >= 0.
    round : int
        Federated round the session happened in (metadata only).

    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    round: int = 0
    kind: ClassVar[str] = "sampled_gaussian"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"event.noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"event.sample_rate must be in (0, 1], got {self.sample_rate}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"event.steps must be a non-negative int, got {self.steps!r}")
        _check_round(self.round)


@dataclass(frozen=True)
class PureDpEvent:
    """An ``epsilon``-DP release (``delta = 0``), e.g. the functional mechanism's Laplace noise.

    Composes additively with everything else by basic composition (Dwork & Roth 2014,
    "The Algorithmic Foundations of Differential Privacy", Thm 3.16).

    Attributes
    ----------
    epsilon : float
        Privacy parameter of the release, >= 0.
    round : int
        Federated round the release happened in (metadata only).
    mechanism : str
        What was released (``functional``: the noisy objective; ``evaluation``: a noisy
        validation statistic); metadata for the results tables.

    """

    epsilon: float
    round: int = 0
    mechanism: str = ""
    kind: ClassVar[str] = "pure_dp"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"event.epsilon must be >= 0, got {self.epsilon}")
        _check_round(self.round)


Event: TypeAlias = SampledGaussianEvent | PureDpEvent

_EVENT_TYPES: dict[str, type[SampledGaussianEvent] | type[PureDpEvent]] = {
    SampledGaussianEvent.kind: SampledGaussianEvent,
    PureDpEvent.kind: PureDpEvent,
}


_check_accountant = check_accountant


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"privacy.delta must be in (0, 1), got {delta}")


class PrivacyLedger:
    """Privacy events of one client over a run, composed into one ``(epsilon, delta)``.

    Composition
    -----------
    * Sampled-Gaussian events are composed by a registered accountant
      (:mod:`privacy.accounting`; default ``pld``: dp_accounting's privacy loss distribution of
      the Poisson subsampled Gaussian under replace-one, pessimistic, so an upper bound).
      Events with identical ``(noise_multiplier, sample_rate)`` are merged by summing steps
      (composition of the same mechanism, so exact), which keeps the history short and
      makes a plan's calibration reproduce exactly.
    * Pure-DP events add their epsilon on top: composing an ``eps``-DP mechanism with an
      ``(eps', delta)``-DP one is ``(eps + eps', delta)``-DP (basic composition, Dwork &
      Roth 2014 Thm 3.16).

    Parameters
    ----------
    delta : float
        Target delta, in (0, 1).
    accountant : str, default "pld"
        Name of a registered accountant (:data:`privacy.accounting.ACCOUNTANTS`).
    events : iterable of Event, default ()
        Events already spent.

    """

    def __init__(self, delta: float, accountant: str = "pld", events: Iterable[Event] = ()) -> None:
        _check_delta(delta)
        _check_accountant(accountant)
        self._delta = float(delta)
        self._accountant = accountant
        self._events: list[Event] = []
        for e in events:
            self.record(e)

    @property
    def delta(self) -> float:
        """Target delta of the guarantee."""
        return self._delta

    @property
    def accountant(self) -> str:
        """Name of the accountant used for sampled-Gaussian events."""
        return self._accountant

    @property
    def events(self) -> tuple[Event, ...]:
        """Recorded events, in order."""
        return tuple(self._events)

    def record(self, event: Event) -> None:
        """Append ``event`` to the ledger."""
        if not isinstance(event, (SampledGaussianEvent, PureDpEvent)):
            raise TypeError(
                f"ledger events must be SampledGaussianEvent or PureDpEvent, "
                f"got {type(event).__name__}"
            )
        self._events.append(event)

    def epsilon(self) -> float:
        """Cumulative epsilon of all recorded events at ``self.delta`` (0.0 if none)."""
        return self._compose(self._events)

    def epsilon_if(self, event: Event) -> float:
        """Cumulative epsilon if ``event`` were recorded next (the ledger is not changed)."""
        return self._compose([*self._events, event])

    def _compose(self, events: Iterable[Event]) -> float:
        merged: dict[tuple[float, float], int] = {}
        pure = 0.0
        for e in events:
            if isinstance(e, PureDpEvent):
                pure += e.epsilon
            elif e.steps > 0:
                key = (e.noise_multiplier, e.sample_rate)
                merged[key] = merged.get(key, 0) + e.steps
        if not merged:
            return pure
        history = tuple(sorted((nm, q, steps) for (nm, q), steps in merged.items()))
        return get_accountant(self._accountant).epsilon(history, self._delta) + pure

    @property
    def relation(self) -> str:
        """The neighbouring relation of the guarantee (``replace_one``: ``n`` is public)."""
        return NEIGHBOURING_RELATION

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form: ``{"version", "accountant", "delta", "events": [...]}``."""
        return {
            "version": LEDGER_VERSION,
            "accountant": self._accountant,
            "neighbouring": NEIGHBOURING_RELATION,
            "delta": self._delta,
            "events": [{"kind": e.kind, **asdict(e)} for e in self._events],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrivacyLedger:
        """Inverse of :meth:`to_dict`; event types are dispatched on their ``kind``."""
        version = d.get("version")
        if version == 1:
            raise ValueError(
                "ledger.version is 1: written by a fedpriv whose accountants assumed "
                "add/remove-one neighbours while replies published the example count; its "
                "spend cannot be re-stated under replace-one. Keep the file as a record and "
                "start a new ledger only if that budget is accounted for elsewhere"
            )
        if version != LEDGER_VERSION:
            raise ValueError(f"ledger.version must be {LEDGER_VERSION}, got {version!r}")
        relation = d.get("neighbouring", NEIGHBOURING_RELATION)
        if relation != NEIGHBOURING_RELATION:
            raise ValueError(
                f"ledger.neighbouring must be {NEIGHBOURING_RELATION!r}, got {relation!r}"
            )
        events: list[Event] = []
        for raw in d.get("events", []):
            fields = dict(raw)
            kind = fields.pop("kind", None)
            if kind not in _EVENT_TYPES:
                raise ValueError(
                    f"ledger event kind must be one of {sorted(_EVENT_TYPES)}, got {kind!r}"
                )
            events.append(_EVENT_TYPES[kind](**fields))
        return cls(delta=d["delta"], accountant=d["accountant"], events=events)

    def to_json(self) -> str:
        """JSON form of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> PrivacyLedger:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(s))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomically write the ledger to ``path`` (:func:`write_atomically`)."""
        write_atomically(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Read a ledger written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def load_or_new(
        cls, path: str | os.PathLike[str], delta: float, accountant: str
    ) -> PrivacyLedger:
        """Load the ledger at ``path`` if it exists, else return a new empty one.

        Raises
        ------
        ValueError
            If the stored ledger's delta or accountant differ from the requested ones
            (spending a budget under a different delta/accountant would be meaningless).

        """
        if not Path(path).exists():
            return cls(delta=delta, accountant=accountant)
        ledger = cls.load(path)
        if ledger.delta != delta:
            raise ValueError(
                f"privacy.delta is {delta} but the ledger at {os.fspath(path)} was "
                f"written with delta {ledger.delta}"
            )
        if ledger.accountant != accountant:
            raise ValueError(
                f"privacy.accountant is {accountant!r} but the ledger at {os.fspath(path)} "
                f"was written with accountant {ledger.accountant!r}"
            )
        return ledger

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(delta={self._delta}, accountant={self._accountant!r}, "
            f"events={len(self._events)})"
        )
