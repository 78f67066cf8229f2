"""Everything of a deployment on this machine: ``python -m experiments.deploy local``, the tests.

:class:`LocalDeployment` makes development certificates, exports one data file per node
(:func:`export_partitions`), starts a SuperLink (and the participants' Fleet-only proxy),
registers the SuperNodes' keys, creates each node's privacy ledger and starts the SuperNodes,
every process from :mod:`experiments.processes`, stopped by PID on exit.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.processes.certs import DevPki, make_dev_pki
from experiments.processes.fab_guard import fab_hash
from experiments.processes.launcher import REPO, Tuning
from experiments.processes.proxy import ParticipantProxy
from experiments.processes.superlink import SuperLink, register_node
from experiments.processes.supernode import NodeSpec, SuperNode
from privacy.ledger_file import init_ledger


# ---------------------------------------------------------------------- node data files
def export_partitions(
    out: Path, nodes: int, fmt: str = "csv", overrides: Sequence[str] = ()
) -> list[Path]:
    """Write ``out/node-<i>.<fmt>``: partition ``i`` of the Hydra-composed config's dataset.

    The whole partition goes into the file; the node splits off its validation share itself.
    """
    from hydra import compose, initialize_config_dir

    from experiments.config import to_settings
    from experiments.schema import register_schema
    from tasks.data import client_partitions, load_dataset, specs_from_settings, write_node_file

    if nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {nodes}")
    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"federation.num_clients={nodes}"])
    settings = to_settings(cfg)
    dspec, pspec = specs_from_settings(settings, nodes)
    bundle = load_dataset(dspec)
    paths = []
    for i, rows in enumerate(client_partitions(dspec, pspec)):
        paths.append(
            write_node_file(out / f"node-{i}.{fmt}", bundle.x_train[rows], bundle.y_train[rows])
        )
    return paths


# ---------------------------------------------------------------------- all on one machine
class LocalDeployment:
    """Certificates, a SuperLink and ``nodes`` registered SuperNodes on this machine.

    Everything lives under ``root`` (``pki/``, ``data/``, ``superlink/``, ``node-<i>/`` with the
    node's ``ledger/``); every process is stopped by PID on exit.
    """

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        fmt: str = "csv",
        overrides: Sequence[str] = (),
        tuning: Tuning | None = None,
        max_epsilon: float = 10.0,
        privacy_modes: str = "dpsgd,functional",
        allow_evaluation: bool = False,
        node_env: Mapping[int, Mapping[str, str]] | None = None,
        proxy: bool = False,
        approve_fabs: bool = False,
        node_overrides: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> None:
        self.approved = (fab_hash(REPO),) if approve_fabs else ()
        self.node_overrides = {i: dict(o) for i, o in (node_overrides or {}).items()}
        self.root = root
        self.use_proxy = proxy
        self.proxy: ParticipantProxy | None = None
        self.node_env = dict(node_env or {})
        self.max_epsilon = max_epsilon
        self.privacy_modes = privacy_modes
        self.allow_evaluation = allow_evaluation
        self.num_nodes = nodes
        self.fmt = fmt
        self.overrides = list(overrides)
        self.tuning = tuning or Tuning()
        self.pki: DevPki | None = None
        self.superlink: SuperLink | None = None
        self.nodes: list[SuperNode] = []
        self.data: list[Path] = []

    def node_spec(self, i: int) -> NodeSpec:
        """Node ``i``'s key, data file and ledger directory."""
        assert self.pki is not None
        spec = NodeSpec(
            i,
            self.pki.node_key(i),
            self.data[i],
            self.root / f"node-{i}" / "ledger",
            max_epsilon=self.max_epsilon,
            privacy_modes=self.privacy_modes,
            allow_evaluation=self.allow_evaluation,
            approved_fabs=self.approved,
        )
        return dataclasses.replace(spec, **self.node_overrides.get(i, {}))

    def start_node(self, i: int) -> SuperNode:
        """(Re)start SuperNode ``i`` (it keeps its data file and ledger directory)."""
        assert self.superlink is not None and self.pki is not None
        node = SuperNode(
            self.root / f"node-{i}",
            self.node_spec(i),
            self.participant_address,
            self.pki.ca_cert,
            tuning=self.tuning,
            extra_env=self.node_env.get(i),
        ).start()
        if i < len(self.nodes):
            self.nodes[i] = node
        else:
            self.nodes.append(node)
        return node

    @property
    def participant_address(self) -> str:
        """Where SuperNodes dial: the Fleet-only proxy when there is one, else the SuperLink."""
        if self.proxy is not None:
            return self.proxy.address
        assert self.superlink is not None
        return self.superlink.address

    def __enter__(self) -> LocalDeployment:
        try:
            self.pki = make_dev_pki(self.root / "pki", self.num_nodes)
            self.data = export_partitions(
                self.root / "data", self.num_nodes, self.fmt, self.overrides
            )
            self.superlink = SuperLink(self.root / "superlink", self.pki, tuning=self.tuning)
            self.superlink.start()
            if self.use_proxy:  # participants reach the Fleet API only
                self.proxy = ParticipantProxy(
                    self.root / "proxy", self.pki, self.superlink.address
                ).start()
            cli = self.superlink.cli()
            for i in range(self.num_nodes):
                register_node(cli, self.pki.node_pub(i), name=f"node-{i}")
            for i in range(self.num_nodes):  # node set-up: each dataset's ledger, once
                init_ledger(self.node_spec(i).ledger_dir, i)
            for i in range(self.num_nodes):
                self.start_node(i)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.superlink is not None:
            self.superlink.stop()

    def run_command(self, *overrides: str) -> str:
        """The command that submits and follows a run on this deployment."""
        assert self.superlink is not None and self.pki is not None
        return (
            f"{Path(sys.executable).name} -m experiments.run federation=deployment "
            f"federation.superlink={self.superlink.address} "
            f"federation.root_certificates={self.pki.ca_cert} "
            f"federation.num_clients={self.num_nodes} " + " ".join(overrides)
        ).strip()
