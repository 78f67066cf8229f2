"""``python -m experiments.processes.fab_guard --approve HASH ... -- FLOWER-SUPEREXEC-ARGS``.

A node runs only an app its operator approved. Flower's SuperExec (the process beside a
SuperNode that starts a ClientApp process for each task) launches whatever app a run names,
and anyone who can submit a run chooses that app. This wrapper is Flower's own
``flower-superexec`` with one change, made outside the app's code: before a task is launched,
the FAB hash it names must be in the operator's list (``--approve``, repeatable). Anything else
is refused (logged; the ClientApp never starts, so the run gets no reply from this node).

The approved hash is the SHA-256 of the app's FAB, which Flower builds reproducibly (fixed
timestamps) from the app directory: ``python -m experiments.deploy fab-hash [APP_DIR]`` prints
it for this checkout, so an operator approves exactly the code it reviewed. Flower 1.42's
``--trusted-entities`` would verify FAB *signatures*, but its open-source SuperLink does not
supply them, hence this check by hash.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("fedpriv.fab_guard")

HASH = re.compile(r"[0-9a-f]{64}")


def fab_hash(app_dir: Path) -> str:
    """The hash Flower gives the FAB it builds from ``app_dir`` (what ``--approve`` takes)."""
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


def install(approved: Sequence[str]) -> None:
    """Patch Flower's SuperExec plugin so that it launches approved FABs only."""
    from flwr.supercore.superexec.executor.types import LaunchResult
    from flwr.supercore.superexec.plugin.base_exec_plugin import BaseExecPlugin

    allowed = frozenset(approved)
    original = BaseExecPlugin.launch_task

    def launch_task(self: BaseExecPlugin, token: str, task: object) -> LaunchResult:
        digest = str(getattr(task, "fab_hash", "") or "")
        if digest not in allowed:
            log.error(
                "refused task %s of run %s: its app (FAB %s) is not approved on this node",
                getattr(task, "task_id", "?"),
                getattr(task, "run_id", "?"),
                digest or "none",
            )
            return LaunchResult.failed(f"FAB {digest or 'none'} is not approved on this node")
        return original(self, token, task)  # type: ignore[arg-type]

    BaseExecPlugin.launch_task = launch_task  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``--approve HASH ... -- ARGS`` and run ``flower-superexec ARGS`` guarded."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        raise SystemExit(
            "usage: python -m experiments.processes.fab_guard --approve HASH ... -- ARGS"
        )
    cut = args.index("--")
    own, rest = args[:cut], args[cut + 1 :]
    approved = [own[i + 1] for i, a in enumerate(own) if a == "--approve" and i + 1 < len(own)]
    bad = [h for h in approved if not HASH.fullmatch(h)]
    if not approved or bad:
        raise SystemExit(
            f"--approve needs SHA-256 hashes (64 hex digits) of approved FABs, got {bad or own}"
        )
    logging.basicConfig(level=logging.INFO)
    install(approved)
    from flwr.supercore.cli.flower_superexec import flower_superexec

    sys.argv = ["flower-superexec", *rest]
    flower_superexec()


if __name__ == "__main__":
    main()
