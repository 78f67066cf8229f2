"""Settings that used to start Flower (or crash after it started) fail up front, naming the key."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import privacy.dpsgd
import protocol.settings
from experiments.config import check_data, check_resources
from experiments.deploy import check_deployment
from protocol.settings import RunSettings

BASE = RunSettings()


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"privacy_grad_sample_mode": "bogus"}, "privacy.grad_sample_mode must be one of"),
        ({"round_timeout": 0.001}, "federation.round_timeout must be >= 10"),
        (
            {"seed": 1180591620717411303424},
            "seed must be in [0, 2**63 - 1], got 1180591620717411303424",
        ),
        ({"seed": -1}, "seed must be in [0, 2**63 - 1], got -1"),
        (
            {"aggregation_strategy": "krum", "aggregation_num_malicious": 2, "num_clients": 3},
            "aggregation.num_malicious needs at least 2 * num_malicious + 3 clients a round",
        ),
        (
            {"aggregation_strategy": "bulyan", "aggregation_num_malicious": 1, "num_clients": 5},
            "aggregation.num_malicious needs at least 4 * num_malicious + 3",
        ),
    ],
)
def test_validate_refuses_with_the_key(changes, needle) -> None:
    with pytest.raises(ValueError) as err:
        dataclasses.replace(BASE, **changes).validate()
    assert needle in str(err.value)


def test_batch_larger_than_the_smallest_client_is_refused() -> None:
    with pytest.raises(ValueError, match=r"federation\.batch_size must be at most .*got 100000"):
        check_data(dataclasses.replace(BASE, batch_size=100000))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match=r"device='cuda' but no CUDA device is available"):
        check_data(dataclasses.replace(BASE, device="cuda"))
    with pytest.raises(ValueError, match=r"federation\.client_gpus must be 0 on a machine"):
        check_resources(1, 1)


@pytest.mark.parametrize("cpus", [0, -1, 1.5, True])
def test_client_cpus_must_be_a_positive_integer(cpus) -> None:
    with pytest.raises(ValueError, match=r"federation\.client_cpus must be an integer >= 1"):
        check_resources(cpus, 0.0)


def test_client_gpus_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match=r"federation\.client_gpus must be in \[0, 1\]"):
        check_resources(1, 2.0)
    check_resources(2, 0.0)  # fine


def test_root_certificates_that_are_not_a_certificate_are_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.crt"
    bogus.write_text("not a certificate\n")
    cfg = OmegaConf.create(
        {
            "federation": {
                "engine": "deployment",
                "superlink": "127.0.0.1:9092",
                "root_certificates": str(bogus),
            }
        }
    )
    with pytest.raises(ValueError, match=r"federation\.root_certificates must be a PEM"):
        check_deployment(cfg)


def test_grad_sample_modes_agree_with_the_privacy_layer() -> None:
    assert set(protocol.settings.GRAD_SAMPLE_MODES) == {"auto", *privacy.dpsgd.GRAD_SAMPLE_MODES}


def test_the_cli_refuses_a_huge_seed_before_anything_starts(tmp_path: Path) -> None:
    import subprocess

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            f"hydra.run.dir={tmp_path}",
            "seed=1180591620717411303424",
        ],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error: seed must be in [0, 2**63 - 1]" in res.stderr
    assert not (tmp_path / "superlink.log").exists()
