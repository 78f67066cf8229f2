"""``python -m experiments.audit``: settings, refusals, and small in-process audits."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.audit import (
    check_audit_run,
    run_audit,
    split_argv,
    summary_line,
    write_results,
)
from experiments.audit_schema import AuditGroup, parse_audit
from protocol.settings import RunSettings

ROOT = Path(__file__).resolve().parents[2]


def _settings(mode: str, claim: float = 1.0, **extra: object) -> RunSettings:
    return RunSettings(
        dataset_name="digits",
        model_name="fm_network" if mode == "functional" else "mlp",
        model_hidden=64,
        privacy_mode=mode,
        privacy_target_epsilon=claim,
        num_clients=2,
        num_rounds=2,
        batch_size=128,
        learning_rate=0.5,
        **extra,  # type: ignore[arg-type]
    ).validate()


def test_audit_settings_are_typed_and_checked() -> None:
    assert split_argv(["privacy=none", "audit.canaries=200"]) == (
        ["canaries=200"],
        ["privacy=none"],
    )
    assert parse_audit(["canaries=200", "attacks=[whitebox]"]).attacks == ["whitebox"]
    for bad, text in [
        (["canaries=5"], "audit.canaries must be >= 100, got 5"),
        (["confidence=1.5"], "audit.confidence must be in (0, 1), got 1.5"),
        (["canary=500"], "canary"),
        (["canaries=many"], "many"),
        (["attacks=[guess]"], "audit.attacks must be a non-empty list of"),
    ]:
        with pytest.raises(ValueError, match="audit") as err:
            parse_audit(bad)
        assert text in str(err.value)


def test_a_deployment_is_audited_only_when_asked() -> None:
    s = _settings("dpsgd")
    with pytest.raises(ValueError, match="audit.allow_deployment=true to ask for it"):
        check_audit_run(s, AuditGroup(), "deployment")
    with pytest.raises(ValueError, match="not supported yet"):
        check_audit_run(s, AuditGroup(allow_deployment=True), "deployment")
    check_audit_run(s, AuditGroup(), "simulation")
    with pytest.raises(ValueError, match="audit.client must be in"):
        check_audit_run(s, AuditGroup(client=5), "simulation")
    with pytest.raises(ValueError, match="privacy.reproducible_noise=true"):
        check_audit_run(s, AuditGroup(attacks=["replay"]), "simulation")
    watch = dataclasses.replace(s, dataset_name="watch", model_name="cnn1d")
    with pytest.raises(ValueError, match="dataset.name='watch' declares none"):
        check_audit_run(watch, AuditGroup(), "simulation")


def test_no_privacy_gives_a_large_bound_and_dp_never_exceeds_its_claim(tmp_path: Path) -> None:
    audit = AuditGroup(canaries=300, attacks=["blackbox", "whitebox", "whitebox_known"])
    none, _ = run_audit(_settings("none"), audit)
    assert none["claimed_epsilon"] is None and none["epsilon_lower_bound"] > 2.0
    fm, fm_table = run_audit(_settings("functional", claim=1.0), audit)
    assert fm["delta"] == 0.0  # pure DP: audited against delta 0
    assert (fm_table["epsilon_lower_bound"] <= 1.0).all()
    audit = AuditGroup(canaries=300)
    dp, table = run_audit(_settings("dpsgd", claim=1.0), audit)
    assert dp["claimed_epsilon"] == 1.0 and dp["delta"] == 1e-5
    assert (table["epsilon_lower_bound"] <= 1.0).all()
    write_results(tmp_path, dp, table)
    stored = json.loads((tmp_path / "audit.json").read_text())
    assert {"claimed_epsilon", "epsilon_lower_bound", "confidence", "guesses", "accuracy"} <= set(
        stored
    )
    assert set(stored["attacks"]) == {"blackbox", "whitebox"}
    assert (tmp_path / "audit.csv").read_text().startswith("attack,")
    assert summary_line(dp).startswith("claimed epsilon 1.00, audited lower bound ")


def test_the_command_line_refuses_bad_audit_settings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "experiments.audit", "audit.canaries=5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "audit.canaries must be >= 100, got 5" in out.stderr


def test_the_command_line_refuses_a_deployment_without_the_flag(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.audit",
            "federation=deployment",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "set audit.allow_deployment=true to ask for it" in out.stderr
    assert not (tmp_path / "audit.json").exists()
