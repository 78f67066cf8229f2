"""Test-only: turn the ClientApp of the SuperNode this directory is on ``PYTHONPATH`` of hostile.

Python imports ``sitecustomize`` at the start of every interpreter, so a SuperNode started
with ``PYTHONPATH=tests/e2e/hostile:<repo>`` and ``FEDPRIV_HOSTILE=1`` runs this in itself, in
its ``flower-superexec`` and in every ``flwr-clientapp`` process (they inherit the
environment). Nothing in the production code changes, and every node runs the same FAB.

With ``FEDPRIV_HOSTILE=1``, a :data:`sys.meta_path` finder waits for the import of
``fl_client.app`` (from the FAB directory Flower puts first on ``sys.path``, or from the
repository: the name is what counts) and, once the module has run, wraps its ``train_reply``,
so that what ``train`` returns is tampered with, one attack per server round (:data:`ATTACKS`):

1. ``num-examples`` = inf
2. ``partition-id`` = 0 (another node's) and ``epsilon`` = NaN
3. the weights multiplied by 1e30
4. ``num-examples`` = 10**12, with the honestly trained weights

Later rounds are honest. Each tampered reply is noted in ``$FEDPRIV_HOSTILE_LOG`` (one line,
``round <r>: <attack>``) or on stderr. Anything that goes wrong here is reported on stderr and
leaves the process, and the reply, as they were: this file never crashes a process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

TARGET = "fl_client.app"
ENV = "FEDPRIV_HOSTILE"
LOG_ENV = "FEDPRIV_HOSTILE_LOG"


def _note(text: str) -> None:
    line = f"fedpriv-hostile[{os.getpid()}] {time.strftime('%H:%M:%S')} {text}\n"
    path = os.environ.get(LOG_ENV)
    try:
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
        else:
            sys.stderr.write(line)
    except Exception:  # noqa: BLE001 - a note must never break the process
        pass


# ------------------------------------------------------------------ the attacks
def _metrics(reply: Any) -> Any:
    return reply.content.metric_records["metrics"]


def _infinite_count(reply: Any) -> str:
    _metrics(reply)["num-examples"] = math.inf
    return "num-examples=inf"


def _stolen_id_nan_epsilon(reply: Any) -> str:
    metrics = _metrics(reply)
    metrics["partition-id"] = 0
    metrics["epsilon"] = math.nan
    return "partition-id=0 epsilon=nan"


def _huge_update(reply: Any) -> str:
    from protocol.records import from_record, to_record  # the FAB's own, imported by now

    weights = from_record(reply.content.array_records["arrays"])
    reply.content.array_records["arrays"] = to_record(
        {
            name: (w * 1e30).astype(w.dtype) if w.dtype.kind == "f" else w
            for name, w in weights.items()
        }
    )
    return "weights*1e30"


def _huge_count(reply: Any) -> str:
    _metrics(reply)["num-examples"] = 10**12
    return "num-examples=10**12"


ATTACKS: dict[int, Callable[[Any], str]] = {
    1: _infinite_count,
    2: _stolen_id_nan_epsilon,
    3: _huge_update,
    4: _huge_count,
}
"""Server round -> the tampering of that round's train reply."""


def _hostile(train_reply: Callable[..., Any]) -> Callable[..., Any]:
    def hostile_train_reply(msg: Any, *args: Any, **kwargs: Any) -> Any:
        reply = train_reply(msg, *args, **kwargs)
        try:
            server_round = int(msg.content.config_records["config"]["server-round"])
            attack = ATTACKS.get(server_round)
            if attack is None:
                _note(f"round {server_round}: honest")
            elif "arrays" not in reply.content.array_records:
                _note(f"round {server_round}: no weights (declined?), left as it is")
            else:
                _note(f"round {server_round}: {attack(reply)}")
        except Exception as err:  # noqa: BLE001 - the hook must never break the ClientApp
            _note(f"tampering failed ({type(err).__name__}: {err}); reply left as it is")
        return reply

    hostile_train_reply.__wrapped__ = train_reply  # type: ignore[attr-defined]
    return hostile_train_reply


def _patch(module: Any) -> None:
    try:
        module.train_reply = _hostile(module.train_reply)
        _note(f"{TARGET} from {getattr(module, '__file__', '?')} is hostile")
    except Exception as err:  # noqa: BLE001
        _note(f"could not patch {TARGET} ({type(err).__name__}: {err})")


# ------------------------------------------------------------------ the import hook
class _PatchingLoader(importlib.abc.Loader):
    """The real loader of ``fl_client.app``, then :func:`_patch` on the executed module."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)  # its own errors propagate, as without the hook
        _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real one
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders find for ``fl_client.app``."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _PatchingLoader(spec.loader)
                    return spec
        except Exception as err:  # noqa: BLE001 - fall back to the normal import
            _note(f"import hook failed ({type(err).__name__}: {err})")
        return None


def _install() -> None:
    if os.environ.get(ENV) != "1":
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


try:
    _install()
except Exception:  # noqa: BLE001 - sitecustomize must never stop an interpreter
    pass
