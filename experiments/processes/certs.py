"""Development TLS and SuperNode keys, written with ``cryptography`` (no ``openssl`` needed).

A CA, the SuperLink's server certificate signed by it and ECDSA node key pairs in OpenSSH
format, laid out as :class:`DevPki` says. ``python -m experiments.certs`` is the command line
over this module (its help lists every file and what to use in production instead).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class DevPki:
    """Paths of a development CA, server certificate and node keys under ``root``."""

    root: Path
    nodes: int

    @property
    def ca_cert(self) -> Path:
        """The CA certificate every client trusts."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The SuperLink's certificate."""
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        """The SuperLink's TLS key."""
        return self.root / "server.key"

    def node_key(self, i: int) -> Path:
        """SuperNode ``i``'s private authentication key (OpenSSH)."""
        return self.root / f"node-{i}"

    def node_pub(self, i: int) -> Path:
        """SuperNode ``i``'s public key (OpenSSH), to register with the SuperLink."""
        return self.root / f"node-{i}.pub"


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only, also when the file already existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode applies to new files only
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_node_key(private_path: Path, public_path: Path) -> None:
    """One ECDSA P-384 key pair in OpenSSH format (what Flower's node authentication reads)."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )


def make_dev_pki(
    root: Path, nodes: int, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 30
) -> DevPki:
    """Create the CA, the server certificate for ``hosts`` and ``nodes`` node key pairs.

    Raises
    ------
    ValueError
        If ``nodes`` is negative or ``days`` is not positive.
    """
    if nodes < 0:
        raise ValueError(f"--nodes must be >= 0, got {nodes}")
    if days <= 0:
        raise ValueError(f"--days must be > 0, got {days}")
    root.mkdir(parents=True, exist_ok=True)
    pki = DevPki(root, nodes)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpriv development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(pki.ca_key, _pem_key(ca_key))
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(pki.server_key, _pem_key(server_key))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    for i in range(nodes):
        make_node_key(pki.node_key(i), pki.node_pub(i))
    return pki
