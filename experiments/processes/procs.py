"""The process-level pieces the launchers share: console scripts, ports, process trees, env.

Free loopback ports and waiting for one, stopping a process with all its descendants by
PID, finding the processes of one ``FLWR_HOME``, each Flower process's environment
(:func:`flower_env`), and the slim copy of the app that ``flwr run`` packs
(:func:`stage_app`), and a simulation SuperLink that serves many runs
(:class:`SimulationSuperLink`). Imports nothing of fedpriv: :mod:`experiments.processes.launcher`
builds on it (and re-exports every name).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import psutil

__all__ = [
    "FAB_STAGE",
    "REPO",
    "SimulationSuperLink",
    "bin_path",
    "fab_patterns",
    "flower_env",
    "free_port",
    "processes_in_home",
    "stage_app",
    "start_simulation_superlink",
    "stop_process_tree",
    "wait_for_port",
]

REPO = Path(__file__).resolve().parents[2]
"""The checkout: the Flower app's directory, put on every Flower process's ``PYTHONPATH``."""


def bin_path(name: str) -> str:
    """A console script installed beside the running interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


FAB_STAGE = ".fab"
"""Folder (in a connection's workdir) holding the app's own files, which ``flwr run`` packs."""


def fab_patterns(app_dir: Path) -> list[str]:
    """The app's ``[tool.flwr.app] fab-include`` patterns (empty when it has none)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: no staging, ``flwr run`` reads the app directory
        return []
    try:
        config = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    patterns = config.get("tool", {}).get("flwr", {}).get("app", {}).get("fab-include", [])
    return [str(p) for p in patterns] if isinstance(patterns, list) else []


def stage_app(app_dir: Path, dest: Path) -> Path:
    """A copy of the files ``flwr run`` would pack from ``app_dir``, in ``dest``; returns it.

    ``flwr run DIR`` walks and resolves every file under ``DIR`` before it applies the
    app's ``fab-include`` patterns: in a checkout with its virtual environment and results
    (50,000 files) that took 3-7 s of each submission. The copy holds only
    ``pyproject.toml``, ``.gitignore`` and the files the patterns match (Flower applies the
    same patterns and its own rules again, so the package it builds is the same). An app
    without ``fab-include`` patterns is returned as it is.
    """
    patterns = fab_patterns(app_dir)
    if not patterns:
        return app_dir
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    names = {"pyproject.toml", ".gitignore"}
    for pattern in patterns:
        names.update(
            p.relative_to(app_dir).as_posix()
            for p in app_dir.glob(pattern)
            if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts
        )
    for name in sorted(names):
        source = app_dir / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int,
    proc: subprocess.Popen[bytes],
    timeout: float,
    name: str = "flower-superlink",
    host: str = "127.0.0.1",
) -> None:
    """Wait until ``proc`` (called ``name`` in errors) listens on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} at start")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not listen on {host}:{port} within {timeout:g} s")


def stop_process_tree(proc: psutil.Process | subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Terminate ``proc`` and every descendant by PID: SIGTERM, then SIGKILL after ``grace``."""
    try:
        root = psutil.Process(proc.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    if isinstance(proc, subprocess.Popen):
        proc.wait(timeout=5)


def processes_in_home(home: Path) -> list[psutil.Process]:
    """Processes (other than this one) whose ``FLWR_HOME`` lies under ``home``."""
    found = []
    for proc in psutil.process_iter():
        try:
            flwr_home = proc.environ().get("FLWR_HOME", "")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if flwr_home and Path(flwr_home).is_relative_to(home) and proc.pid != os.getpid():
            found.append(proc)
    return found


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: its own ``FLWR_HOME``, no telemetry, no ``uv sync``."""
    env = dict(os.environ)
    env |= {
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "RAY_DEDUP_LOGS": "0",
        # Flower starts its helpers (flower-superexec, flwr-serverapp) by name.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    }
    return env | dict(extra or {})


def start_simulation_superlink(
    workdir: Path, env: Mapping[str, str], log: IO[bytes]
) -> tuple[subprocess.Popen[bytes], int]:
    """``flower-superlink --simulation`` on a free loopback port; (process, port) once it listens.

    Started in its own session with ``workdir`` as its directory and ``env`` (its own
    ``FLWR_HOME``); stopped, with everything it started, by :func:`stop_process_tree`.
    """
    port = free_port()
    proc = subprocess.Popen(
        [
            bin_path("flower-superlink"),
            "--simulation",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        env=dict(env),
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc, timeout=60)
    except BaseException:
        stop_process_tree(proc)
        raise
    return proc, port


class SimulationSuperLink:
    """A simulation SuperLink that serves many runs (a sweep's), owned by PID.

    Its ``FLWR_HOME`` and ``superlink.log`` lie in ``workdir``; each run is submitted through
    a :class:`~experiments.processes.launcher.LocalSimulation` given :attr:`address` and
    :attr:`pid`, with that run's own directory, log and federation size (Flower takes the
    simulated federation with each run, ``flwr run --federation-config``). :meth:`stop` is
    safe to call more than once.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.flwr_home = workdir / ".flwr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` (after :meth:`start`)."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The SuperLink's process id (None before start and after stop)."""
        return None if self.proc is None else self.proc.pid

    def start(self) -> SimulationSuperLink:
        """Start the SuperLink and wait until it listens."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "superlink.log", "ab")  # noqa: SIM115
        try:
            self.proc, self.port = start_simulation_superlink(
                self.workdir, flower_env(self.flwr_home), self._log
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the SuperLink and everything it started (SuperExec, simulations, Ray)."""
        if self.proc is not None:
            stop_process_tree(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SimulationSuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
