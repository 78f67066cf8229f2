"""RunRecorder: per-round CSVs flushed as they happen, final model and summary at the end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fl_server.recorder import RunRecorder
from fl_server.strategy import ClientOutcome, RoundLog


def _log(server_round: int, eps: float) -> RoundLog:
    return RoundLog(
        outcomes=[
            ClientOutcome(server_round, 11, 0, "trained", 100, eps, 1.0, 0.2, 0.25),
            ClientOutcome(server_round, 12, 1, "trained", 300, eps / 2, 2.0, 0.4, 0.75),
            ClientOutcome(
                server_round,
                13,
                2,
                "declined",
                50,
                3.9,
                math.nan,
                math.nan,
                0.0,
                "declined: budget",
            ),
            ClientOutcome(server_round, 14, reason="client error: boom"),
        ],
        val_loss=0.9,
        val_accuracy=0.7,
    )


def test_csvs_are_written_after_every_round(tmp_path) -> None:
    out = tmp_path / "run"
    rec = RunRecorder(out, num_rounds=2)
    assert out.is_dir()

    row0 = rec.record_round(0, 2.3, 0.1, None)
    assert row0 == {"round": 0, "test_accuracy": 0.1, "test_loss": 2.3}
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["round"]) == [0]
    assert (out / "clients.csv").exists()

    rec.record_round(1, 1.2, 0.6, _log(1, eps=2.0))
    assert not (out / "summary.json").exists()
    assert not (out / "final_model.npz").exists()
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["round"]) == [0, 1]
    r1 = metrics.iloc[1]
    assert r1["test_accuracy"] == pytest.approx(0.6)
    assert r1["test_loss"] == pytest.approx(1.2)
    assert r1["val_accuracy"] == pytest.approx(0.7)
    assert r1["participants"] == 2
    assert r1["declined"] == 1
    assert r1["failed"] == 1
    assert r1["train_loss"] == pytest.approx(0.25 * 1.0 + 0.75 * 2.0)
    assert r1["epsilon_max"] == pytest.approx(3.9)
    assert r1["client_train_seconds_max"] == pytest.approx(0.4)
    assert r1["client_train_seconds_sum"] == pytest.approx(0.6)
    assert not bool(r1["kept_previous_model"])
    assert math.isnan(metrics.iloc[0]["participants"])  # round 0 has no clients

    clients = pd.read_csv(out / "clients.csv")
    assert len(clients) == 4
    assert list(clients["node_id"]) == [11, 12, 13, 14]
    assert list(clients["status"]) == ["trained", "trained", "declined", "failed"]
    assert list(clients["weight"]) == pytest.approx([0.25, 0.75, 0.0, 0.0])
    assert clients.loc[3, "reason"] == "client error: boom"
    assert set(clients["round"]) == {1}

    rec.record_round(2, 1.0, 0.65, _log(2, eps=3.0))
    assert len(pd.read_csv(out / "metrics.csv")) == 3
    assert len(pd.read_csv(out / "clients.csv")) == 8
    assert not list(out.glob(".tmp-*")), "temporary files left behind"


def test_finish_writes_model_and_summary(tmp_path) -> None:
    rec = RunRecorder(tmp_path, num_rounds=2)
    rec.record_round(0, 2.3, 0.1, None)
    rec.record_round(1, 1.2, 0.6, _log(1, eps=2.0))
    rec.record_round(2, 0.8, 0.75, _log(2, eps=5.0))
    weights = {
        "0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "0.bias": np.array([0.5, -1.0], dtype=np.float32),
    }
    summary = rec.finish(weights, {"run_id": 7})

    with np.load(tmp_path / "final_model.npz", allow_pickle=False) as npz:
        assert set(npz.files) == set(weights)
        for k, v in weights.items():
            np.testing.assert_array_equal(npz[k], v)
            assert npz[k].dtype == v.dtype

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "completed"
    assert on_disk["final_test_accuracy"] == pytest.approx(0.75)
    assert on_disk["final_test_loss"] == pytest.approx(0.8)
    assert on_disk["rounds"] == 2
    assert on_disk["epsilon_max"] == pytest.approx(5.0)
    assert on_disk["run_id"] == 7
    assert on_disk["wall_seconds"] >= 0
    assert summary["final_test_accuracy"] == on_disk["final_test_accuracy"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_kept_previous_model_is_recorded(tmp_path) -> None:
    rec = RunRecorder(tmp_path, num_rounds=1)
    log = RoundLog(
        outcomes=[ClientOutcome(1, 11, 0, "declined", 50, 3.9, reason="declined: budget")],
        kept_previous_model=True,
    )
    row = rec.record_round(1, 1.0, 0.5, log)
    assert row["kept_previous_model"] is True
    assert row["participants"] == 0
    assert math.isnan(row["train_loss"])
    assert bool(pd.read_csv(tmp_path / "metrics.csv").loc[0, "kept_previous_model"])
