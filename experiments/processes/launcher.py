"""Start, watch and stop Flower processes by PID; drive them with the ``flwr`` CLI.

The pieces every other module here builds on: free loopback ports, waiting for a port,
stopping a process with all its descendants, each process's own ``FLWR_HOME`` and environment
(:func:`flower_env`; these live in :mod:`experiments.processes.procs`), :class:`Tuning` and
:class:`OwnedProcess` (one long-running process and its log, owned by PID; these live in
:mod:`experiments.processes.owned`), all re-exported here, and :class:`FlowerCli` (submit,
follow and stop runs with ``flwr``; it submits a slim copy of the app,
:func:`~experiments.processes.procs.stage_app`).

:class:`LocalSimulation` runs the apps on Flower's simulation engine. ``flwr run`` with the
default local connection leaves a detached SuperLink behind and may ``uv sync`` the app's
dependencies; this class instead starts its own ``flower-superlink --simulation`` on a free
loopback port with its own ``FLWR_HOME``, submits the run with ``flwr run``, follows it with
``flwr ls`` (``flwr run`` exits 0 even when the ServerApp fails), and stops every process it
started (the SuperLink and all its descendants, Ray included) on success, error and Ctrl-C.
Given a running SuperLink's address instead (a sweep's,
:class:`~experiments.processes.procs.SimulationSuperLink`), it submits there and stops nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from experiments.processes.owned import POLL_ENV, OwnedProcess, Tuning, dial_address
from experiments.processes.procs import (
    FAB_STAGE,
    REPO,
    SimulationSuperLink,
    bin_path,
    fab_patterns,
    flower_env,
    free_port,
    processes_in_home,
    stage_app,
    start_simulation_superlink,
    stop_process_tree,
    wait_for_port,
)

__all__ = [
    "COMPLETED",
    "SIMULATION_EXIT_WAIT",
    "CONNECTION",
    "FAB_STAGE",
    "POLL_ENV",
    "REPO",
    "FlowerCli",
    "LocalSimulation",
    "OwnedProcess",
    "RunStatus",
    "SimulationSuperLink",
    "Tuning",
    "bin_path",
    "dial_address",
    "fab_patterns",
    "flower_env",
    "free_port",
    "processes_in_home",
    "stage_app",
    "start_simulation_superlink",
    "stop_process_tree",
    "wait_for_port",
    "wait_for_simulations",
]

CONNECTION = "fedpriv"


COMPLETED = "finished:completed"


@dataclass
class RunStatus:
    """A run's status as ``flwr ls`` reports it, e.g. ``finished:completed``."""

    text: str
    details: str = ""

    @property
    def finished(self) -> bool:
        """True once the run ended, however it ended."""
        return self.text.startswith("finished")

    @property
    def completed(self) -> bool:
        """True only for a run that finished without error."""
        return self.text == COMPLETED


class FlowerCli:
    """A SuperLink connection driven with the ``flwr`` CLI: submit, status, follow, stop.

    Parameters
    ----------
    workdir
        Holds ``FLWR_HOME`` (the connection config) and the run's log.
    proc
        The SuperLink process when this process owns it (checked while following a run).
    """

    def __init__(self, workdir: Path, app_dir: Path = REPO) -> None:
        self.workdir = workdir
        self.flwr_home = workdir / ".flwr"
        self.app_dir = app_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.superlink_pid: int | None = None
        """A SuperLink another object owns (a sweep's), watched while following a run."""

    def write_connection(
        self, address: str, root_certificates: Path | None = None, insecure: bool = False
    ) -> None:
        """Write ``FLWR_HOME/config.toml`` with one connection, the default, named ``fedpriv``."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = [
            f'[superlink]\ndefault = "{CONNECTION}"\n',
            f"[superlink.{CONNECTION}]",
            f'address = "{address}"',
        ]
        if insecure:
            lines.append("insecure = true")
        if root_certificates is not None:
            lines.append(f'root-certificates = "{Path(root_certificates).resolve()}"')
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def federation_config(self) -> str:
        """``flwr run --federation-config`` value ("" for none)."""
        return ""

    def __enter__(self) -> FlowerCli:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def env(self) -> dict[str, str]:
        """Environment for every Flower process: own home, no telemetry, no ``uv sync``."""
        return flower_env(self.flwr_home)

    # ------------------------------------------------------------------ runs
    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``flwr ARGS`` against this connection; the completed process (never raises)."""
        return self._flwr(*args, timeout=timeout)

    def _flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [bin_path("flwr"), *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def submit(self, run_config: Mapping[str, Any]) -> int:
        """Start the app with ``run_config``; returns the run id."""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        federation = self.federation_config()
        app = stage_app(self.app_dir, self.workdir / FAB_STAGE)
        res = self._flwr(
            "run",
            str(app),
            CONNECTION,
            "--run-config",
            overrides,
            *(["--federation-config", federation] if federation else []),
            "--format",
            "json",
        )
        try:
            payload = json.loads(res.stdout[res.stdout.index("{") :])
            return int(payload["run-id"])
        except (ValueError, KeyError, TypeError) as err:
            raise RuntimeError(f"flwr run failed:\n{res.stdout}\n{res.stderr}") from err

    def status(self, run_id: int) -> RunStatus:
        """The run's status from ``flwr ls`` (the exit code of ``flwr run`` tells nothing)."""
        res = self._flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            payload = json.loads(res.stdout[res.stdout.index("{") :])
            run = payload["runs"][0]
            return RunStatus(str(run["status"]), str(run.get("status-details", "")))
        except (ValueError, KeyError, IndexError) as err:
            raise RuntimeError(f"flwr ls failed:\n{res.stdout}\n{res.stderr}") from err

    def stop(self, run_id: int) -> None:
        """Ask the SuperLink to stop a run (best effort)."""
        self._flwr("stop", str(run_id), CONNECTION, timeout=30)

    def follow(
        self,
        run_id: int,
        on_tick: Callable[[], None] = lambda: None,
        poll: float = 0.5,
        timeout: float | None = None,
        status_every: float = 20.0,
        completed: Callable[[], bool] | None = None,
    ) -> RunStatus:
        """Wait until the run finishes, calling ``on_tick`` every ``poll`` s; stop it on Ctrl-C.

        The status comes from ``flwr ls``, a new Python process each time (about a CPU-second
        here), so it is asked when ``flwr log --stream`` ends (it does when the run does) and
        otherwise only every ``status_every`` seconds: polling it every 2 s took a sizeable
        share of a 2-core machine from the clients' training.

        ``completed``: the app's own completion mark (fedpriv's ServerApp writes
        ``summary.json`` last). Once it returns true the run is reported completed at once
        (``details`` says so) rather than after Flower has shut the simulation down, its log
        stream has noticed and ``flwr ls`` has answered (5-10 s here); a run Flower ends
        otherwise is still reported as Flower reports it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        logs = subprocess.Popen(
            [bin_path("flwr"), "log", str(run_id), CONNECTION, "--stream"],
            env=self.env,
            cwd=self.workdir,
            stdout=open(self.workdir / "run.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            asked = -math.inf
            while True:
                on_tick()
                if completed is not None and completed():
                    on_tick()
                    return RunStatus(COMPLETED, "the app wrote its completion mark")
                if logs.poll() is not None or time.monotonic() - asked >= status_every:
                    asked = time.monotonic()
                    status = self.status(run_id)
                    if status.finished:
                        on_tick()
                        return status
                if not self.superlink_alive():
                    raise RuntimeError("flower-superlink died" + self._exit_text())
                if deadline is not None and time.monotonic() > deadline:
                    self.stop(run_id)
                    raise TimeoutError(f"run {run_id} did not finish within {timeout:g} s")
                time.sleep(poll)
        except KeyboardInterrupt:
            self.stop(run_id)
            raise
        finally:
            stop_process_tree(logs, grace=2)

    def superlink_alive(self) -> bool:
        """Whether the SuperLink this object watches (``proc`` or ``superlink_pid``) runs."""
        if self.proc is not None:
            return self.proc.poll() is None
        if self.superlink_pid is not None:
            try:
                return psutil.Process(self.superlink_pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False
        return True

    def _exit_text(self) -> str:
        return f" (exit {self.proc.returncode})" if self.proc is not None else ""


class LocalSimulation(FlowerCli):
    """A run on Flower's simulation engine: on its own SuperLink, or on a shared one.

    Parameters
    ----------
    workdir
        Holds ``FLWR_HOME`` (the connection config; with its own SuperLink, the SuperLink's
        state too), the run's log and, with its own SuperLink, ``superlink.log``.
    num_supernodes, client_cpus, client_gpus
        The simulated federation: one SuperNode per client, resources per ClientApp.
    superlink, superlink_pid
        A running simulation SuperLink's address (:class:`SimulationSuperLink`, e.g. a
        sweep's) and its process id: the run is submitted there and nothing is started or
        stopped; without them (a single run) this object starts its own SuperLink on entry
        and stops it, with all its descendants, Ray included, on exit.
    """

    def __init__(
        self,
        workdir: Path,
        num_supernodes: int,
        client_cpus: int = 1,
        client_gpus: float = 0.0,
        app_dir: Path = REPO,
        superlink: str | None = None,
        superlink_pid: int | None = None,
    ) -> None:
        super().__init__(workdir, app_dir)
        self.num_supernodes = num_supernodes
        self.client_cpus = client_cpus
        self.client_gpus = client_gpus
        self.shared = superlink
        self.superlink_pid = superlink_pid
        self.port = 0
        self._log: IO[bytes] | None = None

    def federation_config(self) -> str:
        """The simulated federation's size and resources."""
        return (
            f"num-supernodes={self.num_supernodes} "
            f"client-resources-num-cpus={self.client_cpus} "
            f"client-resources-num-gpus={float(self.client_gpus)} "
            f"init-args-num-cpus={max(os.cpu_count() or 1, self.client_cpus)}"
        )

    def __enter__(self) -> LocalSimulation:
        if self.shared is not None:
            self.port = int(self.shared.rsplit(":", 1)[1])
            self.write_connection(self.shared, insecure=True)
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "superlink.log", "ab")  # noqa: SIM115
        try:
            self.proc, self.port = start_simulation_superlink(self.workdir, self.env, self._log)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.write_connection(f"127.0.0.1:{self.port}", insecure=True)
        return self

    def __exit__(self, exc_type: object = None, *exc: object) -> None:
        if self.proc is not None:
            if exc_type is None:  # let a finished run's simulation shut Ray down itself
                wait_for_simulations(self.proc, timeout=SIMULATION_EXIT_WAIT)
            stop_process_tree(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


SIMULATION_EXIT_WAIT = 20.0
"""Seconds a finished run's ``flwr-simulation`` may take to exit before it is stopped."""


def wait_for_simulations(superlink: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait (up to ``timeout`` s) for the ``flwr-simulation`` processes under ``superlink``.

    A run followed to the app's completion mark (:meth:`FlowerCli.follow`) still has its
    simulation process shutting Ray down and pushing its outputs (2-4 s here). Sending
    SIGTERM to that process tree mid-shutdown took longer (5 s and more) than letting it end.
    """
    try:
        family = psutil.Process(superlink.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    simulations = []
    for proc in family:
        try:
            if any("flwr-simulation" in part for part in proc.cmdline()[:2]):
                simulations.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    deadline = time.monotonic() + timeout
    while simulations and time.monotonic() < deadline:
        simulations = [p for p in simulations if _running(p)]  # an unreaped zombie has ended
        time.sleep(0.1)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
