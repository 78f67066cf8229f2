"""Where a client keeps its privacy ledger between rounds.

The ledger lives in Flower's per-node ``context.state`` and, when a directory is configured,
in a JSON file on the node's disk that survives a restart of the node. The file wins when both
exist: a lost ledger would be budget spent twice.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context

from privacy import PrivacyLedger

STATE_KEY = "fedpriv"


class LedgerStore:
    """Load and save one client's :class:`privacy.PrivacyLedger`."""

    def __init__(self, context: Context, path: Path | None, delta: float, accountant: str):
        self._context = context
        self._path = path
        self._delta = delta
        self._accountant = accountant

    @property
    def path(self) -> Path | None:
        """The ledger file on disk, if any."""
        return self._path

    def load(self) -> PrivacyLedger:
        """The ledger as last saved (a new, empty one on first use)."""
        if self._path is not None and self._path.exists():
            return PrivacyLedger.load_or_new(self._path, self._delta, self._accountant)
        record = self._context.state.config_records.get(STATE_KEY)
        if record is not None and "ledger" in record:
            return PrivacyLedger.from_json(str(record["ledger"]))
        return PrivacyLedger(delta=self._delta, accountant=self._accountant)

    def save(self, ledger: PrivacyLedger) -> None:
        """Persist to disk first (atomically), then to the node state."""
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            ledger.save(self._path)
        record = self._context.state.config_records.get(STATE_KEY) or ConfigRecord()
        record["ledger"] = ledger.to_json()
        self._context.state.config_records[STATE_KEY] = record


def ledger_path(node_config: dict, output_dir: str, partition_id: int) -> Path | None:
    """Node config ``ledger-dir`` (deployment) or ``<output-dir>/ledgers`` (simulation)."""
    root = node_config.get("ledger-dir") or (Path(output_dir) / "ledgers" if output_dir else None)
    if not root:
        return None
    return Path(str(root)) / f"client-{partition_id}.json"
