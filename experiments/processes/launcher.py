"""Start, watch and stop Flower processes by PID; drive them with the ``flwr`` CLI.

The pieces every other module here builds on: free loopback ports, waiting for a port,
stopping a process with all its descendants, each process's own ``FLWR_HOME`` and environment
(:func:`flower_env`, :class:`Tuning`), :class:`OwnedProcess` (one long-running process and its
log, owned by PID), and :class:`FlowerCli` (submit, follow and stop runs with ``flwr``).

:class:`LocalSimulation` runs the apps on Flower's simulation engine. ``flwr run`` with the
default local connection leaves a detached SuperLink behind and may ``uv sync`` the app's
dependencies; this class instead starts its own ``flower-superlink --simulation`` on a free
loopback port with its own ``FLWR_HOME``, submits the run with ``flwr run``, follows it with
``flwr ls`` (``flwr run`` exits 0 even when the ServerApp fails), and stops every process it
started (the SuperLink and all its descendants, Ray included) on success, error and Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

REPO = Path(__file__).resolve().parents[2]
"""The checkout: the Flower app's directory, put on every Flower process's ``PYTHONPATH``."""
CONNECTION = "fedpriv"


def bin_path(name: str) -> str:
    """A console script installed beside the running interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


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
        return self.text == "finished:completed"


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
        res = self._flwr(
            "run",
            str(self.app_dir),
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
        poll: float = 2.0,
        timeout: float | None = None,
        status_every: float = 20.0,
    ) -> RunStatus:
        """Wait until the run finishes, calling ``on_tick`` every ``poll`` s; stop it on Ctrl-C.

        The status comes from ``flwr ls``, a new Python process each time (about a CPU-second
        here), so it is asked when ``flwr log --stream`` ends (it does when the run does) and
        otherwise only every ``status_every`` seconds: polling it every 2 s took a sizeable
        share of a 2-core machine from the clients' training.
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
                if logs.poll() is not None or time.monotonic() - asked >= status_every:
                    asked = time.monotonic()
                    status = self.status(run_id)
                    if status.finished:
                        on_tick()
                        return status
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"flower-superlink died (exit {self.proc.returncode})")
                if deadline is not None and time.monotonic() > deadline:
                    self.stop(run_id)
                    raise TimeoutError(f"run {run_id} did not finish within {timeout:g} s")
                time.sleep(poll)
        except KeyboardInterrupt:
            self.stop(run_id)
            raise
        finally:
            stop_process_tree(logs, grace=2)


class LocalSimulation(FlowerCli):
    """A SuperLink in simulation mode, owned by this process (a context manager).

    Parameters
    ----------
    workdir
        Holds ``FLWR_HOME`` (the connection config, the SuperLink's state) and its log.
    num_supernodes, client_cpus, client_gpus
        The simulated federation: one SuperNode per client, resources per ClientApp.
    """

    def __init__(
        self,
        workdir: Path,
        num_supernodes: int,
        client_cpus: int = 1,
        client_gpus: float = 0.0,
        app_dir: Path = REPO,
    ) -> None:
        super().__init__(workdir, app_dir)
        self.num_supernodes = num_supernodes
        self.client_cpus = client_cpus
        self.client_gpus = client_gpus
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
        self.port = free_port()
        self.write_connection(f"127.0.0.1:{self.port}", insecure=True)
        self._log = open(self.workdir / "superlink.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                bin_path("flower-superlink"),
                "--simulation",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            env=self.env,
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, self.proc, timeout=60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process_tree(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
