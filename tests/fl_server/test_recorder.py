"""RunRecorder: per-round CSVs flushed as they happen, final model and summary at the end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fl_server.recorder import RunRecorder
from fl_server.replies import ClientOutcome, RoundLog


def _outcome(server_round: int, node_id: int, status: str, **fields) -> ClientOutcome:
    return ClientOutcome(server_round, node_id, status=status, **fields)


def _log(server_round: int, eps: float) -> RoundLog:
    return RoundLog(
        outcomes=[
            _outcome(
                server_round,
                11,
                "trained",
                partition_id=0,
                num_examples=100,
                epsilon=eps,
                train_loss=1.0,
                train_seconds=0.2,
                weight=0.25,
                score=0.9,
                reputation=0.8,
            ),
            _outcome(
                server_round,
                12,
                "trained",
                partition_id=1,
                num_examples=300,
                epsilon=eps / 2,
                train_loss=2.0,
                train_seconds=0.4,
                weight=0.75,
                score=1.0,
                reputation=0.95,
            ),
            _outcome(
                server_round,
                13,
                "declined",
                partition_id=2,
                num_examples=50,
                epsilon=3.9,
                reason="declined: budget",
            ),
            _outcome(
                server_round,
                15,
                "rejected",
                partition_id=4,
                num_examples=80,
                epsilon=1.0,
                train_loss=9.0,
                train_seconds=5.0,
                reason="parameter '0.weight' has 3 NaN/Inf values",
            ),
            ClientOutcome(server_round, 14, reason="client error: boom"),
        ],
        val_loss=0.9,
        val_accuracy=0.7,
    )


def test_client_outcome_defaults() -> None:
    o = ClientOutcome(3, 11)
    assert (o.round, o.node_id, o.partition_id, o.status) == (3, 11, -1, "failed")
    assert o.num_examples == 0 and o.reason == ""
    for name in ("epsilon", "train_loss", "train_seconds", "weight", "score", "reputation"):
        assert math.isnan(getattr(o, name)), name


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
    assert "rejected" in metrics.columns
    r1 = metrics.iloc[1]
    assert r1["test_accuracy"] == pytest.approx(0.6)
    assert r1["test_loss"] == pytest.approx(1.2)
    assert r1["val_accuracy"] == pytest.approx(0.7)
    assert r1["participants"] == 2
    assert r1["declined"] == 1
    assert r1["rejected"] == 1
    assert r1["failed"] == 1
    assert r1["train_loss"] == pytest.approx(0.25 * 1.0 + 0.75 * 2.0)
    assert r1["epsilon_max"] == pytest.approx(3.9)
    assert r1["client_train_seconds_max"] == pytest.approx(0.4)
    assert r1["client_train_seconds_sum"] == pytest.approx(0.6)
    assert not bool(r1["kept_previous_model"])
    assert math.isnan(metrics.iloc[0]["participants"])  # round 0 has no clients

    clients = pd.read_csv(out / "clients.csv")
    assert len(clients) == 5
    assert list(clients["node_id"]) == [11, 12, 13, 15, 14]
    assert list(clients["status"]) == ["trained", "trained", "declined", "rejected", "failed"]
    assert list(clients["weight"][:2]) == pytest.approx([0.25, 0.75])
    assert clients["weight"][2:].isna().all()  # no aggregation weight unless trained
    assert list(clients["score"][:2]) == pytest.approx([0.9, 1.0])
    assert list(clients["reputation"][:2]) == pytest.approx([0.8, 0.95])
    assert clients["score"][2:].isna().all() and clients["reputation"][2:].isna().all()
    assert clients.loc[3, "reason"] == "parameter '0.weight' has 3 NaN/Inf values"
    assert clients.loc[4, "reason"] == "client error: boom"
    assert set(clients["round"]) == {1}

    rec.record_round(2, 1.0, 0.65, _log(2, eps=3.0))
    assert len(pd.read_csv(out / "metrics.csv")) == 3
    assert len(pd.read_csv(out / "clients.csv")) == 10
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
        outcomes=[
            ClientOutcome(1, 11, 0, "declined", 50, 3.9, reason="declined: budget"),
            ClientOutcome(1, 12, 1, "rejected", 0, 1.0, reason="example count must be > 0"),
        ],
        kept_previous_model=True,
    )
    row = rec.record_round(1, 1.0, 0.5, log)
    assert row["kept_previous_model"] is True
    assert row["participants"] == 0
    assert (row["declined"], row["rejected"], row["failed"]) == (1, 1, 0)
    assert math.isnan(row["train_loss"])
    assert bool(pd.read_csv(tmp_path / "metrics.csv").loc[0, "kept_previous_model"])


def test_train_loss_without_weights_is_the_plain_mean(tmp_path) -> None:
    """Flower's baselines give no per-client weights: the train loss is the plain mean."""
    rec = RunRecorder(tmp_path, num_rounds=1)
    log = RoundLog(
        outcomes=[
            _outcome(1, 11, "trained", num_examples=10, train_loss=1.0),
            _outcome(1, 12, "trained", num_examples=30, train_loss=4.0),
            _outcome(1, 13, "rejected", train_loss=100.0),
        ]
    )
    row = rec.record_round(1, 1.0, 0.5, log)
    assert row["train_loss"] == pytest.approx(2.5)
    assert (row["participants"], row["rejected"]) == (2, 1)
