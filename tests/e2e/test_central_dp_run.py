"""End to end: client-level DP (``central_dp=adaptive``) through ``python -m experiments.run``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from e2e_cli import run_cli, run_killed_after

from privacy import PrivacyLedger

TARGET = 4.0


ARGS = (
    "dataset=digits",
    "privacy=none",
    "central_dp=adaptive",
    f"central_dp.target_epsilon={TARGET:g}",
    "central_dp.count_stddev_fraction=0.2",  # 10 expected clients a round: m/20 is too small
    "federation.num_clients=50",
    "federation.fraction_train=0.2",
    "federation.rounds=5",  # kill after 2: three rounds of margin before the run could finish
    "federation.batch_size=16",
)
ROUNDS = 5


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A central-DP run SIGKILLed after round 2 of 5, then resumed from its directory."""
    out = tmp_path_factory.mktemp("central-dp-run")
    run_killed_after(out, 2, *ARGS)
    before = PrivacyLedger.from_dict(json.loads((out / "ledgers" / "server.json").read_text()))
    checkpointed = json.loads((out / "checkpoint" / "checkpoint.json").read_text())["round"]
    res = run_cli(out, f"resume={out}", timeout=400)
    return {"out": out, "before": before, "checkpointed": checkpointed, "res": res}


def test_resume_continues_the_server_ledger(resumed: dict) -> None:
    before = resumed["before"]
    rounds = [e.round for e in before.events]
    assert rounds == list(range(1, len(rounds) + 1)) and 2 <= len(rounds) < ROUNDS
    # a release is written to the ledger before its round's checkpoint, never after
    assert resumed["checkpointed"] in (len(rounds), len(rounds) - 1)
    ledger = PrivacyLedger.from_dict(
        json.loads((resumed["out"] / "ledgers" / "server.json").read_text())
    )
    assert [e.round for e in ledger.events] == list(range(1, ROUNDS + 1))  # none twice
    assert ledger.events[: len(rounds)] == before.events  # released rounds kept as they were


def test_adaptive_central_dp_run_writes_the_server_ledger_within_budget(resumed: dict) -> None:
    tmp_path, res = resumed["out"], resumed["res"]
    assert res.returncode == 0, res.stdout + res.stderr
    assert "central_dp=adaptive (client-level epsilon 4, delta 1e-05" in res.stdout
    assert f"round   {ROUNDS}/{ROUNDS}" in res.stdout and "| client-level epsilon " in res.stdout
    assert ", client-level epsilon " in next(x for x in res.stdout.splitlines() if "done:" in x)
    ledger_file = json.loads((tmp_path / "ledgers" / "server.json").read_text())
    assert ledger_file["unit"] == "client" and ledger_file["plan"]["clipping"] == "adaptive"
    ledger = PrivacyLedger.from_dict(ledger_file)
    assert [e.round for e in ledger.events] == list(range(1, ROUNDS + 1))
    assert {e.sample_rate for e in ledger.events} == {0.2}

    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["round"]) == list(range(ROUNDS + 1))
    eps = metrics["client_level_epsilon"].iloc[1:].to_numpy()
    assert 0 < eps[0] and (np.diff(eps) > 0).all() and eps[-1] <= TARGET
    kept = metrics["kept_previous_model"].iloc[1:].astype(bool).to_numpy()
    lost = len(resumed["before"].events) > resumed["checkpointed"]
    # killed between a round's release and its checkpoint: that release is spent, so the guard
    # refuses to run that round again (the model of the lost release is not re-made)
    assert kept.tolist() == [
        r == len(resumed["before"].events) and lost for r in range(1, ROUNDS + 1)
    ]
    assert eps[-1] == pytest.approx(ledger.epsilon(), rel=1e-9)
    assert (metrics["clip_norm"].iloc[1:] > 0).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["client_level_epsilon"] == pytest.approx(ledger.epsilon(), rel=1e-9)
    assert summary["rounds"] == ROUNDS
    clients = pd.read_csv(tmp_path / "clients.csv")
    per_round = clients[clients["status"] == "trained"].groupby("round").size()
    assert per_round.sum() > 0  # Poisson-sampled: about 10 a round, not a fixed count
    weights = clients.loc[clients["status"] == "trained", "weight"].to_numpy()
    assert np.allclose(weights, 0.1)  # 1 over the expected clients, not by example count


def test_bad_central_dp_input_fails_before_any_process_starts(tmp_path: Path) -> None:
    res = run_cli(
        tmp_path,
        "central_dp=adaptive",
        "privacy=none",
        "federation.num_clients=50",
        "federation.fraction_train=0.2",
        "federation.batch_size=16",
        "central_dp.count_stddev_fraction=0.01",
        timeout=120,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "central_dp.count_stddev_fraction=0.01 gives" in res.stderr
    assert not (tmp_path / "superlink.log").exists()
