"""Development PKI: a CA-signed loopback server certificate; node keys as Flower reads them."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from experiments.certs import main
from experiments.processes.certs import make_dev_pki


def test_server_certificate_is_signed_by_the_ca_for_loopback(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path, nodes=0, hosts=("localhost", "127.0.0.1", "fl.example.org"))
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if not signed by the CA
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fl.example.org"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # what an HTTPS server does with them: load the pair, trust the CA
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ssl.create_default_context(cafile=str(pki.ca_cert))


def test_node_keys_are_ecdsa_openssh_pairs_with_private_mode(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path, nodes=2)
    keys = []
    for i in range(2):
        private = load_ssh_private_key(pki.node_key(i).read_bytes(), None)
        public = load_ssh_public_key(pki.node_pub(i).read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert pki.node_key(i).stat().st_mode & 0o077 == 0
        keys.append(public.public_numbers())
    assert keys[0] != keys[1]
    assert pki.ca_key.stat().st_mode & 0o077 == 0 and pki.server_key.stat().st_mode & 0o077 == 0


def test_command_line_writes_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path / "pki"), "--nodes", "3", "--host", "10.0.0.5"])
    names = sorted(p.name for p in (tmp_path / "pki").iterdir())
    assert names == sorted(
        ["ca.crt", "ca.key", "server.crt", "server.key"]
        + [f"node-{i}{s}" for i in range(3) for s in ("", ".pub")]
    )
    assert "10.0.0.5" in capsys.readouterr().out


def test_bad_node_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--nodes must be >= 0, got -1"):
        make_dev_pki(tmp_path, nodes=-1)
