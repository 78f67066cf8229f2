"""``python -m experiments.certs DIR --nodes 3``: development TLS and SuperNode keys.

Writes, with the ``cryptography`` package (no ``openssl`` needed):

=====================  ==========================================================
``DIR/ca.crt``         a self-signed development CA (give it to every SuperNode and
                       to whoever submits runs: ``--root-certificates``)
``DIR/ca.key``         the CA's private key (only needed to issue more certificates)
``DIR/server.crt``     the SuperLink's certificate, signed by the CA, valid for
                       ``localhost``, ``127.0.0.1`` and every ``--host`` given
``DIR/server.key``     the SuperLink's TLS private key
``DIR/node-N``         SuperNode N's authentication key (ECDSA P-384, OpenSSH format;
                       ``flower-supernode --auth-supernode-private-key``)
``DIR/node-N.pub``     its public key (``flwr supernode register``)
=====================  ==========================================================

For production, replace the CA and server certificate with ones from your organisation's
PKI (the certificate must name the SuperLink's DNS name or IP as a subjectAltName), and let
each participant generate its own node key on its own machine (``ssh-keygen -t ecdsa -b 384``
gives the same format) and send only the ``.pub`` file to the operator who registers it.
Private keys are written with mode 0600.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.processes.certs import DEFAULT_HOSTS, make_dev_pki


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m experiments.certs DIR --nodes 3 [--host NAME ...]``."""
    parser = argparse.ArgumentParser(prog="python -m experiments.certs", description=__doc__)
    parser.add_argument("dir", type=Path, help="directory to write into (created)")
    parser.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="node key pairs to create here (for trials only: participants make their own "
        "with python -m experiments.deploy node-key, and send only the .pub)",
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="extra DNS name or IP the SuperLink is reached at (repeatable)",
    )
    parser.add_argument("--days", type=int, default=30, help="validity of the certificates")
    args = parser.parse_args(argv)
    hosts = tuple(dict.fromkeys([*DEFAULT_HOSTS, *args.host]))
    try:
        pki = make_dev_pki(args.dir, args.nodes, hosts, args.days)
    except ValueError as err:
        parser.error(str(err))
    print(f"CA {pki.ca_cert}; server certificate {pki.server_cert} for {', '.join(hosts)}")
    for i in range(pki.nodes):
        print(f"node {i}: private key {pki.node_key(i)}, public key {pki.node_pub(i)}")


if __name__ == "__main__":
    main()
