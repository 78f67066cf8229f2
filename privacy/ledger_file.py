"""A node's privacy ledger on disk: it cannot be lost silently, and it cannot be raced.

A lost ledger is budget spent twice. :class:`LedgerFile` keeps, beside ``client-N.json``:

``client-N.head.json``  the last known state: the number of events and the SHA-256 of their
                        canonical JSON, rewritten (atomically) after every save
``client-N.lock``       an exclusive ``flock`` held from the budget check through the save

In **strict** mode (a deployment node: ``ledger-dir`` in its node config) the ledger must have
been created when the node was set up (:func:`init_ledger`, ``python -m experiments.deploy
init-ledger``): a missing ledger, a ledger with fewer events than its last known state, or
one whose first events no longer hash to the recorded head is refused
(:class:`LedgerLostError`) until the operator re-initialises it on purpose. Without strict mode
(simulation: the experimenter holds every node) a missing ledger starts empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from privacy.ledger import PrivacyLedger
from protocol.atomic import write_atomically

__all__ = ["LedgerFile", "LedgerLostError", "init_ledger"]


class LedgerLostError(RuntimeError):
    """The ledger is missing or shorter than it was: the node refuses to release anything."""


def _digest(ledger: PrivacyLedger, count: int) -> str:
    events = ledger.to_dict()["events"][:count]
    return hashlib.sha256(json.dumps(events, sort_keys=True).encode()).hexdigest()


class LedgerFile:
    """One ledger file with its head and lock (see the module docstring).

    Parameters
    ----------
    path : Path
        ``<ledger-dir>/client-<id>.json``.
    delta, accountant : float, str
        Of the run; a stored ledger written under others is refused
        (:meth:`privacy.PrivacyLedger.load_or_new`).
    strict : bool
        Refuse a missing ledger (deployment nodes).

    """

    def __init__(self, path: Path, delta: float, accountant: str, strict: bool = False) -> None:
        self.path = Path(path)
        self.delta = delta
        self.accountant = accountant
        self.strict = strict

    @property
    def head_path(self) -> Path:
        """Where the last known state is kept."""
        return self.path.with_name(self.path.stem + ".head.json")

    @property
    def lock_path(self) -> Path:
        """The lock file (never deleted)."""
        return self.path.with_name(self.path.stem + ".lock")

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold an exclusive lock on this ledger (blocks until any other holder is done)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def load(self) -> PrivacyLedger:
        """The ledger, checked against its last known state.

        Raises
        ------
        LedgerLostError
            In strict mode if the file is missing; always if it has fewer events than its
            head records, or its recorded events were changed.
        """
        head = self._head()
        if not self.path.exists():
            if self.strict or head is not None:
                raise LedgerLostError(
                    f"the privacy ledger {self.path} is missing"
                    + (f" (it had {head['events']} events)" if head else "")
                    + "; the node refuses to train until its operator re-initialises it on "
                    "purpose (python -m experiments.deploy init-ledger --force)"
                )
            return PrivacyLedger(delta=self.delta, accountant=self.accountant)
        ledger = PrivacyLedger.load_or_new(self.path, self.delta, self.accountant)
        if head is not None:
            known = int(head["events"])
            if len(ledger.events) < known:
                raise LedgerLostError(
                    f"the privacy ledger {self.path} has {len(ledger.events)} events, fewer "
                    f"than its last known state ({known}); events were deleted. The node "
                    "refuses to train until its operator re-initialises it on purpose"
                )
            if _digest(ledger, known) != head["sha256"]:
                raise LedgerLostError(
                    f"the privacy ledger {self.path} no longer matches its last known state "
                    "(its recorded events were changed); the node refuses to train"
                )
        return ledger

    def save(self, ledger: PrivacyLedger) -> None:
        """Write the ledger, then its head (both atomically)."""
        ledger.save(self.path)
        head = {"events": len(ledger.events), "sha256": _digest(ledger, len(ledger.events))}
        write_atomically(self.head_path, json.dumps(head, sort_keys=True))

    def _head(self) -> dict | None:
        if not self.head_path.exists():
            return None
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
            int(head["events"]), str(head["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LedgerLostError(
                f"the ledger's last known state {self.head_path} is unreadable ({err})"
            ) from None
        return dict(head)


def init_ledger(
    ledger_dir: Path,
    client_id: int,
    delta: float = 1e-5,
    accountant: str = "pld",
    force: bool = False,
) -> Path:
    """Create an empty ledger for a node's dataset (node set-up), or re-initialise one.

    Raises
    ------
    FileExistsError
        If a ledger or its head exists and ``force`` is not given: re-initialising forgets
        the budget that data has already spent.
    """
    path = Path(ledger_dir) / f"client-{client_id}.json"
    store = LedgerFile(path, delta, accountant)
    if (path.exists() or store.head_path.exists()) and not force:
        raise FileExistsError(
            f"{path} already exists; re-initialising forgets the epsilon this data has "
            "already spent (pass --force only if that spending is accounted for elsewhere)"
        )
    with store.exclusive():
        store.path.unlink(missing_ok=True)
        store.head_path.unlink(missing_ok=True)
        store.save(PrivacyLedger(delta=delta, accountant=accountant))
    return path
