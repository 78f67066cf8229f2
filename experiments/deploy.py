"""``python -m experiments.deploy COMMAND``: run fedpriv on several machines.

Commands (README "Running on several machines"):

``superlink``
    Start a SuperLink with TLS and SuperNode authentication; runs until Ctrl-C.
``register``
    Admit SuperNodes' public keys (``flwr supernode register``).
``node-key``
    Make a node's key pair on the participant's machine (only ``OUT.pub`` goes to the operator).
``init-ledger``
    Create a node's privacy ledger when the node is set up (``--force`` re-initialises one,
    forgetting what its data spent: with a warning).
``supernode``
    Start a participant's SuperNode: SuperLink address, CA, private key, data file, ledger dir,
    and the node's own policy (``--max-epsilon``, ``--max-delta``, ``--privacy-modes``,
    ``--allow-evaluation``).
``export-partitions``
    Write one data file per node from a dataset partition (demo and tests).
``local``
    All of it on this machine: development certificates, a SuperLink, registered SuperNodes
    with their own files; prints the command that submits a run; runs until Ctrl-C.

Runs are submitted and followed with ``python -m experiments.run federation=deployment
federation.superlink=HOST:PORT federation.root_certificates=CA ...``
(:func:`deployment_connection`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from omegaconf import DictConfig

from experiments.local_deployment import LocalDeployment, export_partitions
from experiments.processes.certs import DevPki, make_node_key
from experiments.processes.fab_guard import fab_hash
from experiments.processes.launcher import REPO, FlowerCli, Tuning
from experiments.processes.proxy import ParticipantProxy
from experiments.processes.superlink import SuperLink, connect, register_node
from experiments.processes.supernode import NodeSpec, SuperNode
from privacy.ledger_file import init_ledger

ENGINES = ("simulation", "deployment")


# ---------------------------------------------------------------------- run.py's hook
def check_deployment(cfg: DictConfig) -> None:
    """Check ``federation.engine`` and, for a deployment, the SuperLink address and CA.

    Raises
    ------
    ValueError
        Naming the setting and the value.
    """
    fed = cfg.federation
    if fed.engine not in ENGINES:
        raise ValueError(f"federation.engine must be one of {list(ENGINES)}, got {fed.engine!r}")
    if fed.engine != "deployment":
        return
    host, _, port = str(fed.superlink).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"federation.superlink must be HOST:PORT, got {fed.superlink!r}")
    if not Path(str(fed.root_certificates)).is_file():
        raise ValueError(
            "federation.root_certificates must be the CA certificate that signed the "
            f"SuperLink's certificate, got {fed.root_certificates!r} (no such file)"
        )
    try:
        x509.load_pem_x509_certificates(Path(str(fed.root_certificates)).read_bytes())
    except ValueError:
        raise ValueError(
            "federation.root_certificates must be a PEM certificate (the CA that signed the "
            f"SuperLink's certificate), got {fed.root_certificates!r}, which is not one"
        ) from None


def deployment_connection(cfg: DictConfig, out_dir: Path) -> FlowerCli | None:
    """The TLS ``flwr`` connection for ``federation=deployment`` (None for simulation).

    The run is submitted with ``flwr run`` and followed with ``flwr ls``/``flwr log`` over it,
    exactly as for a simulation (:class:`experiments.processes.launcher.FlowerCli`).
    """
    check_deployment(cfg)
    if cfg.federation.engine != "deployment":
        return None
    return connect(str(cfg.federation.superlink), Path(cfg.federation.root_certificates), out_dir)


# ---------------------------------------------------------------------- command line
def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _wait_forever(procs: Sequence[SuperLink | SuperNode | ParticipantProxy]) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (``&``)
    try:
        while all(p.proc is not None and p.proc.poll() is None for p in procs):
            time.sleep(1)
        print("a Flower process exited; see its log", file=sys.stderr)
    except KeyboardInterrupt:
        pass


def _tuning(args: argparse.Namespace) -> Tuning:
    return Tuning(args.isolation, args.task_poll_interval)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def tuned(q: argparse.ArgumentParser) -> None:
        q.add_argument("--isolation", choices=["subprocess", "process"], default="subprocess")
        q.add_argument(
            "--task-poll-interval",
            type=float,
            default=None,
            help="seconds between Flower SuperExec polls (Flower's default: 1)",
        )

    s = sub.add_parser("superlink", help="start a SuperLink with TLS and node authentication")
    s.add_argument(
        "--certs",
        type=Path,
        required=True,
        help="directory with server.crt, server.key, ca.crt (experiments.certs)",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="where the SuperLink (Fleet, Control and Runtime APIs) listens: keep it on the "
        "operator's loopback and let participants in through --participant-port",
    )
    s.add_argument("--port", type=int, default=9092)
    s.add_argument(
        "--participant-port",
        type=int,
        default=None,
        help="start the Fleet-only proxy (nginx) here for the participants' SuperNodes",
    )
    s.add_argument("--participant-host", default="0.0.0.0")
    s.add_argument(
        "--home",
        type=Path,
        default=Path("superlink-home"),
        help="state database, FLWR_HOME and log",
    )
    tuned(s)

    r = sub.add_parser("register", help="admit SuperNode public keys")
    r.add_argument("public_keys", type=Path, nargs="+")
    r.add_argument("--superlink", required=True, help="HOST:PORT")
    r.add_argument("--ca", type=Path, required=True, help="CA certificate (ca.crt)")

    n = sub.add_parser("supernode", help="start a participant's SuperNode")
    n.add_argument("--superlink", required=True, help="HOST:PORT")
    n.add_argument("--ca", type=Path, required=True, help="CA certificate (ca.crt)")
    n.add_argument("--key", type=Path, required=True, help="the node's private key (node-N)")
    n.add_argument(
        "--client-id",
        type=int,
        required=True,
        help="unique and stable across restarts: names the ledger file",
    )
    n.add_argument("--data", type=Path, required=True, help=".csv, .parquet or .npz")
    n.add_argument(
        "--ledger-dir",
        type=Path,
        required=True,
        help="where the privacy ledger is kept (keep it: it is the spent budget)",
    )
    n.add_argument(
        "--personal-dir",
        type=Path,
        default=None,
        help="where personal models stay (personalization=...; default: personal/ beside "
        "--ledger-dir)",
    )
    n.add_argument("--home", type=Path, default=None, help="FLWR_HOME and log")
    n.add_argument("--port", type=int, default=0, help="the node's local Runtime API port")
    n.add_argument(
        "--max-epsilon",
        type=float,
        required=True,
        help="node policy: the most epsilon this data may spend over all runs",
    )
    n.add_argument(
        "--max-delta",
        type=float,
        default=None,
        help="node policy: the largest privacy.delta it trains under (default: only delta < 1/n)",
    )
    n.add_argument(
        "--privacy-modes",
        default="dpsgd,functional",
        help="node policy: the privacy modes it trains under (comma-separated; DP only)",
    )
    n.add_argument(
        "--allow-evaluation",
        action="store_true",
        help="node policy: allow federated evaluation (noisy, accounted) on its data",
    )
    n.add_argument(
        "--approve-fab",
        action="append",
        default=[],
        metavar="HASH",
        help="run only apps with this FAB hash (repeatable; python -m experiments.deploy "
        "fab-hash prints this checkout's)",
    )
    tuned(n)

    fh = sub.add_parser("fab-hash", help="the FAB hash of an app directory (for --approve-fab)")
    fh.add_argument("app", type=Path, nargs="?", default=REPO)

    nk = sub.add_parser("node-key", help="make this node's key pair (on the participant's machine)")
    nk.add_argument("out", type=Path, help="private key path; the public key is OUT.pub")

    il = sub.add_parser("init-ledger", help="create a node's privacy ledger (node set-up)")
    il.add_argument("--ledger-dir", type=Path, required=True)
    il.add_argument("--client-id", type=int, required=True)
    il.add_argument("--delta", type=float, default=1e-5, help="the delta of every run on it")
    il.add_argument(
        "--force",
        action="store_true",
        help="re-initialise an existing ledger: FORGETS the epsilon this data already spent",
    )

    e = sub.add_parser("export-partitions", help="one data file per node from a dataset")
    e.add_argument("out", type=Path)
    e.add_argument("--nodes", type=int, default=3)
    e.add_argument("--format", choices=["csv", "parquet", "npz"], default="csv")
    e.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=digits")

    loc = sub.add_parser("local", help="certificates, SuperLink and SuperNodes on this machine")
    loc.add_argument("root", type=Path)
    loc.add_argument("--nodes", type=int, default=3)
    loc.add_argument("--format", choices=["csv", "parquet", "npz"], default="csv")
    loc.add_argument("--max-epsilon", type=float, default=10.0, help="every node's cap")
    loc.add_argument("--privacy-modes", default="dpsgd,functional")
    loc.add_argument("--allow-evaluation", action="store_true")
    loc.add_argument(
        "--no-proxy",
        action="store_true",
        help="let the SuperNodes dial the SuperLink directly (no Fleet-only nginx proxy)",
    )
    loc.add_argument("overrides", nargs="*", help="Hydra overrides for the exported data")
    tuned(loc)
    return p


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command not in ("export-partitions", "local") or "=" not in extra[0]):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # Hydra overrides given after the options
        args.overrides = [*args.overrides, *extra]
    if args.command == "superlink":
        loopback = args.host in ("127.0.0.1", "localhost", "::1")
        if args.participant_port is not None and not loopback:
            parser.error(
                f"--host must be a loopback address with --participant-port (the Control API "
                f"would be open to participants otherwise), got {args.host!r}"
            )
        if args.participant_port is None and not loopback:
            print(
                f"warning: the SuperLink on {args.host} serves its Control API to everyone "
                "who can reach it (submit runs, register node keys); use --host 127.0.0.1 "
                "--participant-port PORT",
                file=sys.stderr,
            )
        pki = DevPki(args.certs.resolve(), 0)
        link = SuperLink(args.home.resolve(), pki, args.host, args.port, _tuning(args))
        with link:
            procs: list[SuperLink | SuperNode | ParticipantProxy] = [link]
            if args.participant_port is not None:
                proxy = ParticipantProxy(
                    args.home.resolve() / "proxy",
                    pki,
                    link.address,
                    args.participant_host,
                    args.participant_port,
                ).start()
                procs.append(proxy)
            print(
                f"SuperLink on {args.host}:{args.port} (TLS, node authentication; operator "
                "only)"
                + (
                    f"; participants' Fleet API on {args.participant_host}:{args.participant_port}"
                    if args.participant_port is not None
                    else ""
                )
                + f"; log {link.workdir / 'superlink.log'}; Ctrl-C stops it",
                flush=True,
            )
            try:
                _wait_forever(procs)
            finally:
                for p in procs[1:]:
                    p.stop()
    elif args.command == "register":
        with tempfile.TemporaryDirectory(prefix="fedpriv-register-") as tmp:
            cli = connect(args.superlink, args.ca, Path(tmp))
            for key in args.public_keys:
                print(f"{key}: node id {register_node(cli, key.resolve())}", flush=True)
    elif args.command == "supernode":
        home = (args.home or Path(f"supernode-{args.client_id}")).resolve()
        spec = NodeSpec(
            args.client_id,
            args.key.resolve(),
            args.data,
            args.ledger_dir,
            max_epsilon=args.max_epsilon,
            max_delta=args.max_delta,
            privacy_modes=args.privacy_modes,
            allow_evaluation=args.allow_evaluation,
            approved_fabs=tuple(args.approve_fab),
            extra_config=(
                {"personal-dir": str(args.personal_dir.resolve())} if args.personal_dir else {}
            ),
        )
        if not args.approve_fab:
            print(
                "warning: no --approve-fab: this node runs any app a submitted run names",
                file=sys.stderr,
            )
        if not (args.ledger_dir / f"client-{args.client_id}.json").exists():
            print(
                f"warning: no ledger in {args.ledger_dir} yet: the node will refuse to train "
                f"until it is created (python -m experiments.deploy init-ledger --ledger-dir "
                f"{args.ledger_dir} --client-id {args.client_id})",
                file=sys.stderr,
            )
        node = SuperNode(home, spec, args.superlink, args.ca.resolve(), args.port, _tuning(args))
        with node:
            print(
                f"SuperNode {args.client_id} -> {args.superlink}; data {args.data}; ledger "
                f"{args.ledger_dir}; log {home / 'supernode.log'}; Ctrl-C stops it",
                flush=True,
            )
            _wait_forever([node])
    elif args.command == "fab-hash":
        print(fab_hash(args.app.resolve()))
    elif args.command == "node-key":
        make_node_key(args.out, args.out.with_name(args.out.name + ".pub"))
        print(f"private key {args.out} (0600, stays here); send {args.out}.pub to the operator")
    elif args.command == "init-ledger":
        if args.force:
            print(
                "warning: re-initialising the ledger forgets the epsilon this data has already "
                "spent; do it only if that spending is accounted for elsewhere",
                file=sys.stderr,
            )
        try:
            path = init_ledger(args.ledger_dir, args.client_id, args.delta, force=args.force)
        except FileExistsError as err:
            parser.error(str(err))
        print(f"ledger {path} created (empty)")
    elif args.command == "export-partitions":
        for path in export_partitions(args.out, args.nodes, args.format, args.overrides):
            print(path)
    elif args.command == "local":
        with LocalDeployment(
            args.root.resolve(),
            args.nodes,
            args.format,
            args.overrides,
            _tuning(args),
            max_epsilon=args.max_epsilon,
            privacy_modes=args.privacy_modes,
            allow_evaluation=args.allow_evaluation,
            proxy=not args.no_proxy,
            approve_fabs=True,
        ) as dep:
            assert dep.superlink is not None
            print(
                f"SuperLink {dep.superlink.address} and {args.nodes} SuperNodes are up "
                f"(files under {dep.root}). Submit a run with:\n  {dep.run_command()}\n"
                "Ctrl-C stops everything.",
                flush=True,
            )
            _wait_forever([dep.superlink, *dep.nodes])


if __name__ == "__main__":
    main()
