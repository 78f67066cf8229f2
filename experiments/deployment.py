"""Flower's deployment engine on real processes: SuperLink, SuperNodes, registration, runs.

A SuperLink with TLS and SuperNode authentication, SuperNodes with their own key, data file
and ledger directory, node registration, and runs submitted and followed over TLS.

Every process is started in its own session with its own ``FLWR_HOME`` and stopped by PID
(with its descendants: Flower's ``flower-superexec`` and the app processes) by
:func:`experiments.launcher.stop_process_tree`. ``python -m experiments.deploy`` is the
command line over this module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from experiments.certs import DevPki
from experiments.launcher import (
    CONNECTION,
    REPO,
    FlowerCli,
    bin_path,
    flower_env,
    free_port,
    stop_process_tree,
    wait_for_port,
)

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


class _Process:
    """One long-running Flower process (plus an optional SuperExec beside it), owned by PID."""

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

    def __enter__(self) -> _Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SuperLink(_Process):
    """``flower-superlink`` with TLS (the dev CA's server certificate) and node authentication.

    Parameters
    ----------
    workdir
        Its ``FLWR_HOME``, log (``superlink.log``) and state database (``state.db``: the
        registered nodes survive a restart of the SuperLink).
    pki
        Where ``server.crt``, ``server.key`` and ``ca.crt`` are.
    host, port
        Where it listens (one HTTPS port serves the Fleet, Control and Runtime APIs).
    """

    name = "flower-superlink"

    def __init__(
        self,
        workdir: Path,
        pki: DevPki,
        host: str = "127.0.0.1",
        port: int = 0,
        tuning: Tuning | None = None,
    ) -> None:
        super().__init__(workdir, tuning)
        self.pki = pki
        self.host = host
        self.port = port or free_port()

    @property
    def address(self) -> str:
        """``host:port`` as clients dial it."""
        return dial_address(self.host, self.port)

    def command(self) -> list[str]:
        """The ``flower-superlink`` command line."""
        return [
            bin_path("flower-superlink"),
            "--ssl-certfile",
            str(self.pki.server_cert),
            "--ssl-keyfile",
            str(self.pki.server_key),
            "--ssl-ca-certfile",
            str(self.pki.ca_cert),
            "--enable-supernode-auth",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--database",
            str(self.workdir / "state.db"),
            "--isolation",
            self.tuning.isolation,
            "--disable-runtime-dependency-installation",
        ]

    def start(self, timeout: float = 60) -> SuperLink:
        """Start and wait until it listens; with ``isolation=process`` start its SuperExec too."""
        proc = self._spawn(self.command(), "superlink.log")
        try:
            wait_for_port(self.port, proc, timeout, self.name, self.address.split(":")[0])
            if self.tuning.isolation == "process":
                self._spawn(
                    [
                        bin_path("flower-superexec"),
                        "--runtime-api-address",
                        self.address,
                        "--root-certificates",
                        str(self.pki.ca_cert),
                    ],
                    "superexec.log",
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> SuperLink:
        return self.start()

    def cli(self, workdir: Path | None = None) -> FlowerCli:
        """A ``flwr`` CLI connection to this SuperLink over TLS."""
        return connect(self.address, self.pki.ca_cert, workdir or self.workdir / "cli")


def connect(address: str, root_certificates: Path, workdir: Path) -> FlowerCli:
    """A ``flwr`` CLI connection (own ``FLWR_HOME`` under ``workdir``) to a TLS SuperLink."""
    workdir.mkdir(parents=True, exist_ok=True)
    cli = FlowerCli(workdir, REPO)
    cli.write_connection(address, root_certificates=root_certificates)
    return cli


def register_node(cli: FlowerCli, public_key: Path, name: str = "") -> int:
    """``flwr supernode register``: admit a node's public key; returns its node id.

    Raises
    ------
    RuntimeError
        With Flower's message when the SuperLink refuses or cannot be reached.
    """
    res = cli.flwr(
        "supernode",
        "register",
        str(public_key),
        CONNECTION,
        *(["--name", name] if name else []),
        "--format",
        "json",
    )
    try:
        payload = json.loads(res.stdout[res.stdout.index("{") :])
        if payload.get("success"):
            return int(payload["node-id"])
        raise RuntimeError(str(payload.get("error-message", payload)))
    except (ValueError, KeyError) as err:
        raise RuntimeError(
            f"flwr supernode register {public_key} failed:\n{res.stdout}\n{res.stderr}"
        ) from err


def list_nodes(cli: FlowerCli) -> list[dict[str, str]]:
    """``flwr supernode ls``: every registered node with its status."""
    res = cli.flwr("supernode", "ls", CONNECTION, "--format", "json")
    payload = json.loads(res.stdout[res.stdout.index("{") :])
    return list(payload.get("nodes", []))


@dataclass
class NodeSpec:
    """What one participant's SuperNode needs.

    ``client_id`` must be unique in the federation and stable across restarts: it names the
    node's ledger file (``<ledger_dir>/client-<id>.json``) and its rows in the results.
    """

    client_id: int
    private_key: Path
    data_path: Path
    ledger_dir: Path
    extra_config: Mapping[str, str | int | float] = field(default_factory=dict)
    max_epsilon: float = 10.0
    """The node's policy (``fl_client.policy``): the most epsilon its data may spend, over
    every run."""
    privacy_modes: str = "dpsgd,functional"
    allow_evaluation: bool = False
    approved_fabs: tuple[str, ...] = ()
    """FAB hashes this node runs (``experiments.fab_guard``); empty: any app (not advised)."""

    def node_config(self) -> str:
        """``--node-config`` value: identity, data, ledger and the node's privacy policy."""
        items = {
            "partition-id": self.client_id,
            "data-path": str(Path(self.data_path).resolve()),
            "ledger-dir": str(Path(self.ledger_dir).resolve()),
            "max-epsilon": float(self.max_epsilon),
            "privacy-modes": self.privacy_modes,
            "allow-evaluation": "true" if self.allow_evaluation else "false",
            **self.extra_config,
        }
        return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


class SuperNode(_Process):
    """``flower-supernode`` dialling a TLS SuperLink with its authentication key."""

    name = "flower-supernode"

    def __init__(
        self,
        workdir: Path,
        node: NodeSpec,
        superlink: str,
        root_certificates: Path,
        port: int = 0,
        tuning: Tuning | None = None,
        max_retries: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, tuning, extra_env)
        self.node = node
        self.superlink = superlink
        self.root_certificates = root_certificates
        self.port = port or free_port()
        self.max_retries = max_retries

    def command(self) -> list[str]:
        """The ``flower-supernode`` command line."""
        cmd = [
            bin_path("flower-supernode"),
            "--superlink",
            self.superlink,
            "--root-certificates",
            str(self.root_certificates),
            "--auth-supernode-private-key",
            str(self.node.private_key),
            "--node-config",
            self.node.node_config(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--isolation",
            "process" if self.node.approved_fabs else self.tuning.isolation,
        ]
        if self.max_retries is not None:
            cmd += ["--max-retries", str(self.max_retries)]
        return cmd

    def start(self, timeout: float = 60) -> SuperNode:
        """Start; wait until its local Runtime API listens (then it dials the SuperLink)."""
        proc = self._spawn(self.command(), "supernode.log")
        try:
            wait_for_port(self.port, proc, timeout, self.name)
            superexec_args = [
                "--insecure",  # loopback only: the node's own Runtime API
                "--runtime-api-address",
                f"127.0.0.1:{self.port}",
            ]
            if self.node.approved_fabs:  # Flower's SuperExec, launching approved apps only
                approve = [a for h in self.node.approved_fabs for a in ("--approve", h)]
                self._spawn(
                    [
                        sys.executable,
                        "-m",
                        "experiments.fab_guard",
                        *approve,
                        "--",
                        *superexec_args,
                    ],
                    "superexec.log",
                )
            elif self.tuning.isolation == "process":
                self._spawn([bin_path("flower-superexec"), *superexec_args], "superexec.log")
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> SuperNode:
        return self.start()

    def log_text(self) -> str:
        """The node's log so far."""
        path = self.workdir / "supernode.log"
        return path.read_text(errors="replace") if path.exists() else ""
