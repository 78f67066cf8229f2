"""The guarantee against the server: secret noise, no reuse, nothing unaccounted in a reply.

The adversary is the server: it writes the run config (and so the seed), sends the global
weights, and reads every field of every reply. These tests replay a client's round with all of
that and check that the release cannot be reproduced (secret noise), that a round trained
twice gets fresh noise and a second ledger event, that an empty Poisson batch still takes a
noised step, and that no reply field computed from private data escapes the ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fl_messages import server_identity
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fl_client.app import (
    ClientFailedError,
    evaluate_reply,
    quantised_seconds,
    sanitised,
    train_reply,
)
from privacy import PrivacyLedger, derive_seed
from privacy.functional import objectives_from_arrays
from privacy.laplace import SeededSource, discrete_laplace_array
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.data import ClientData, load_client_data, specs_from_settings
from tasks.models import ModelSpec, build_model, get_weights
from tasks.training import (
    EvalConfig,
    LocalTask,
    MemoryLedgerStore,
    TrainConfig,
    evaluate_private,
    trainer_for,
)
from tasks.training.dpsgd import plan_file
from tasks.training.functional import FUNCTIONAL_KEY, functional_mechanism

DIGITS = RunSettings(num_clients=3, num_rounds=2, privacy_target_epsilon=4.0, batch_size=32)
ADULT = RunSettings(
    dataset_name="adult",
    model_name="logistic",
    privacy_mode="functional",
    privacy_target_epsilon=1.0,
    num_clients=10,
    num_rounds=2,
)


@pytest.fixture(autouse=True)
def _as_server() -> Iterator[None]:
    with server_identity():
        yield


def _data(settings: RunSettings, pid: int = 0, n: int | None = None) -> ClientData:
    dspec, pspec = specs_from_settings(settings)
    data = load_client_data(dspec, pspec, pid, settings.val_fraction)
    if n is not None:
        data = dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])
    return data


def _model(settings: RunSettings, data: ClientData) -> torch.nn.Module:
    spec = ModelSpec(
        settings.model_name,
        data.input_shape,
        data.num_classes,
        settings.model_hidden,
        settings.dataset_name,
    )
    return build_model(spec, seed=settings.seed)


def _task(
    settings: RunSettings,
    data: ClientData,
    rnd: int = 1,
    store: Any = None,
    state: dict | None = None,
    state_dir: Path | None = None,
    pid: int = 0,
) -> LocalTask:
    """The client's task exactly as the ClientApp builds it, from what the server knows."""
    return LocalTask(
        config=TrainConfig.from_settings(settings),
        data=data,
        model=_model(settings, data),
        device=torch.device("cpu"),
        server_round=rnd,
        seed=derive_seed(settings.seed, pid, rnd),  # the server can compute this
        ledger=store if store is not None else MemoryLedgerStore(settings.privacy_delta),
        state={} if state is None else state,
        partition_id=pid,
        state_dir=state_dir,
    )


def _train(settings: RunSettings, data: ClientData, **kw: Any) -> dict[str, np.ndarray]:
    result = trainer_for(settings.privacy_mode)(_task(settings, data, **kw))
    assert result.weights is not None, result.reason
    return result.weights


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


# --------------------------------------------------------------------------- replay
def test_server_replay_of_a_dpsgd_round_does_not_reproduce_the_release() -> None:
    data = _data(DIGITS, n=120)
    released = _train(DIGITS, data)
    replayed = _train(DIGITS, data)  # everything the server knows: config, seed, weights, id
    assert _max_diff(released, replayed) > 1e-3
    # the failure the default closes: with reproducible noise the replay is exact, so the
    # server could test membership with certainty
    rep = dataclasses.replace(DIGITS, privacy_reproducible_noise=True)
    assert _max_diff(_train(rep, data), _train(rep, data)) == 0.0


def test_functional_release_minus_noise_derived_from_the_config_is_not_the_objective() -> None:
    data = _data(ADULT)

    def attack(settings: RunSettings) -> float:
        """How far the release minus the config-derived noise is from the exact objective."""
        task = _task(settings, data)
        trainer_for("functional")(task)
        stored = task.state[FUNCTIONAL_KEY]["arrays"]
        released = objectives_from_arrays({k: np.asarray(v) for k, v in stored.items()})[0]
        model = task.model
        mech = functional_mechanism(TrainConfig.from_settings(settings), model.objective_kind, 1)
        exact = mech.objective(model.fm_features(data.x_train), model.fm_targets(data.y_train)[0])
        coef = exact.released_coefficients()
        snapped = mech.snapped(exact.dim, coef.size)
        # the server's guess of the noise: the client's code path with the config's seed
        scale = Fraction(snapped.integer_sensitivity) / Fraction(snapped.epsilon)
        source = SeededSource(derive_seed(settings.seed, 0, 0xF0C7))
        guess = snapped.gamma * discrete_laplace_array(scale, coef.size, source)
        recovered = released.released_coefficients() - guess
        return float(np.abs(recovered - coef).max() / snapped.gamma)

    assert attack(ADULT) > 100  # off by many grid steps: the noise stays unknown
    # with reproducible noise the server recovers the exact objective (to the grid's rounding)
    assert attack(dataclasses.replace(ADULT, privacy_reproducible_noise=True)) <= 0.5 + 1e-9


def test_two_federations_with_the_same_seed_differ_unless_noise_is_reproducible() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from _inprocess import run_rounds

    from fl_server.registry import make_strategy

    def federation(settings: RunSettings) -> dict[str, np.ndarray]:
        data = {pid: _data(settings, pid, n=100) for pid in range(settings.num_clients)}
        first = data[0]
        spec = ModelSpec(settings.model_name, first.input_shape, first.num_classes)
        initial = get_weights(build_model(spec, settings.seed))
        return run_rounds(settings, spec, data, make_strategy(settings, None), initial)

    a, b = federation(DIGITS), federation(DIGITS)
    assert _max_diff(a, b) > 1e-3
    rep = dataclasses.replace(DIGITS, privacy_reproducible_noise=True)
    assert _max_diff(federation(rep), federation(rep)) == 0.0


# --------------------------------------------------------------------------- no reuse
class FileStore:
    """The node's ledger on disk, as fl_client.ledger_store keeps it (without Flower)."""

    def __init__(self, path: Path, delta: float) -> None:
        self.path, self.delta = path, delta

    def load(self) -> PrivacyLedger:
        return PrivacyLedger.load_or_new(self.path, self.delta, "pld")

    def save(self, ledger: PrivacyLedger) -> None:
        ledger.save(self.path)


def test_a_round_trained_again_after_a_restart_gets_fresh_noise_and_a_second_event(
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(DIGITS, num_rounds=3, output_dir=str(tmp_path))
    data = _data(settings, n=120)
    store = FileStore(tmp_path / "client-0.json", settings.privacy_delta)
    first = _train(settings, data, store=store, state={}, state_dir=tmp_path)
    plans = plan_file(tmp_path, 0).read_text()
    # the node restarts (node state lost) and the run resumes with more rounds: round 1 is
    # trained again from the same global weights
    resumed = dataclasses.replace(settings, num_rounds=5)
    again = _train(resumed, data, store=store, state={}, state_dir=tmp_path)
    assert _max_diff(first, again) > 1e-3  # fresh noise
    events = PrivacyLedger.load(store.path).events
    assert [e.round for e in events] == [1, 1]  # both releases are accounted
    assert plan_file(tmp_path, 0).read_text() == plans  # the stored plan was used, not re-planned
    nm = {e.noise_multiplier for e in events}  # type: ignore[union-attr]
    assert len(nm) == 1


def test_an_empty_poisson_batch_still_takes_a_noised_step() -> None:
    # 1 record in a batch of 1 per step at rate 1/2 on 2 records: empty batches are common
    settings = dataclasses.replace(DIGITS, batch_size=1, local_epochs=20, num_rounds=1)
    data = _data(settings, n=2)
    store = MemoryLedgerStore(settings.privacy_delta)
    task = _task(settings, data, store=store)
    trainer_for("dpsgd")(task)
    (event,) = store.ledger.events
    plan = next(iter(task.state["plans"].values()))
    assert event.steps == plan["steps_per_round"] == 40  # type: ignore[union-attr]


# --------------------------------------------------------------------------- every field
PUBLIC = {
    keys.NUM_EXAMPLES: "n: public under replace-one",
    keys.PARTITION_ID: "the client's identity",
    keys.EPSILON: "the ledger's epsilon: a function of public plan and step counts",
    keys.DELTA: "from the config",
    keys.DECLINED: "from the ledger and the config",
    keys.TRAIN_SECONDS: "whole seconds",
    keys.STATE: "trained or declined",
    keys.REASON: "texts of the code, with public numbers",
}
COVERED = {
    keys.ARRAYS: "DP-SGD's noised weights, or post-processing of the functional release",
    keys.FM_OBJECTIVES: "the functional mechanism's release (PureDpEvent)",
    keys.TRAIN_LOSS_DP: "post-processing of the functional release",
    keys.VAL_ACCURACY_DP: "the evaluation release (PureDpEvent 'evaluation')",
    keys.VAL_LOSS_DP: "the evaluation release (PureDpEvent 'evaluation')",
}


def _fields(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rec in msg.content.metric_records.items():
        out |= {key: value for key, value in rec.items()}
        assert name == keys.METRICS
    for name, rec in msg.content.config_records.items():
        out |= {key: value for key, value in rec.items()}
        assert name == keys.STATUS
    for name, arrays in msg.content.array_records.items():
        out[name] = from_record(arrays)
    return out


def _neighbours(data: ClientData) -> tuple[ClientData, ClientData]:
    """Two datasets of the same size differing in one training and one validation record."""
    x, y = data.x_train.copy(), data.y_train.copy()
    x[0], y[0] = x[1], y[1]
    xv, yv = data.x_val.copy(), data.y_val.copy()
    xv[0], yv[0] = xv[1], yv[1]
    return data, dataclasses.replace(data, x_train=x, y_train=y, x_val=xv, y_val=yv)


def _incoming(settings: RunSettings, data: ClientData, kind: str) -> Message:
    arrays = to_record(get_weights(_model(settings, data)))
    config = ConfigRecord({keys.SERVER_ROUND: 1})
    return Message(
        content=RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config}),
        dst_node_id=1,
        message_type=kind,
    )


def _walk(a: Message, b: Message) -> set[str]:
    """Fields that differ between the replies on two neighbours; fail on an unknown field."""
    fa, fb = _fields(a), _fields(b)
    assert fa.keys() == fb.keys()
    unknown = set(fa) - set(PUBLIC) - set(COVERED)
    assert not unknown, f"reply fields nobody classified: {unknown}"
    differ = set()
    for key in fa:
        if key == keys.TRAIN_SECONDS:
            # wall time, quantised to whole seconds: it varies with the machine's load, not
            # the record (docs/privacy.md: coarse timing reveals n at most); the check here is
            # that it is quantised
            assert float(fa[key]).is_integer() and float(fb[key]).is_integer()
            continue
        if isinstance(fa[key], dict):
            same = all(np.array_equal(fa[key][k], fb[key][k]) for k in fa[key])
        else:
            same = fa[key] == fb[key]
        if not same:
            differ.add(key)
    leaked = differ - set(COVERED)
    assert not leaked, f"fields computed from private data with no ledger event: {leaked}"
    return differ


@pytest.mark.parametrize("settings", [DIGITS, ADULT], ids=["dpsgd", "functional"])
def test_every_train_reply_field_is_public_or_covered_by_the_ledger(settings) -> None:
    # the same (reproducible) noise on both neighbours, so any difference is the data's
    rep = dataclasses.replace(settings, privacy_reproducible_noise=True)
    d1, d2 = _neighbours(_data(rep, n=200))
    replies = []
    for data in (d1, d2):
        store = MemoryLedgerStore(rep.privacy_delta)
        result = trainer_for(rep.privacy_mode)(_task(rep, data, store=store))
        assert store.ledger.events, "a release without a ledger event"
        replies.append(train_reply(_incoming(rep, data, MessageType.TRAIN), result, rep, 0))
    differ = _walk(*replies)
    assert keys.ARRAYS in differ  # the walk can see a data-dependent field
    assert keys.TRAIN_LOSS not in _fields(replies[0])


@pytest.mark.parametrize("eval_epsilon", [0.0, 0.5])
def test_every_evaluate_reply_field_is_public_or_covered_by_the_ledger(eval_epsilon) -> None:
    rep = dataclasses.replace(
        DIGITS, privacy_reproducible_noise=True, privacy_eval_epsilon=eval_epsilon
    )
    d1, d2 = _neighbours(_data(rep))
    replies, stores = [], []
    for data in (d1, d2):
        store = MemoryLedgerStore(rep.privacy_delta)
        model = _model(rep, data)
        config = EvalConfig.from_settings(rep)
        result = evaluate_private(
            config, model, data.x_val, data.y_val, torch.device("cpu"), store, 1, SeededSource(7)
        )
        replies.append(evaluate_reply(_incoming(rep, data, MessageType.EVALUATE), result, 0))
        stores.append(store)
    _walk(*replies)
    fields = _fields(replies[0])
    assert keys.VAL_ACCURACY not in fields and keys.VAL_LOSS not in fields
    if eval_epsilon == 0:
        assert fields[keys.DECLINED] == 1 and not stores[0].ledger.events
    else:
        assert 0 <= fields[keys.VAL_ACCURACY_DP] <= 1
        (event,) = stores[0].ledger.events
        assert event.mechanism == "evaluation" and event.epsilon == 0.5  # type: ignore[union-attr]


def test_noisy_validation_accuracy_is_unbiased_and_its_noise_has_scale_one_over_epsilon() -> None:
    rep = dataclasses.replace(DIGITS, privacy_eval_epsilon=0.5)
    data = _data(rep)
    model = _model(rep, data)
    exact = float((model(torch.as_tensor(data.x_val)).argmax(1).numpy() == data.y_val).mean())
    n = len(data.y_val)
    draws = []
    source = SeededSource(3)
    config = EvalConfig.from_settings(rep)
    for _ in range(400):
        store = MemoryLedgerStore(rep.privacy_delta)
        r = evaluate_private(
            config, model, data.x_val, data.y_val, torch.device("cpu"), store, 1, source
        )
        draws.append(r.accuracy_dp * n)
    noise = np.array(draws) - exact * n
    # discrete Laplace of scale 2: mean 0, E|Z| close to 2 (clipping to [0, n] aside)
    assert abs(noise.mean()) < 0.5
    assert 1.6 < np.abs(noise).mean() < 2.4
    assert Fraction(1) / Fraction(0.5) == 2


def test_an_error_reply_carries_no_data() -> None:
    @sanitised("train")
    def handler(msg: Message, context: Any) -> Message:
        raise ValueError("row 17 of /data/visits.csv has age=93.5")

    with pytest.raises(ClientFailedError) as err:
        handler(_incoming(DIGITS, _data(DIGITS, n=10), MessageType.TRAIN), None)
    text = str(err.value)
    assert "17" not in text and "93.5" not in text and "visits" not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_training_time_is_sent_in_whole_seconds() -> None:
    assert quantised_seconds(0.31) == 0.0 and quantised_seconds(2.7) == 3.0
    assert quantised_seconds(float("nan")) == 0.0


def test_gdp_is_refused_before_anything_starts() -> None:
    from experiments.config import check_data

    with pytest.raises(ValueError, match=r"privacy\.accountant='gdp' is refused"):
        check_data(dataclasses.replace(DIGITS, privacy_accountant="gdp"))
