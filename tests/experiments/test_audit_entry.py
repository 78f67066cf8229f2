"""``python -m experiments.audit``: settings, refusals, and small in-process audits."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.audit import (
    run_audit,
    split_argv,
    summary_line,
    write_results,
)
from experiments.audit_plan import check_audit_run
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
    seeded = dataclasses.replace(s, privacy_reproducible_noise=True)
    with pytest.raises(ValueError, match="attacks a 'objective' release.*releases 'weights'"):
        check_audit_run(seeded, AuditGroup(attacks=["replay_objective"]), "simulation")
    fm = _settings("functional", privacy_reproducible_noise=True)
    with pytest.raises(ValueError, match=r"use \['replay_objective'\]"):
        check_audit_run(fm, AuditGroup(attacks=["replay"]), "simulation")
    check_audit_run(fm, AuditGroup(attacks=["replay_objective"]), "simulation")
    with pytest.raises(ValueError, match="whitebox_objective attacks a 'objective' release"):
        check_audit_run(s, AuditGroup(attacks=["whitebox_objective"]), "simulation")
    check_audit_run(
        _settings("functional"), AuditGroup(attacks=["whitebox_objective"]), "simulation"
    )
    robust = dataclasses.replace(s, aggregation_strategy="fedmedian")
    with pytest.raises(ValueError, match="got aggregation.strategy='fedmedian'"):
        check_audit_run(robust, AuditGroup(), "simulation")
    watch = dataclasses.replace(s, dataset_name="watch", model_name="cnn1d")
    with pytest.raises(ValueError, match="dataset.name='watch' declares none"):
        check_audit_run(watch, AuditGroup(), "simulation")


def test_no_privacy_gives_a_large_bound_and_dp_never_exceeds_its_claim(tmp_path: Path) -> None:
    audit = AuditGroup(canaries=300, attacks=["blackbox", "whitebox", "whitebox_known"])
    none, _ = run_audit(_settings("none"), audit)
    # 300 canaries: no privacy gave 1.6-2.6 over 18 runs (1,000 give 4.7, bench/audit.py);
    # 1.2 is above the DP claim of 1 audited below, so the contrast is what is tested
    assert none["claimed_epsilon"] is None and none["epsilon_lower_bound"] > 1.2
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


def test_known_functional_noise_is_caught_in_objective_space() -> None:
    """privacy.reproducible_noise=true: the auditor with the seed reads the coins off it."""
    s = _settings("functional", claim=1.0, privacy_reproducible_noise=True)
    summary, table = run_audit(s, AuditGroup(canaries=300, attacks=["replay_objective"]))
    assert summary["best_attack"] == "replay_objective"
    assert summary["epsilon_lower_bound"] > 2.0  # far above the claim of 1: no guarantee
    assert "'objective' aggregation rule" in summary["simulation"]


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


@pytest.mark.e2e
def test_the_command_line_writes_the_audit_and_prints_the_bound(tmp_path: Path) -> None:
    """``python -m experiments.audit privacy=none ...`` end to end, small (~30-60 s)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.audit",
            "privacy=none",
            "audit.canaries=200",
            "audit.attacks=[blackbox,whitebox_known]",
            "federation.num_clients=2",
            "federation.rounds=2",
            "model.hidden=64",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    stored = json.loads((tmp_path / "audit.json").read_text())
    assert stored["claimed_epsilon"] is None  # no privacy: no claim
    assert stored["epsilon_lower_bound"] > 0.5  # memorised canaries are found
    assert stored["settings"]["audit"]["canaries"] == 200
    table = pd.read_csv(tmp_path / "audit.csv")
    assert list(table["attack"]) == ["blackbox", "whitebox_known"]
    assert (table["canaries"] == 200).all()
    assert stored["epsilon_lower_bound"] == pytest.approx(
        table["epsilon_lower_bound_of_best"].max()
    )
    assert re.search(
        r"claimed epsilon inf \(no privacy\), audited lower bound \d+\.\d\d \(95%\)", out.stdout
    )
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize(
    ("arg", "text"),
    [
        ("audit.confidence=0", "audit.confidence must be in (0, 1), got 0"),
        ("audit.canaries=99", "audit.canaries must be >= 100, got 99"),
    ],
)
def test_the_command_line_names_the_bad_setting(arg: str, text: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "experiments.audit", arg],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and text in out.stderr


def test_gradient_canaries_are_checked_and_stay_under_the_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """audit.canary_kind=gradient: DP-SGD only; the attack sees the server's view, no coin."""
    import experiments.audit as entry
    from tasks.audit import whitebox_gradient
    from tasks.audit.attacks import ATTACK_CANARIES, ATTACKS, AttackView

    assert parse_audit(["canary_kind=gradient"]).attacks == ["whitebox_gradient"]
    with pytest.raises(ValueError, match="audit.canary_kind must be one of"):
        parse_audit(["canary_kind=pixel"])
    with pytest.raises(ValueError, match=r"audit.attacks \['blackbox'\] score other canaries"):
        parse_audit(["canary_kind=gradient", "attacks=[blackbox]"])
    with pytest.raises(ValueError, match="needs privacy.mode in \\['dpsgd'\\], got privacy.mode="):
        check_audit_run(_settings("none"), AuditGroup(canary_kind="gradient"), "simulation")
    drawn: list[np.ndarray] = []
    seen: list[AttackView] = []
    secret = entry.draw_coins

    def draw(m: int) -> np.ndarray:
        drawn.append(secret(m))
        return drawn[-1]

    def spy(view: AttackView) -> np.ndarray:
        seen.append(view)
        return whitebox_gradient(view)

    monkeypatch.setattr(entry, "draw_coins", draw)
    monkeypatch.setitem(ATTACKS, "spy", spy)
    monkeypatch.setitem(ATTACK_CANARIES, "spy", "gradient")
    audit = AuditGroup(canaries=300, canary_kind="gradient", attacks=["whitebox_gradient", "spy"])
    summary, table = run_audit(_settings("dpsgd", claim=1.0), audit)
    assert (table["epsilon_lower_bound"] <= 1.0).all() and summary["claimed_epsilon"] == 1.0
    (coins,), (view,) = drawn, seen
    assert view.canaries is None and view.dirac is not None and len(view.dirac) == 300
    assert len(view.others) == 2 and all(len(r) == 1 for r in view.others)  # 2 rounds, 1 other
    for f in dataclasses.fields(view):  # nothing the attack reads holds the coins
        value = getattr(view, f.name)
        assert not (isinstance(value, np.ndarray) and value.dtype == bool)
        assert value is not coins
