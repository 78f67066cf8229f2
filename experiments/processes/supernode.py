"""A participant's side: ``flower-supernode`` dialling a TLS SuperLink, and its node config.

Each node has its own key, data file, ledger directory and privacy policy (:class:`NodeSpec`);
when it approves apps by hash, Flower's SuperExec runs beside it, wrapped by
:mod:`experiments.processes.fab_guard`.

``python -m experiments.deploy supernode`` is the command line over this module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from experiments.processes.owned import OwnedProcess, Tuning
from experiments.processes.procs import bin_path, free_port, wait_for_port


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
    max_delta: float | None = None
    """The largest ``privacy.delta`` the node trains under (None: only ``delta < 1/n``)."""
    approved_fabs: tuple[str, ...] = ()
    """FAB hashes this node runs (``experiments.processes.fab_guard``); empty: any app (not
    advised)."""

    def node_config(self) -> str:
        """``--node-config`` value: identity, data, ledger and the node's privacy policy."""
        items = {
            "partition-id": self.client_id,
            "data-path": str(Path(self.data_path).resolve()),
            "ledger-dir": str(Path(self.ledger_dir).resolve()),
            "max-epsilon": float(self.max_epsilon),
            "privacy-modes": self.privacy_modes,
            "allow-evaluation": "true" if self.allow_evaluation else "false",
            **({} if self.max_delta is None else {"max-delta": float(self.max_delta)}),
            **self.extra_config,
        }
        return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


class SuperNode(OwnedProcess):
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
                        "experiments.processes.fab_guard",
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
