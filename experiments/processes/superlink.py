"""The operator's side: ``flower-superlink`` and the ``flwr`` CLI calls an operator makes.

The SuperLink runs with TLS and SuperNode authentication; :func:`connect`,
:func:`register_node` and :func:`list_nodes` drive it with the ``flwr`` CLI.

``python -m experiments.deploy superlink`` and ``register`` are the command line over this
module.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.processes.certs import DevPki
from experiments.processes.launcher import CONNECTION, FlowerCli
from experiments.processes.owned import OwnedProcess, Tuning, dial_address
from experiments.processes.procs import REPO, bin_path, free_port, wait_for_port


class SuperLink(OwnedProcess):
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
