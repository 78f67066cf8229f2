"""End to end through ``python -m experiments.run``: real Flower simulation, real Opacus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from e2e_cli import REPO, run_cli

from experiments.processes.launcher import processes_in_home, stop_process_tree


@pytest.fixture(scope="module")
def dpsgd_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("dpsgd-run")
    res = run_cli(
        out,
        "dataset=digits",
        "privacy=dpsgd",
        "privacy.target_epsilon=3",
        "federation.num_clients=3",
        "federation.rounds=2",
    )
    return out, res


def test_run_finishes_and_writes_every_result(dpsgd_run) -> None:
    out, res = dpsgd_run
    assert res.returncode == 0, res.stdout + res.stderr
    for name in [
        "config.yaml",
        "metrics.csv",
        "clients.csv",
        "privacy.csv",
        "final_model.npz",
        "summary.json",
        "accuracy_epsilon.png",
    ]:
        assert (out / name).stat().st_size > 0, name
    assert "round   2/2" in res.stdout
    assert f"results in {out}" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2


def test_cumulative_epsilon_rises_and_stays_within_budget(dpsgd_run) -> None:
    out, _ = dpsgd_run
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    eps = metrics["epsilon_max"].iloc[1:].to_numpy()
    assert 0 < eps[0] < eps[1] <= 3.0
    assert (metrics["participants"].iloc[1:] == 3).all()
    assert (metrics["failed"].iloc[1:] == 0).all()
    privacy = pd.read_csv(out / "privacy.csv")
    assert len(privacy) == 3
    assert privacy["epsilon"].max() <= 3.0
    assert (privacy["events"] == 2).all()
    # the final epsilon in the ledgers is what the clients reported in the last round
    assert privacy["epsilon"].max() == pytest.approx(eps[1], rel=1e-9)


def test_model_learns_something(dpsgd_run) -> None:
    out, _ = dpsgd_run
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["test_accuracy"].iloc[-1] > metrics["test_accuracy"].iloc[0] + 0.1


@pytest.mark.parametrize(
    "override, message",
    [
        ("privacy.target_epsilon=-1", "privacy.target_epsilon must be > 0, got -1"),
        ("privacy.delta=2", "privacy.delta must be in (0, 1), got 2"),
        ("privacy.delta=0.01", "privacy.delta must be below 1/n"),
        ("federation.rounds=0", "federation.rounds must be > 0, got 0"),
        ("federation.batch_size=-4", "federation.batch_size must be > 0, got -4"),
        ("federation.num_clients=5000", "federation.num_clients"),
        ("dataset.name=nope", "dataset.name must be one of"),
        ("model.name=resnet", "model.name must be one of"),
    ],
)
def test_bad_settings_fail_before_any_process_starts(tmp_path: Path, override, message) -> None:
    res = run_cli(tmp_path, override, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert not (tmp_path / "superlink.log").exists()


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.run",
            f"hydra.run.dir={tmp_path}",
            "federation.rounds=50",
            # rounds of several seconds: a run must not finish between two progress ticks
            "federation.local_epochs=20",
            "privacy=none",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the run is under way
            if "round   1/50" in line or time.monotonic() > deadline:
                break
        assert processes_in_home(tmp_path), "the federation should be running"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = processes_in_home(tmp_path)
    for p in left:
        stop_process_tree(p, grace=5)
    assert proc.returncode != 0
    assert not left, f"left running after Ctrl-C: {[p.cmdline() for p in left]}"


def test_reliability_scorer_run_with_label_flippers_writes_scores(tmp_path: Path) -> None:
    res = run_cli(
        tmp_path,
        "aggregation=median_agreement",
        "participants=label_flip",
        "participants.unreliable_fraction=0.3",
        "privacy=none",
        "federation.num_clients=4",
        "federation.rounds=2",
    )
    left = processes_in_home(tmp_path)
    for p in left:
        stop_process_tree(p, grace=5)
    assert res.returncode == 0, res.stdout + res.stderr
    truth = pd.read_csv(tmp_path / "participants.csv")
    assert truth["unreliable"].sum() == 1  # round(0.3 * 4)
    clients = pd.read_csv(tmp_path / "clients.csv")
    assert set(clients["round"]) == {1, 2}
    assert clients[["score", "reputation", "weight"]].notna().all().all()
    for _, rnd in clients.groupby("round"):
        assert rnd["weight"].sum() == pytest.approx(1.0)
    assert not left
