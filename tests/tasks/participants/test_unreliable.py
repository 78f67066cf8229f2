"""Simulated unreliable participants: who they are, and what each kind corrupts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from protocol.settings import RunSettings
from tasks.data import ClientData, load_client_data, specs_from_settings
from tasks.participants import (
    DATA_KINDS,
    REPLY_KINDS,
    ParticipantsConfig,
    check_kind,
    corrupt_data,
    corrupt_reply,
    unreliable_clients,
)

NUM_CLIENTS = 4


def _p(settings: RunSettings) -> ParticipantsConfig:
    """The participants' parameters, converted as the ClientApp converts them."""
    return ParticipantsConfig.from_settings(settings)


def _settings(kind: str = "label_flip", fraction: float = 0.5, **kwargs) -> RunSettings:
    return RunSettings(
        num_clients=NUM_CLIENTS,
        participants_kind=kind,
        participants_unreliable_fraction=fraction,
        **kwargs,
    ).validate()


@pytest.fixture(scope="module")
def clients() -> list[ClientData]:
    """Every client's real digits data (iid, 4 clients)."""
    settings = _settings()
    dspec, pspec = specs_from_settings(settings)
    return [load_client_data(dspec, pspec, p, settings.val_fraction) for p in range(NUM_CLIENTS)]


def _corrupted(clients: list[ClientData], settings: RunSettings) -> dict[int, ClientData]:
    """The corrupted data of every unreliable client; checks the reliable ones are untouched."""
    bad = unreliable_clients(_p(settings))
    assert len(bad) == 2
    out = {}
    for pid, data in enumerate(clients):
        got = corrupt_data(data, _p(settings), pid)
        if pid in bad:
            out[pid] = got
            # validation data is never corrupted (it measures the client honestly)
            np.testing.assert_array_equal(got.x_val, data.x_val)
            np.testing.assert_array_equal(got.y_val, data.y_val)
            assert (got.input_shape, got.num_classes) == (data.input_shape, data.num_classes)
        else:
            for f in dataclasses.fields(ClientData):
                np.testing.assert_array_equal(getattr(got, f.name), getattr(data, f.name))
    return out


# ---------------------------------------------------------------------- who is unreliable
def test_unreliable_clients_are_deterministic_and_sized() -> None:
    for n, fraction in [(10, 0.3), (10, 0.25), (7, 0.5), (20, 0.1), (3, 1 / 3)]:
        settings = RunSettings(num_clients=n, participants_unreliable_fraction=fraction, seed=3)
        chosen = unreliable_clients(_p(settings))
        assert chosen == unreliable_clients(_p(settings))
        assert len(chosen) == round(fraction * n)
        assert chosen == sorted(set(chosen))
        assert all(0 <= c < n for c in chosen)


def test_unreliable_clients_depend_on_seed() -> None:
    sets = {
        tuple(
            unreliable_clients(
                _p(RunSettings(num_clients=10, participants_unreliable_fraction=0.3, seed=s))
            )
        )
        for s in range(10)
    }
    assert len(sets) > 1


def test_fraction_zero_and_one() -> None:
    assert unreliable_clients(_p(RunSettings(num_clients=6))) == []
    everyone = RunSettings(num_clients=6, participants_unreliable_fraction=1.0)
    assert unreliable_clients(_p(everyone)) == list(range(6))


def test_fraction_above_one_is_rejected() -> None:
    settings = RunSettings(participants_unreliable_fraction=1.5)
    with pytest.raises(ValueError, match=r"participants\.unreliable_fraction"):
        settings.validate()
    with pytest.raises(ValueError, match=r"participants\.unreliable_fraction"):
        unreliable_clients(_p(settings))


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"participants\.kind") as err:
        check_kind("sleeper_agent")
    assert "sleeper_agent" in str(err.value)
    assert "label_flip" in str(err.value) and "free_rider_stale" in str(err.value)
    for kind in [*DATA_KINDS, *REPLY_KINDS]:
        check_kind(kind)


def test_unknown_kind_fails_when_corrupting_data(clients: list[ClientData]) -> None:
    settings = RunSettings(
        num_clients=NUM_CLIENTS, participants_unreliable_fraction=1.0, participants_kind="nope"
    )
    with pytest.raises(ValueError, match=r"participants\.kind"):
        corrupt_data(clients[0], _p(settings), 0)


# ---------------------------------------------------------------------- data kinds
def test_label_flip(clients: list[ClientData]) -> None:
    for pid, got in _corrupted(clients, _settings("label_flip")).items():
        np.testing.assert_array_equal(got.y_train, 9 - clients[pid].y_train)
        np.testing.assert_array_equal(got.x_train, clients[pid].x_train)


def test_label_noise_changes_the_expected_share(clients: list[ClientData]) -> None:
    changed, total = 0, 0
    for pid, got in _corrupted(clients, _settings("label_noise")).items():
        y = clients[pid].y_train
        assert got.y_train.shape == y.shape
        assert got.y_train.min() >= 0 and got.y_train.max() <= 9
        np.testing.assert_array_equal(got.x_train, clients[pid].x_train)
        changed += int((got.y_train != y).sum())
        total += len(y)
    # rate 0.5 of labels redrawn uniformly; 1 in 10 redraws hits the old label
    assert changed / total == pytest.approx(0.5 * 9 / 10, abs=0.06)


def test_label_noise_rate_zero_changes_nothing(clients: list[ClientData]) -> None:
    settings = _settings("label_noise", participants_noise_rate=0.0)
    for pid, got in _corrupted(clients, settings).items():
        np.testing.assert_array_equal(got.y_train, clients[pid].y_train)


def test_feature_noise(clients: list[ClientData]) -> None:
    settings = _settings("feature_noise", participants_feature_noise_std=1.0)
    for pid, got in _corrupted(clients, settings).items():
        x = clients[pid].x_train
        np.testing.assert_array_equal(got.y_train, clients[pid].y_train)
        assert got.x_train.shape == x.shape and got.x_train.dtype == np.float32
        diff = got.x_train - x
        assert np.all(diff != 0)
        assert float(diff.std()) == pytest.approx(1.0, abs=0.05)


def test_tiny_data(clients: list[ClientData]) -> None:
    settings = _settings("tiny_data", participants_tiny_size=7)
    for pid, got in _corrupted(clients, settings).items():
        data = clients[pid]
        assert len(got.y_train) == len(got.x_train) == 7 < len(data.y_train)
        # the kept examples are real (x, y) pairs of this client, without repeats
        rows = {(x.tobytes(), int(y)) for x, y in zip(data.x_train, data.y_train, strict=True)}
        kept = [(x.tobytes(), int(y)) for x, y in zip(got.x_train, got.y_train, strict=True)]
        assert set(kept) <= rows and len(set(kept)) == 7


def test_out_of_distribution(clients: list[ClientData]) -> None:
    for pid, got in _corrupted(clients, _settings("out_of_distribution")).items():
        x = clients[pid].x_train
        n = len(x)
        np.testing.assert_array_equal(got.y_train, clients[pid].y_train)
        assert got.x_train.shape == x.shape
        before, after = x.reshape(n, -1), got.x_train.reshape(n, -1)
        # each row keeps its multiset of values ...
        np.testing.assert_array_equal(np.sort(after, axis=1), np.sort(before, axis=1))
        # ... but not their order
        assert not np.array_equal(after, before)
        assert np.mean(np.any(after != before, axis=1)) > 0.9


def test_reply_kinds_leave_data_alone(clients: list[ClientData]) -> None:
    for kind in REPLY_KINDS:
        settings = _settings(kind, fraction=1.0)
        assert corrupt_data(clients[0], _p(settings), 0) is clients[0]


# ---------------------------------------------------------------------- reply kinds
def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "0.weight": rng.normal(0.0, 0.1, (8, 64)).astype(np.float32),
        "0.bias": rng.normal(0.0, 0.1, 8).astype(np.float32),
    }


def test_free_rider_stale_returns_the_global_weights() -> None:
    settings = _settings("free_rider_stale")
    bad = unreliable_clients(_p(settings))
    global_w, trained = _weights(0), _weights(1)
    for pid in range(NUM_CLIENTS):
        got = corrupt_reply(trained, global_w, _p(settings), pid)
        expected = global_w if pid in bad else trained
        assert set(got) == set(expected)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
    got = corrupt_reply(trained, global_w, _p(settings), bad[0])
    assert all(got[k] is not global_w[k] for k in got)  # a copy, not the server's arrays


def test_free_rider_random_returns_finite_weights_of_the_right_shapes() -> None:
    settings = _settings("free_rider_random")
    bad = unreliable_clients(_p(settings))
    global_w, trained = _weights(0), _weights(1)
    got = corrupt_reply(trained, global_w, _p(settings), bad[0])
    assert set(got) == set(trained)
    for k, v in trained.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype
        assert np.all(np.isfinite(got[k]))
        assert not np.allclose(got[k], v)
        assert not np.allclose(got[k], global_w[k])
    # deterministic per client
    again = corrupt_reply(trained, global_w, _p(settings), bad[0])
    assert all(np.array_equal(got[k], again[k]) for k in got)
    reliable = next(p for p in range(NUM_CLIENTS) if p not in bad)
    assert corrupt_reply(trained, global_w, _p(settings), reliable) is trained


def test_data_kinds_leave_replies_alone() -> None:
    trained, global_w = _weights(1), _weights(0)
    for kind in DATA_KINDS:
        assert corrupt_reply(trained, global_w, _p(_settings(kind, fraction=1.0)), 0) is trained
