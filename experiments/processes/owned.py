"""One long-running Flower process owned by PID, and the Flower settings it runs with.

:class:`OwnedProcess` (its own session, ``FLWR_HOME`` and log under a work directory, stopped
with its descendants) is the base of the SuperLink, SuperNode and proxy processes;
:class:`Tuning` holds the Flower settings that change a deployment's latency;
:func:`dial_address` turns a bind address into one to dial. Re-exported by
:mod:`experiments.processes.launcher`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from experiments.processes.procs import flower_env, stop_process_tree

__all__ = ["POLL_ENV", "OwnedProcess", "Tuning", "dial_address"]

POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
"""Flower's SuperExec (which starts ServerApp and ClientApp processes) polls for new tasks every
second by default; this environment variable sets the interval (0.01 .. 60 s)."""


@dataclass
class Tuning:
    """Flower settings that change a deployment's latency (see ``bench/deploy_latency.py``).

    Attributes
    ----------
    isolation
        ``subprocess`` (Flower's default: the SuperLink/SuperNode starts its own SuperExec) or
        ``process`` (we start ``flower-superexec`` beside it, as a separate process).
    task_poll_interval
        Seconds between the SuperExec's polls for new app tasks (``None``: Flower's 1 s).
    """

    isolation: str = "subprocess"
    task_poll_interval: float | None = None

    def env(self) -> dict[str, str]:
        """Extra environment for Flower processes."""
        if self.task_poll_interval is None:
            return {}
        return {POLL_ENV: str(self.task_poll_interval)}


def dial_address(host: str, port: int) -> str:
    """``host:port`` to dial a server bound to ``host`` (a wildcard bind is dialled on loopback)."""
    return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


class OwnedProcess:
    """One long-running process (plus any helper beside it, e.g. a SuperExec), owned by PID.

    Every process is started in its own session, with its own ``FLWR_HOME`` under ``workdir``
    and its log there, and stopped with its descendants (Flower's ``flower-superexec`` and the
    app processes) by :func:`stop_process_tree`.
    """

    name = "flower process"

    def __init__(
        self, workdir: Path, tuning: Tuning | None, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.tuning = tuning or Tuning()
        self.extra_env = dict(extra_env or {})
        self.flwr_home = workdir / ".flwr"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """The process environment (own ``FLWR_HOME``, tuning variables, ``extra_env``)."""
        return flower_env(self.flwr_home, {**self.tuning.env(), **self.extra_env})

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The main process (None before start)."""
        return self.procs[0] if self.procs else None

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115
        self._logs.append(log)
        proc = subprocess.Popen(
            args,
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Stop every process this object started, and their descendants, by PID."""
        for proc in reversed(self.procs):
            stop_process_tree(proc, grace=5)
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def kill(self) -> None:
        """SIGKILL the main process and its descendants at once (a crash, for tests)."""
        for proc in reversed(self.procs):
            stop_process_tree(proc, grace=0)
        self.procs.clear()

    def __enter__(self) -> OwnedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
