"""The node's own privacy policy: set when the SuperNode starts, it outranks the run config.

The server writes the run config, so a node cannot take its privacy from it. A deployment node
(``data-path`` in its node config) reads its policy from its **node config**, which only its
operator sets (``experiments.deploy supernode --max-epsilon ... --privacy-modes ...``):

``ledger-dir``        where the ledger lies (required with ``data-path``); created at set-up
``max-epsilon``       the most epsilon this data may spend over **all** runs (required)
``privacy-modes``     the modes it may train under, comma-separated (default ``dpsgd,functional``:
                      DP modes only)
``allow-evaluation``  whether federated evaluation on its validation data is allowed (default
                      false)
``accountant``        the accountant its ledger uses (default ``pld``)
``max-delta``         the largest ``privacy.delta`` it trains under (optional; ``0 < x < 1``)

and checks the delta rule (``privacy.delta < 1/n``) against its **own** record count. A run
that asks for anything else is declined with the reason; the node never trains under it.
A simulated node (no ``data-path``) belongs to the experimenter who also runs the server: its
policy is the run's.

The guarantee a node can state is ``(max-epsilon, delta)`` over all runs on its data, with
``delta`` the largest ``privacy.delta`` of any run that spent it. The ledger's epsilon at a run's
delta is checked against the budget, and epsilon is non-increasing in delta, so a server that
raises ``privacy.delta`` lowers the epsilon the ledger reports and can release more.
``max-delta`` closes that: every run is then at or under it, so the ledger's epsilon at
``max-delta`` is at most its epsilon at the run's delta, at most ``max-epsilon``, and the node's
guarantee is ``(max-epsilon, max-delta)`` whatever the server sends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from privacy import MODES
from protocol.settings import RunSettings


def private_modes() -> tuple[str, ...]:
    """The modes a node allows unless its operator says otherwise: every private mode.

    Private: its releases are DP (:attr:`privacy.PrivacyMode.private`), so ``none`` is out.
    """
    return tuple(sorted(name for name, mode in MODES.items() if mode.private))


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in {"true", "false"}:
        return str(value).lower() == "true"
    raise ValueError(f"node config {key} must be true or false, got {value!r}")


def _max_delta(node: Mapping[str, Any]) -> float:
    if "max-delta" not in node:
        return 1.0
    try:
        cap = float(node["max-delta"])
    except (TypeError, ValueError):
        cap = math.nan
    if not 0 < cap < 1:
        raise ValueError(f"node config max-delta must be in (0, 1), got {node['max-delta']!r}")
    return cap


@dataclass(frozen=True)
class NodePolicy:
    """What a node allows, whatever the run config says (see the module docstring)."""

    max_epsilon: float = math.inf
    modes: tuple[str, ...] = dataclasses.field(default_factory=private_modes)
    allow_evaluation: bool = False
    accountant: str = "pld"
    max_delta: float = 1.0
    """The largest ``privacy.delta`` allowed (1: no cap beyond ``delta < 1/n``)."""
    strict_ledger: bool = False
    """A deployment node's ledger must exist (created at set-up) and never shrink."""
    owned: bool = False
    """True for a deployment node; a simulated node follows the run."""

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> NodePolicy:
        """The policy of a node from its node config (``ValueError`` naming a bad key)."""
        if not node.get("data-path"):
            return cls(modes=(), allow_evaluation=True)  # simulated: the run decides
        if not node.get("ledger-dir"):
            raise ValueError("node config ledger-dir is required with data-path")
        if "max-epsilon" not in node:
            raise ValueError(
                "node config max-epsilon is required with data-path: the most epsilon this "
                "data may spend over all runs"
            )
        try:
            cap = float(node["max-epsilon"])
        except (TypeError, ValueError):
            cap = math.nan
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"node config max-epsilon must be > 0, got {node['max-epsilon']!r}")
        modes = tuple(
            m.strip()
            for m in str(node.get("privacy-modes", ",".join(private_modes()))).split(",")
            if m.strip()
        )
        return cls(
            max_epsilon=cap,
            max_delta=_max_delta(node),
            modes=modes,
            allow_evaluation=_bool(node.get("allow-evaluation", False), "allow-evaluation"),
            accountant=str(node.get("accountant", "pld")),
            strict_ledger=True,
            owned=True,
        )

    def budget(self, settings: RunSettings) -> float:
        """The epsilon the ledger may reach in this run: the run's target, capped by the node."""
        return min(settings.privacy_target_epsilon, self.max_epsilon)

    def refuse_train(self, settings: RunSettings, n_train: int) -> str:
        """A reason to decline a train message, or ``""``; public facts only (no data)."""
        if not self.owned:
            return ""
        mode = settings.privacy_mode
        if settings.privacy_reproducible_noise:
            return (
                "declined: node policy never derives noise from the run's seed "
                "(privacy.reproducible_noise=true gives no guarantee against the server)"
            )
        if mode not in self.modes:
            return (
                f"declined: node policy allows privacy.mode in {list(self.modes)}, the run asks "
                f"for {mode!r}"
            )
        if settings.privacy_target_epsilon > self.max_epsilon:
            return (
                f"declined: node policy caps epsilon at {self.max_epsilon:g} over all runs; the "
                f"run asks for privacy.target_epsilon={settings.privacy_target_epsilon:g}"
            )
        if settings.privacy_accountant != self.accountant:
            return (
                f"declined: node policy accounts with {self.accountant!r}; the run asks for "
                f"privacy.accountant={settings.privacy_accountant!r}"
            )
        spends_delta = mode in MODES and MODES[mode].delta_spent(settings)
        if spends_delta and settings.privacy_delta > self.max_delta:
            return (
                f"declined: node policy caps delta at {self.max_delta:g}; the run asks for "
                f"privacy.delta={settings.privacy_delta:g}"
            )
        if spends_delta and settings.privacy_delta * n_train >= 1:
            return (
                f"declined: privacy.delta={settings.privacy_delta:g} is not below 1/n for this "
                "node's data"
            )
        return ""

    def refuse_evaluate(self, settings: RunSettings) -> str:
        """A reason to decline an evaluate message, or ``""``."""
        if self.owned and not self.allow_evaluation:
            return "declined: node policy does not allow federated evaluation"
        if self.owned and settings.privacy_mode not in self.modes:
            return f"declined: node policy does not allow privacy.mode={settings.privacy_mode!r}"
        return ""
