"""Client-level DP in the ServerApp: Poisson sampling, the DP-FedAvg release, the server ledger.

The mathematics is :mod:`privacy.central`; this module connects it to the strategy
(:class:`fl_server.mixin.FedPrivMixin` calls :meth:`CentralDp.sample`,
:meth:`CentralDp.guard` and :meth:`CentralDp.aggregate`) and to the run directory
(``ledgers/server.json``, written atomically before a round's model is published, and the
checkpoint's strategy state).

Why not Flower's wrappers: ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` wrap a
whole strategy from the outside (they would clip replies before they are validated and replace
the resumable round loop), divide by the number of replies or a fixed integer sample size
rather than Poisson sampling's expected count, weight by example counts (client data at
client level), and in 1.42 the adaptive wrapper adds noise scaled to the clip *after* it has
moved, and moves it the wrong way (``norm_bit`` is true for a *clipped* update, fed where
Andrew et al. use the unclipped fraction: on norms U(1, 3) it falls from 0.1 to 0.0002 in 60
rounds). Their accountant claims no amplification and covers fixed clipping only.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import Message

from privacy.central import (
    CLIPPINGS,
    SERVER_LEDGER,
    ClientLevelDp,
    plan_central,
    poisson_sample,
)
from privacy.ledger import PrivacyLedger
from protocol.atomic import write_atomically
from protocol.checkpoint import CheckpointError
from protocol.settings import RunSettings

from .replies import ClientOutcome, RoundLog, Weights


def _rule(settings: RunSettings) -> Any:
    params = {
        "fixed": {"clip": settings.central_dp_clip},
        "adaptive": {
            "clip": settings.central_dp_initial_clip,
            "quantile": settings.central_dp_target_quantile,
            "lr": settings.central_dp_clip_lr,
        },
    }
    return CLIPPINGS[settings.central_dp_mode](**params[settings.central_dp_mode])


class CentralDp:
    """The server side of client-level DP for one run."""

    def __init__(self, dp: ClientLevelDp, out_dir: Path) -> None:
        self.dp = dp
        self.path = out_dir / SERVER_LEDGER
        self._sampler = secrets.SystemRandom()

    @classmethod
    def from_settings(cls, settings: RunSettings, out_dir: Path) -> CentralDp | None:
        """``None`` under ``central_dp.mode=none``; the calibrated plan otherwise."""
        if settings.central_dp_mode == "none":
            return None
        plan = plan_central(
            settings.central_dp_mode,
            settings.central_dp_target_epsilon,
            settings.central_dp_delta,
            settings.num_clients,
            settings.fraction_train,
            settings.num_rounds,
            settings.central_dp_count_stddev_fraction,
        )
        return cls(ClientLevelDp(plan, _rule(settings)), out_dir)

    def sample(self, nodes: Sequence[int]) -> list[int]:
        """Poisson sampling of the connected nodes at ``federation.fraction_train`` (secret)."""
        return poisson_sample(nodes, self.dp.plan.sample_rate, self._sampler)

    def guard(self, server_round: int) -> str:
        """Why the round may not run (the client-level budget); empty when it may."""
        return self.dp.guard(server_round)

    def aggregate(
        self,
        server_round: int,
        usable: list[tuple[ClientOutcome, Weights, Message]],
        reference: Weights,
        log: RoundLog,
    ) -> Weights:
        """The noisy model of the round; the ledger is saved before it is returned.

        Every usable update enters with weight 1 over the expected clients (the weights of
        ``aggregation`` are not used: example counts are client data at client level).
        """
        updates = [{k: w[k] - reference[k] for k in reference} for _, w, _ in usable]
        new, info = self.dp.release(server_round, reference, updates)
        for outcome, _, _ in usable:
            outcome.weight = 1.0 / self.dp.plan.expected_clients
        self.save()
        log.central = {
            "client_level_epsilon": self.dp.epsilon(),
            "clip_norm": info["clip"],
            "unclipped_fraction_dp": info["unclipped_fraction"],
        }
        return new

    def stopped(self, log: RoundLog, reason: str) -> None:
        """Record a round the budget guard refused (no release, no event)."""
        log.kept_reason = reason
        log.central = {"client_level_epsilon": self.dp.epsilon(), "clip_norm": self.dp.rule.clip}

    # ------------------------------------------------------------------ files and state
    def save(self) -> None:
        """Write ``ledgers/server.json`` atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(self.dp.ledger_file(), indent=2, sort_keys=True))

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's part: ledger and clip norm."""
        return self.dp.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore from a checkpoint; a server ledger file with more events wins.

        The file is written before a round's model is published and the checkpoint after, so
        after a crash in between the file holds one event more: that release happened.

        Raises
        ------
        CheckpointError
            If the checkpoint has no client-level state (a run started without central DP).
        """
        if state is None:
            raise CheckpointError(
                "resume: the checkpoint has no client-level ledger (the run was started with "
                "central_dp.mode=none), so client-level DP cannot be accounted from its start"
            )
        self.dp.load_state_dict(state)
        if self.path.exists():
            on_disk = PrivacyLedger.from_dict(json.loads(self.path.read_text()))
            if len(on_disk.events) > len(self.dp.ledger.events):
                self.dp.ledger = on_disk
        self.save()
