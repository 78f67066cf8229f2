"""Checkpoints and ``resume=``: a run killed after round 2 of 4 continues with nothing lost.

Real processes: ``python -m experiments.run`` with its SuperLink and simulated SuperNodes is
killed with SIGKILL (a crash, not a clean stop) once round 2 is in ``metrics.csv``, then
resumed from its run directory; every process is stopped by PID in the finalizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from e2e_cli import run_cli, run_killed_after

TARGET = 3.0
BASE = ["dataset=digits", "privacy=dpsgd", f"privacy.target_epsilon={TARGET:g}"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("resume-run")
    run_killed_after(out, 2, *BASE, "federation.num_clients=3", "federation.rounds=4")
    checkpoint = json.loads((out / "checkpoint" / "checkpoint.json").read_text())
    before = {
        "metrics": pd.read_csv(out / "metrics.csv"),
        "checkpoint_round": checkpoint["round"],
        "summary_existed": (out / "summary.json").exists(),
    }
    res = run_cli(out, f"resume={out}")
    return {"out": out, "before": before, "res": res}


def test_killed_run_left_a_checkpoint_and_no_summary(resumed) -> None:
    before = resumed["before"]
    assert before["checkpoint_round"] >= 2
    assert not before["summary_existed"]
    assert list(before["metrics"]["round"])[:3] == [0, 1, 2]


def test_resume_runs_the_remaining_rounds_once(resumed) -> None:
    out, res = resumed["out"], resumed["res"]
    assert res.returncode == 0, res.stdout + res.stderr
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2, 3, 4]  # every round, none twice
    clients = pd.read_csv(out / "clients.csv")
    assert set(clients["round"]) == {1, 2, 3, 4}
    assert not clients.duplicated(["round", "node_id"]).any()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 4
    assert summary["final_test_accuracy"] == pytest.approx(metrics["test_accuracy"].iloc[-1])
    # the rows of the rounds before the kill are the ones the first process wrote
    first = resumed["before"]["metrics"]
    pd.testing.assert_frame_equal(
        metrics.iloc[:3].reset_index(drop=True),
        first.iloc[:3][metrics.columns].reset_index(drop=True),
        check_dtype=False,
    )


def test_epsilon_keeps_rising_across_the_resume_within_budget(resumed) -> None:
    out = resumed["out"]
    metrics = pd.read_csv(out / "metrics.csv")
    eps = metrics["epsilon_max"].iloc[1:].to_numpy()
    assert (eps[1:] >= eps[:-1] - 1e-12).all(), eps  # cumulative, never reset
    assert eps[2] > eps[1], eps  # round 3 (after the resume) spent more
    assert eps.max() <= TARGET
    clients = pd.read_csv(out / "clients.csv")
    for _, rows in clients[clients["epsilon"].notna()].groupby("partition_id"):
        e = rows.sort_values("round")["epsilon"].to_numpy()
        assert (e[1:] >= e[:-1] - 1e-12).all(), e
    privacy = pd.read_csv(out / "privacy.csv")
    assert len(privacy) == 3 and privacy["epsilon"].max() <= TARGET
    assert (privacy["events"] >= 3).all()  # the ledgers on disk kept rounds 1-2


def test_resume_with_more_rounds_does_not_raise_the_budget(resumed) -> None:
    out = resumed["out"]
    assert resumed["res"].returncode == 0
    res = run_cli(out, f"resume={out}", "federation.rounds=5")
    assert res.returncode == 0, res.stdout + res.stderr
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2, 3, 4, 5]
    last = metrics.iloc[-1]
    # the budget was planned for 4 rounds and is spent: round 5 is declined, not overspent
    assert last["participants"] == 0 and last["declined"] == 3
    assert bool(last["kept_previous_model"]) and "declined" in last["kept_reason"]
    assert metrics["epsilon_max"].max() <= TARGET
    # the stored plan was used across both resumes: one noise multiplier per client, never
    # re-planned for the larger federation.rounds
    privacy = pd.read_csv(out / "privacy.csv")
    assert not privacy["noise_multipliers"].astype(str).str.contains(";").any()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["privacy.target_epsilon=8"], "resume: privacy.target_epsilon was 3.0"),
        (["federation.rounds=2"], "federation.rounds can only be raised"),
    ],
)
def test_resume_refuses_changed_settings(resumed, extra, message) -> None:
    out = resumed["out"]
    res = run_cli(out, f"resume={out}", *extra, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr


def test_resume_of_a_missing_directory_fails_before_anything_starts(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    res = run_cli(tmp_path / "out", f"resume={missing}", timeout=120)
    assert res.returncode == 2
    assert f"resume='{missing}': no such run directory" in res.stderr
    assert not (tmp_path / "out" / "superlink.log").exists()


def test_resume_without_checkpoint_fails_before_anything_starts(tmp_path: Path) -> None:
    res = run_cli(tmp_path, f"resume={tmp_path}", timeout=120)
    assert res.returncode == 2
    assert f"resume='{tmp_path}': no checkpoint" in res.stderr
    assert not (tmp_path / "superlink.log").exists()
