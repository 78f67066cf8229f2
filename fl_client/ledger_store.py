"""Where a client keeps its privacy ledger between rounds and runs.

The ledger lives in a JSON file on the node's disk (:class:`privacy.ledger_file.LedgerFile`:
checked against its last known state, locked from the budget check through the save) and, as
a second copy, in Flower's per-node ``context.state``. The file wins; a node-state copy with
more events than the file means the file lost events, and the node refuses to train. Without
a directory (an in-process test) only node state is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from flwr.app import ConfigRecord, Context

from privacy import PrivacyLedger
from privacy.ledger_file import LedgerFile, LedgerLostError

STATE_KEY = "fedpriv"


class LedgerStore:
    """Load and save one client's :class:`privacy.PrivacyLedger`."""

    def __init__(
        self,
        context: Context,
        path: Path | None,
        delta: float,
        accountant: str,
        strict: bool = False,
    ):
        self._context = context
        self._delta = delta
        self._accountant = accountant
        self._file = LedgerFile(path, delta, accountant, strict) if path is not None else None

    @property
    def path(self) -> Path | None:
        """The ledger file on disk, if any."""
        return self._file.path if self._file is not None else None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The file's exclusive lock (nothing to lock without a file)."""
        if self._file is None:
            yield
            return
        with self._file.exclusive():
            yield

    def _state_copy(self) -> PrivacyLedger | None:
        record = self._context.state.config_records.get(STATE_KEY)
        if record is not None and "ledger" in record:
            return PrivacyLedger.from_json(str(record["ledger"]))
        return None

    def load(self) -> PrivacyLedger:
        """The ledger as last saved (a new, empty one on first use, unless strict).

        Raises
        ------
        privacy.ledger_file.LedgerLostError
            If the file is missing (strict) or has lost events against its last known state
            or against the node-state copy.
        """
        copy = self._state_copy()
        if self._file is None:
            return copy or PrivacyLedger(delta=self._delta, accountant=self._accountant)
        ledger = self._file.load()
        if copy is not None and len(copy.events) > len(ledger.events):
            raise LedgerLostError(
                f"the privacy ledger {self._file.path} has {len(ledger.events)} events but this "
                f"node released {len(copy.events)}; the node refuses to train"
            )
        return ledger

    def save(self, ledger: PrivacyLedger) -> None:
        """Persist to disk first (atomically, with its head), then to the node state."""
        if self._file is not None:
            self._file.save(ledger)
        record = self._context.state.config_records.get(STATE_KEY) or ConfigRecord()
        record["ledger"] = ledger.to_json()
        self._context.state.config_records[STATE_KEY] = record


def ledger_path(node_config: dict, output_dir: str, partition_id: int) -> Path | None:
    """Node config ``ledger-dir`` (deployment) or ``<output-dir>/ledgers`` (simulation)."""
    root = node_config.get("ledger-dir") or (Path(output_dir) / "ledgers" if output_dir else None)
    if not root:
        return None
    return Path(str(root)) / f"client-{partition_id}.json"
