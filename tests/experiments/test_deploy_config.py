"""``federation=deployment`` checks and the SuperNode's node config, without processes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from omegaconf import DictConfig, OmegaConf

from experiments.deploy import check_deployment, deployment_connection
from experiments.processes.supernode import NodeSpec


def _cfg(**federation: object) -> DictConfig:
    base = {"engine": "deployment", "superlink": "127.0.0.1:9092", "root_certificates": ""}
    cfg = OmegaConf.create({"federation": base | federation})
    assert isinstance(cfg, DictConfig)
    return cfg


def test_engine_and_address_and_ca_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="federation.engine must be one of"):
        check_deployment(_cfg(engine="cluster"))
    with pytest.raises(ValueError, match="federation.superlink must be HOST:PORT, got 'nohost'"):
        check_deployment(_cfg(superlink="nohost"))
    with pytest.raises(ValueError, match="federation.root_certificates must be the CA"):
        check_deployment(_cfg(root_certificates=str(tmp_path / "absent.crt")))
    assert deployment_connection(_cfg(engine="simulation"), tmp_path) is None


def test_connection_config_names_the_address_and_ca(tmp_path: Path) -> None:
    from experiments.processes.certs import make_dev_pki

    ca = make_dev_pki(tmp_path / "pki", nodes=0).root / "ca.crt"
    assert ca.is_file()
    cli = deployment_connection(_cfg(root_certificates=str(ca)), tmp_path)
    assert cli is not None
    text = (tmp_path / ".flwr" / "config.toml").read_text()
    assert 'address = "127.0.0.1:9092"' in text
    assert f'root-certificates = "{ca.resolve()}"' in text
    assert "insecure" not in text  # TLS


def test_node_config_parses_as_flower_reads_it(tmp_path: Path) -> None:
    spec = NodeSpec(2, tmp_path / "k", tmp_path / "my data.csv", tmp_path / "ledger")
    parsed = parse_config_args([spec.node_config()])
    assert parsed["partition-id"] == 2
    assert parsed["data-path"] == str((tmp_path / "my data.csv").resolve())
    assert parsed["ledger-dir"] == str((tmp_path / "ledger").resolve())


def test_node_config_carries_the_delta_cap_only_when_set(tmp_path: Path) -> None:
    from fl_client.policy import NodePolicy

    spec = NodeSpec(0, tmp_path / "k", tmp_path / "d", tmp_path / "l")
    plain = parse_config_args([spec.node_config()])
    assert "max-delta" not in plain and NodePolicy.from_node_config(plain).max_delta == 1.0
    spec = dataclasses.replace(spec, max_delta=1e-6)
    capped = parse_config_args([spec.node_config()])
    assert NodePolicy.from_node_config(capped).max_delta == 1e-6
