"""Hydra multiruns through ``python -m experiments.run -m``: real federations, real failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
from e2e_cli import REPO, run_experiments

from experiments.processes.launcher import processes_in_home, stop_process_tree

GRID = ["privacy.target_epsilon=2,4", "seed=0,1"]
SMALL = ["federation.num_clients=2", "federation.rounds=1", "federation.fraction_evaluate=0"]


def _sweep_cmd(sweep_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.run",
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def _sweep(
    sweep_dir: Path, *overrides: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return run_experiments(
        sweep_dir, "-m", f"hydra.sweep.dir={sweep_dir}", *overrides, timeout=timeout
    )


def _stop_leftovers(sweep_dir: Path) -> list[psutil.Process]:
    leftovers = processes_in_home(sweep_dir)
    for proc in leftovers:
        stop_process_tree(proc, grace=5)
    return leftovers


def _statuses(sweep_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sweep_dir.glob("*/status.json"):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except ValueError:  # being replaced at this instant
            continue
    return out


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Iterator[Path]:
    """A sweep directory; every process started under it is stopped by PID afterwards."""
    yield tmp_path / "sweep"
    _stop_leftovers(tmp_path)


def test_bad_value_fails_before_the_first_run(sweep_dir: Path) -> None:
    res = _sweep(sweep_dir, "privacy.target_epsilon=2,-1", *SMALL)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "privacy.target_epsilon must be > 0, got -1" in res.stderr
    assert "privacy.target_epsilon=-1" in res.stderr  # names the job
    assert not list(sweep_dir.glob("*/status.json")), "no run may start"


def test_unknown_key_fails_before_the_first_run(sweep_dir: Path) -> None:
    res = _sweep(sweep_dir, "privacy.target_epsilonn=2,4", *SMALL)
    assert res.returncode != 0
    assert "target_epsilonn" in res.stderr
    assert not list(sweep_dir.glob("*/status.json")), "no run may start"


def test_interrupted_sweep_reruns_only_what_is_missing_and_reports(sweep_dir: Path) -> None:
    # 1. Start a 2 x 2 sweep and kill it (SIGKILL, like a crash) once two runs have completed.
    proc = subprocess.Popen(
        _sweep_cmd(sweep_dir, *GRID, *SMALL),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            done = [s for s in _statuses(sweep_dir).values() if s.get("status") == "completed"]
            if len(done) >= 2:
                break
            time.sleep(1)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        _stop_leftovers(sweep_dir)
    before = {k: v for k, v in _statuses(sweep_dir).items() if v.get("status") == "completed"}
    assert 2 <= len(before) < 4

    # 2. The same command again runs only the missing runs.
    res = _sweep(sweep_dir, *GRID, *SMALL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("already completed, skipped") == len(before)
    after = _statuses(sweep_dir)
    assert len(after) == 4 and all(s["status"] == "completed" for s in after.values())
    for name, status in before.items():
        assert after[name]["started"] == status["started"], f"{name} was run again"
    assert "sweep: 4/4 done (0 failed)" in res.stdout

    # 3. The sweep's table equals the runs' own final metrics; plots and Markdown exist.
    table = pd.read_csv(sweep_dir / "sweep_results.csv")
    assert len(table) == 4
    assert sorted(zip(table["privacy.target_epsilon"], table["seed"], strict=True)) == [
        (2, 0),
        (2, 1),
        (4, 0),
        (4, 1),
    ]
    for row in table.to_dict("records"):
        run = sweep_dir / row["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        metrics = pd.read_csv(run / "metrics.csv")
        assert row["status"] == "completed"
        assert row["final_test_accuracy"] == pytest.approx(summary["final_test_accuracy"])
        assert row["final_test_accuracy"] == pytest.approx(metrics["test_accuracy"].iloc[-1])
        assert row["epsilon_spent"] == pytest.approx(summary["epsilon_max"])
        assert 0 < row["epsilon_spent"] <= row["privacy.target_epsilon"]
    for name in ("accuracy_vs_epsilon.png", "round_curves.png"):
        assert (sweep_dir / name).read_bytes()[:4] == b"\x89PNG"
    markdown = (sweep_dir / "sweep_results.md").read_text()
    assert markdown.count("| completed |") == 4

    # 4. ``python -m experiments.report`` rebuilds the same table from the directory.
    (sweep_dir / "sweep_results.csv").unlink()
    rep = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(sweep_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rep.returncode == 0, rep.stderr
    pd.testing.assert_frame_equal(pd.read_csv(sweep_dir / "sweep_results.csv"), table)


def test_one_superlink_serves_the_whole_sweep(sweep_dir: Path) -> None:
    res = _sweep(sweep_dir, "privacy.target_epsilon=2,4", *SMALL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    statuses = _statuses(sweep_dir)
    assert len(statuses) == 2 and all(s["status"] == "completed" for s in statuses.values())
    log = (sweep_dir / ".superlink" / "superlink.log").read_text()
    assert log.count("Created run") == 2, log[-3000:]  # both runs on the one SuperLink
    assert log.count("Uvicorn running on") == 1  # started once
    for name in statuses:
        run = sweep_dir / name
        assert not (run / "superlink.log").exists(), f"{name} started its own SuperLink"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["rounds"] == 1 and summary["epsilon_max"] > 0
        assert (run / "privacy.csv").exists() and (run / "accuracy_epsilon.png").exists()
    assert not processes_in_home(sweep_dir), "the sweep's SuperLink outlived the sweep"
