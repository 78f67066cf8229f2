"""Server checkpoints (round trip, atomicity, damage), strategy state, resume, min_replies."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fl_messages import SHAPE, declined, server_identity, trained
from flwr.app import ConfigRecord
from omegaconf import OmegaConf

from experiments.resume import resume_argv, resume_config
from experiments.schema import FedPrivConf
from fl_server.recorder import RunRecorder
from fl_server.registry import make_strategy
from fl_server.rounds import run_rounds
from fl_server.weighted import WeightedFedAvg
from protocol import atomic as atomic_mod
from protocol.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_differences,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from protocol.records import to_record
from protocol.settings import RunSettings


@pytest.fixture(autouse=True)
def _serverapp_identity():
    with server_identity():
        yield


def _ckpt(round_: int, value: float = 1.0) -> Checkpoint:
    return Checkpoint(
        round=round_,
        weights={
            "layer.weight": np.full((3, 2), value, dtype=np.float32),
            "layer.bias": np.arange(3, dtype=np.float64) * value,
            "steps": np.array([7], dtype=np.int64),
        },
        metrics=[
            {"round": 0, "test_accuracy": 0.1, "epsilon_max": math.nan},
            *(
                {"round": r, "test_accuracy": 0.5, "epsilon_max": 2.5, "kept_reason": ""}
                for r in range(1, round_ + 1)
            ),
        ],
        clients=[{"round": 1, "partition_id": 0, "epsilon": math.inf, "reason": "x"}],
        strategy={"client_epsilon": {"0": 2.5}, "rng": [3, [1, 2], None]},
        run_config=RunSettings().to_run_config(),
        wall_seconds=12.5,
    )


# ---------------------------------------------------------------------- save / load
def test_round_trip_keeps_weights_rows_and_state(tmp_path: Path) -> None:
    saved = _ckpt(2)
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.wall_seconds == 12.5
    assert set(loaded.weights) == set(saved.weights)
    for k, v in saved.weights.items():
        assert loaded.weights[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded.weights[k], v)
    assert math.isnan(loaded.metrics[0]["epsilon_max"])  # non-finite floats survive
    assert loaded.clients[0]["epsilon"] == math.inf
    assert loaded.metrics[1] == saved.metrics[1]
    assert loaded.strategy == saved.strategy
    assert loaded.run_config == saved.run_config


def test_index_is_strict_json_and_weights_are_plain_npz(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _ckpt(1))
    text = (tmp_path / "checkpoint" / "checkpoint.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    with np.load(tmp_path / "checkpoint" / "weights-round-0001.npz", allow_pickle=False) as npz:
        assert set(npz.files) == {"layer.weight", "layer.bias", "steps"}


def test_only_the_latest_weights_file_is_kept(tmp_path: Path) -> None:
    for r in range(4):
        save_checkpoint(tmp_path, _ckpt(r, value=float(r)))
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["checkpoint.json", "weights-round-0003.npz"]
    assert load_checkpoint(tmp_path).weights["layer.weight"][0, 0] == 3.0


def test_crash_while_writing_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, _ckpt(1, value=1.0))
    real_replace = os.replace

    def crash_on_index(src, dst):
        if str(dst).endswith("checkpoint.json"):
            raise OSError("disk full")  # the weights are in place, the index is not
        real_replace(src, dst)

    monkeypatch.setattr(atomic_mod.os, "replace", crash_on_index)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, _ckpt(2, value=2.0))
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 1
    assert loaded.weights["layer.weight"][0, 0] == 1.0


def test_crash_while_writing_weights_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    save_checkpoint(tmp_path, _ckpt(1, value=1.0))

    def crash(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(atomic_mod.os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, _ckpt(2, value=2.0))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).round == 1
    assert not (tmp_path / "checkpoint" / "weights-round-0002.npz").exists()


def test_missing_checkpoint_names_resume_and_path(tmp_path: Path) -> None:
    assert not has_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"resume='.*': no checkpoint at .*checkpoint.json"):
        load_checkpoint(tmp_path)


def test_damaged_weights_are_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _ckpt(1))
    path = tmp_path / "checkpoint" / "weights-round-0001.npz"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path)


def test_config_differences_ignore_operational_keys() -> None:
    a = RunSettings().to_run_config()
    b = RunSettings(num_rounds=9, round_timeout=5.0, min_replies=2, device="cpu").to_run_config()
    assert config_differences(a, b) == []
    c = RunSettings(privacy_target_epsilon=8.0).to_run_config()
    assert config_differences(a, c) == [("privacy-target-epsilon", 4.0, 8.0)]


# ---------------------------------------------------------------------- strategy state
def _settings(**kw) -> RunSettings:
    return RunSettings(num_clients=4, fraction_train=0.5, **kw)


class _Grid:
    """The Grid methods the strategy and the round loop call (unit tests only)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes
        self.sent: list[tuple[int, list[int], float]] = []
        self.pulls: list[float] = []

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def push_messages(self, messages):
        ids = []
        for m in messages:
            rnd = int(m.content.config_records["config"]["server-round"])
            self.sent.append((rnd, [m.metadata.dst_node_id], time.monotonic()))
            ids.append(f"m{len(self.sent)}")
        return ids

    def pull_messages(self, message_ids):  # the nodes never answer
        self.pulls.append(time.monotonic())
        return []


def test_restored_strategy_samples_what_the_original_would_have() -> None:
    grid = _Grid([11, 12, 13, 14])
    arrays = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    original = make_strategy(_settings())
    for r in (1, 2):
        original.configure_train(r, arrays, ConfigRecord(), grid)
    state = json.loads(json.dumps(original.strategy_state()))  # through JSON, as on disk

    def nodes(strategy) -> list[list[int]]:
        return [
            [
                m.metadata.dst_node_id
                for m in strategy.configure_train(r, arrays, ConfigRecord(), grid)
            ]
            for r in range(3, 9)
        ]

    expected = nodes(original)
    restored = make_strategy(_settings())
    restored.load_strategy_state(state)
    assert nodes(restored) == expected
    assert nodes(make_strategy(_settings())) != expected  # a fresh one would sample others


def test_reputations_survive_a_checkpoint() -> None:
    s = _settings(aggregation_strategy="scorer", aggregation_scorer="median_agreement")
    strategy = make_strategy(s)
    strategy.current = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    strategy.aggregate_train(1, [trained(1, 1.0, 10), trained(2, 1.1, 10), trained(3, 9.0, 10)])
    state = json.loads(json.dumps(strategy.strategy_state()))
    assert set(state["weighting"]["reputation"]["reputation"]) == {"1", "2", "3"}
    restored = make_strategy(s)
    restored.load_strategy_state(state)
    for cid in (1, 2, 3):
        assert restored.weighting.reputation[cid] == strategy.weighting.reputation[cid]
    assert restored.client_epsilon == strategy.client_epsilon == {1: 1.0, 2: 1.0, 3: 1.0}


def test_run_rounds_starts_at_start_round_and_passes_the_timeout() -> None:
    grid = _Grid([11, 12])
    strategy = WeightedFedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2, seed=0
    )
    evaluated: list[int] = []
    arrays = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=4,
        timeout=0.4,
        evaluate_fn=lambda r, a: evaluated.append(r),
        start_round=3,
    )
    assert evaluated == [3, 4]  # no round-0 evaluation, no rounds 1-2
    assert sorted({r for r, _, _ in grid.sent}) == [3, 4]
    round_3, round_4 = (min(t for r, _, t in grid.sent if r == k) for k in (3, 4))
    assert 0.4 <= round_4 - round_3 < 2.0  # each round waited out the timeout, no longer
    assert len(grid.pulls) >= 6  # pulled several times within 0.4 s (Flower's grid: once)
    # silent nodes are recorded as failed, with the reason
    outcomes = strategy.rounds[3].outcomes
    assert sorted(o.node_id for o in outcomes) == [11, 12]
    assert all(o.status == "failed" and "round_timeout" in o.reason for o in outcomes)
    assert strategy.rounds[3].kept_previous_model
    with pytest.raises(ValueError, match="federation.rounds=4 leaves nothing to run"):
        run_rounds(strategy, grid, arrays, 4, 1.0, start_round=5)


# ---------------------------------------------------------------------- min_replies, epsilon
def _weighted(**kw) -> WeightedFedAvg:
    strategy = WeightedFedAvg(
        fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2, seed=0, **kw
    )
    strategy.current = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    return strategy


def test_fewer_replies_than_min_replies_keep_the_previous_model() -> None:
    strategy = _weighted(min_replies=3)
    arrays, _ = strategy.aggregate_train(1, [trained(11, 1.0, 10), trained(12, 2.0, 10)])
    assert arrays is None
    log = strategy.rounds[1]
    assert log.kept_previous_model
    assert log.kept_reason == "2 usable replies, fewer than federation.min_replies=3"
    arrays, _ = strategy.aggregate_train(2, [trained(n, 1.0, 10) for n in (11, 12, 13)])
    assert arrays is not None and strategy.rounds[2].kept_reason == ""


def test_declined_round_records_why_it_kept_the_model() -> None:
    strategy = _weighted()
    arrays, _ = strategy.aggregate_train(1, [declined(11), declined(12)])
    assert arrays is None
    assert strategy.rounds[1].kept_reason == "no usable update (2 declined, 0 rejected, 0 failed)"


def test_an_epsilon_that_falls_means_a_lost_ledger_and_is_rejected() -> None:
    strategy = _weighted()
    strategy.aggregate_train(1, [trained(11, 1.0, 10, eps=2.0), trained(12, 1.0, 10, eps=2.0)])
    arrays, _ = strategy.aggregate_train(
        2, [trained(11, 1.0, 10, eps=0.5), trained(12, 1.0, 10, eps=2.5)]
    )
    assert arrays is not None
    by_pid = {o.partition_id: o for o in strategy.rounds[2].outcomes}
    assert by_pid[11].status == "rejected" and "ledger was lost" in by_pid[11].reason
    assert by_pid[12].status == "trained"
    assert strategy.client_epsilon == {11: 2.0, 12: 2.5}


# ---------------------------------------------------------------------- recorder
def test_recorder_restore_rewrites_tables_and_clears_the_summary(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{}")
    rec = RunRecorder(tmp_path, 4)
    rec.restore([{"round": 0, "test_accuracy": 0.1}], [{"round": 1, "node_id": 3}], 30.0)
    assert not (tmp_path / "summary.json").exists()
    assert rec.elapsed() >= 30.0
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["round,test_accuracy", "0,0.1"]


# ---------------------------------------------------------------------- experiments.resume
def _stored_run(tmp_path: Path, rounds: int = 4, done: int = 2) -> Path:
    cfg = OmegaConf.structured(FedPrivConf)
    cfg.federation.rounds = rounds
    cfg.privacy.target_epsilon = 3.0
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    save_checkpoint(tmp_path, _ckpt(done))
    return tmp_path


def test_resume_config_takes_the_stored_config(tmp_path: Path) -> None:
    run = _stored_run(tmp_path)
    given = OmegaConf.structured(FedPrivConf)  # the defaults: the user repeated nothing
    given.resume = str(run)
    cfg, out = resume_config(given, [f"resume={run}"], tmp_path / "elsewhere")
    assert out == run.resolve()
    assert cfg.privacy.target_epsilon == 3.0 and cfg.federation.rounds == 4
    assert cfg.resume == str(run.resolve())


def test_resume_config_lets_rounds_grow_and_refuses_other_changes(tmp_path: Path) -> None:
    run = _stored_run(tmp_path)
    given = OmegaConf.structured(FedPrivConf)
    given.resume, given.federation.rounds = str(run), 6
    cfg, _ = resume_config(given, ["federation.rounds=6"], tmp_path)
    assert cfg.federation.rounds == 6
    given.privacy.target_epsilon = 8.0
    with pytest.raises(ValueError, match=r"resume: privacy.target_epsilon was 3.0 in .*, got 8.0"):
        resume_config(given, ["federation.rounds=6", "privacy.target_epsilon=8"], tmp_path)
    given = OmegaConf.structured(FedPrivConf)
    given.resume, given.federation.rounds = str(run), 3
    with pytest.raises(ValueError, match="federation.rounds can only be raised, from 4, got 3"):
        resume_config(given, ["federation.rounds=3"], tmp_path)


def test_resume_config_of_a_finished_run_asks_for_more_rounds(tmp_path: Path) -> None:
    run = _stored_run(tmp_path, rounds=4, done=4)
    given = OmegaConf.structured(FedPrivConf)
    given.resume = str(run)
    with pytest.raises(ValueError, match="already completed round 4 of federation.rounds=4"):
        resume_config(given, [], tmp_path)


def test_resume_config_without_resume_changes_nothing(tmp_path: Path) -> None:
    given = OmegaConf.structured(FedPrivConf)
    assert resume_config(given, [], tmp_path) == (given, tmp_path)


def test_resume_argv_points_hydra_at_the_run(tmp_path: Path) -> None:
    argv = ["run.py", f"resume={tmp_path}"]
    assert resume_argv(argv) == [*argv, f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null"]
    mine = ["run.py", f"resume={tmp_path}", "hydra.run.dir=/x"]
    assert resume_argv(mine) == [*mine, "hydra.output_subdir=null"]
    assert resume_argv(["run.py", "resume=/does/not/exist"]) == ["run.py", "resume=/does/not/exist"]
    assert resume_argv(["run.py", "seed=1"]) == ["run.py", "seed=1"]


def test_min_replies_is_validated() -> None:
    with pytest.raises(ValueError, match=r"federation.min_replies must be in \[1, federation"):
        RunSettings(min_replies=4, num_clients=3).validate()
    RunSettings(min_replies=3, num_clients=3).validate()


def test_after_the_first_round_a_lost_node_does_not_stop_the_run() -> None:
    grid = _Grid([11, 12, 13])
    strategy = WeightedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_available_nodes=3,
        seed=0,
        node_wait_timeout=0.2,
        min_replies=2,
    )
    arrays = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    assert len(strategy.configure_train(1, arrays, ConfigRecord(), grid)) == 3
    grid.nodes = [11, 13]  # node 12 died
    msgs = strategy.configure_train(2, arrays, ConfigRecord(), grid)
    assert sorted(m.metadata.dst_node_id for m in msgs) == [11, 13]
    grid.nodes = [13]  # fewer than min_replies: the round cannot go on
    with pytest.raises(TimeoutError, match=r"only 1 of federation.min_replies=2 nodes"):
        strategy.configure_train(3, arrays, ConfigRecord(), grid)


def test_the_first_round_waits_for_every_node() -> None:
    strategy = WeightedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_available_nodes=3,
        seed=0,
        node_wait_timeout=0.2,
    )
    arrays = to_record({"w": np.zeros(SHAPE, dtype=np.float32)})
    with pytest.raises(TimeoutError, match=r"only 2 of federation.num_clients=3 nodes"):
        strategy.configure_train(1, arrays, ConfigRecord(), _Grid([11, 12]))


def test_all_zero_weights_record_why_the_model_was_kept() -> None:
    strategy = _weighted(weighting=lambda r: (np.zeros(len(r.client_ids)), r.updates, {}))
    arrays, _ = strategy.aggregate_train(1, [trained(11, 1.0, 10), trained(12, 2.0, 10)])
    assert arrays is None
    assert strategy.rounds[1].kept_reason == "every aggregation weight was 0"
