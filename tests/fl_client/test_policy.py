"""The node owns its budget: policy from the node config, a ledger that cannot be lost or raced.

The ClientApp's own train and evaluate handlers run in process here, on a node config like
``experiments.deploy supernode`` writes, with run configs a server chooses.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

import fl_client.app as client_app
from fl_client.policy import NodePolicy
from privacy import PrivacyLedger, SampledGaussianEvent
from privacy.ledger_file import LedgerFile, LedgerLostError, init_ledger
from protocol import keys
from protocol.records import to_record
from protocol.settings import RunSettings
from tasks.models import ModelSpec, build_model, get_weights

RUN = RunSettings(num_clients=3, num_rounds=2, privacy_target_epsilon=2.0)


def _node(data: Path, ledger: Path, **policy: object) -> dict:
    return {
        "partition-id": 0,
        "data-path": str(data),
        "ledger-dir": str(ledger),
        "max-epsilon": 10.0,
        **{k.replace("_", "-"): v for k, v in policy.items()},
    }


def _context(node: dict, settings: RunSettings) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config=node,
        state=RecordDict(),
        run_config=settings.to_run_config(),
    )


def _message(kind: str = MessageType.TRAIN, rnd: int = 1) -> Message:
    spec = ModelSpec("mlp", (1, 8, 8), 10)
    content = RecordDict(
        {
            keys.ARRAYS: to_record(get_weights(build_model(spec, 0))),
            keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: rnd}),
        }
    )
    return Message(content=content, dst_node_id=1, message_type=kind)


def _train(node: dict, settings: RunSettings, rnd: int = 1, context: Context | None = None):
    reply = client_app.train(_message(rnd=rnd), context or _context(node, settings))
    metrics = reply.content.metric_records[keys.METRICS]
    reason = str(reply.content.config_records[keys.STATUS][keys.REASON])
    return int(metrics[keys.DECLINED]), reason, keys.ARRAYS in reply.content.array_records


# ---------------------------------------------------------------------- the policy itself
def test_policy_from_node_config() -> None:
    simulated = NodePolicy.from_node_config({"partition-id": 0})
    assert not simulated.owned and simulated.refuse_train(RUN, 100) == ""
    owned = NodePolicy.from_node_config(
        {"data-path": "x.csv", "ledger-dir": "l", "max-epsilon": "1.5", "allow-evaluation": "true"}
    )
    assert owned.owned and owned.strict_ledger and owned.max_epsilon == 1.5
    assert owned.modes == ("dpsgd", "functional") and owned.allow_evaluation


@pytest.mark.parametrize(
    ("node", "needle"),
    [
        ({"data-path": "x.csv", "max-epsilon": 1}, "ledger-dir is required"),
        ({"data-path": "x.csv", "ledger-dir": "l"}, "max-epsilon is required"),
        ({"data-path": "x.csv", "ledger-dir": "l", "max-epsilon": -1}, "max-epsilon must be > 0"),
        (
            {"data-path": "x", "ledger-dir": "l", "max-epsilon": 1, "max-delta": 1},
            r"max-delta must be in \(0, 1\), got 1",
        ),
        (
            {"data-path": "x", "ledger-dir": "l", "max-epsilon": 1, "max-delta": "tiny"},
            "max-delta must be in",
        ),
        (
            {"data-path": "x", "ledger-dir": "l", "max-epsilon": 1, "allow-evaluation": "yes"},
            "allow-evaluation must be true or false",
        ),
    ],
)
def test_a_bad_node_config_names_the_key(node, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        NodePolicy.from_node_config(node)


# ---------------------------------------------------------------------- the ClientApp enforces it
def test_a_node_capped_at_1_declines_a_run_asking_for_2(data_file: Path, tmp_path: Path) -> None:
    init_ledger(tmp_path, 0)
    declined, reason, sent = _train(_node(data_file, tmp_path, max_epsilon=1.0), RUN)
    assert declined == 1 and not sent
    assert "caps epsilon at 1 over all runs" in reason
    assert PrivacyLedger.load(tmp_path / "client-0.json").events == ()


def test_a_dp_only_node_refuses_privacy_none(data_file: Path, tmp_path: Path) -> None:
    init_ledger(tmp_path, 0)
    none = RunSettings(num_clients=3, num_rounds=2, privacy_mode="none")
    declined, reason, sent = _train(_node(data_file, tmp_path), none)
    assert declined == 1 and not sent and "allows privacy.mode in ['dpsgd', 'functional']" in reason


def test_a_node_refuses_reproducible_noise_and_a_wrong_delta(
    data_file: Path, tmp_path: Path
) -> None:
    init_ledger(tmp_path, 0)
    rep = RunSettings(num_clients=3, num_rounds=2, privacy_reproducible_noise=True)
    assert "never derives noise from the run's seed" in _train(_node(data_file, tmp_path), rep)[1]
    big_delta = RunSettings(num_clients=3, num_rounds=2, privacy_delta=0.1)
    assert "not below 1/n" in _train(_node(data_file, tmp_path), big_delta)[1]


def test_a_node_caps_delta_so_a_larger_delta_cannot_stretch_its_budget(
    data_file: Path, tmp_path: Path
) -> None:
    """The same events give a smaller epsilon at a larger delta: ``max-delta`` stops that."""
    from privacy.accounting import get_accountant

    pld = get_accountant("pld")
    history = ((1.0, 0.01, 1000),)
    assert pld.epsilon(history, 1e-3) < 0.8 * pld.epsilon(history, 1e-5)  # what a server gains
    init_ledger(tmp_path, 0)
    node = _node(data_file, tmp_path, max_delta=1e-5)
    assert NodePolicy.from_node_config(node).max_delta == 1e-5
    larger = RunSettings(num_clients=3, num_rounds=2, privacy_delta=1e-4)  # still < 1/n
    declined, reason, sent = _train(node, larger)
    assert declined == 1 and not sent
    assert "caps delta at 1e-05; the run asks for privacy.delta=0.0001" in reason
    assert PrivacyLedger.load(tmp_path / "client-0.json").events == ()
    assert NodePolicy.from_node_config(_node(data_file, tmp_path)).refuse_train(larger, 500) == ""
    declined, reason, sent = _train(node, RunSettings(num_clients=3, num_rounds=2))  # 1e-5
    assert declined == 0 and sent, reason


def test_a_node_enforces_delta_when_the_server_picks_gaussian_functional_noise(
    data_file: Path, tmp_path: Path
) -> None:
    """The run config decides whether the functional mode spends delta; the node reads it."""
    policy = NodePolicy.from_node_config(_node(data_file, tmp_path))
    run = RunSettings(
        num_clients=3,
        num_rounds=2,
        privacy_mode="functional",
        model_name="fm_network",
        privacy_delta=0.01,
    )
    assert policy.refuse_train(run, n_train=500) == ""  # Laplace: pure DP, no delta spent
    gaussian = dataclasses.replace(run, privacy_functional_noise="gaussian")
    assert "privacy.delta=0.01 is not below 1/n" in policy.refuse_train(gaussian, n_train=500)
    assert policy.refuse_train(gaussian, n_train=50) == ""


def test_a_node_that_allows_evaluation_only_if_its_operator_says_so(
    data_file: Path, tmp_path: Path
) -> None:
    init_ledger(tmp_path, 0)
    run = RunSettings(num_clients=3, num_rounds=2, fraction_evaluate=1.0, privacy_eval_epsilon=0.1)
    reply = client_app.evaluate_global(
        _message(MessageType.EVALUATE), _context(_node(data_file, tmp_path), run)
    )
    reason = str(reply.content.config_records[keys.STATUS][keys.REASON])
    assert "does not allow federated evaluation" in reason
    assert keys.VAL_ACCURACY_DP not in reply.content.metric_records[keys.METRICS]
    allowed = _node(data_file, tmp_path, allow_evaluation="true")
    reply = client_app.evaluate_global(_message(MessageType.EVALUATE), _context(allowed, run))
    assert keys.VAL_ACCURACY_DP in reply.content.metric_records[keys.METRICS]
    (event,) = PrivacyLedger.load(tmp_path / "client-0.json").events
    assert event.mechanism == "evaluation"  # type: ignore[union-attr]


def test_a_node_whose_ledger_was_deleted_refuses_to_train(data_file: Path, tmp_path: Path) -> None:
    node = _node(data_file, tmp_path)
    # never set up: no ledger at all
    declined, reason, _ = _train(node, RUN)
    assert declined == 1 and "ledger is missing or lost events" in reason
    init_ledger(tmp_path, 0)
    declined, _, sent = _train(node, RUN)
    assert declined == 0 and sent
    (tmp_path / "client-0.json").unlink()  # lost
    declined, reason, sent = _train(node, RUN, rnd=2)
    assert declined == 1 and not sent and "ledger is missing or lost events" in reason
    with pytest.raises(FileExistsError):
        init_ledger(tmp_path, 0)  # the head is still there: only on purpose
    init_ledger(tmp_path, 0, force=True)
    assert _train(node, RUN, rnd=2)[0] == 0


def test_a_ledger_with_deleted_events_is_refused(tmp_path: Path) -> None:
    init_ledger(tmp_path, 0)
    store = LedgerFile(tmp_path / "client-0.json", 1e-5, "pld", strict=True)
    ledger = store.load()
    for r in (1, 2):
        ledger.record(SampledGaussianEvent(1.0, 0.1, 10, r))
    store.save(ledger)
    data = json.loads(store.path.read_text())
    data["events"] = data["events"][:1]  # someone trims the file
    store.path.write_text(json.dumps(data))
    with pytest.raises(LedgerLostError, match="fewer than its last known state"):
        store.load()
    data["events"] = [dict(data["events"][0], steps=1), *data["events"]]  # or rewrites one
    store.path.write_text(json.dumps(data))
    with pytest.raises(LedgerLostError, match="no longer matches"):
        store.load()


def test_the_lock_is_held_from_the_budget_check_through_the_save(tmp_path: Path) -> None:
    """Two writers that read, wait and append: with the lock, no release is lost."""
    init_ledger(tmp_path, 0)
    store = LedgerFile(tmp_path / "client-0.json", 1e-5, "pld", strict=True)

    def spend(r: int) -> None:
        with store.exclusive():
            ledger = store.load()
            time.sleep(0.2)  # the training in between
            ledger.record(SampledGaussianEvent(1.0, 0.1, 10, r))
            store.save(ledger)

    threads = [threading.Thread(target=spend, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e.round for e in store.load().events) == [1, 2]


def test_two_runs_on_one_node_at_once_leave_every_event_in_the_ledger(
    data_file: Path, tmp_path: Path
) -> None:
    init_ledger(tmp_path, 0)
    node = _node(data_file, tmp_path)
    results: list[int] = []

    def run(run_id: int) -> None:
        settings = RunSettings(num_clients=3, num_rounds=2, privacy_target_epsilon=8.0, seed=run_id)
        context = _context(node, settings)
        results.append(_train(node, settings, context=context)[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0]
    assert len(PrivacyLedger.load(tmp_path / "client-0.json").events) == 2
    assert np.isfinite(PrivacyLedger.load(tmp_path / "client-0.json").epsilon())
