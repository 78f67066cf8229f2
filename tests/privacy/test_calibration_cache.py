"""The calibration cache: one search per machine, public numbers only, never trusted blindly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import privacy.calibration_cache as cc
from privacy.accounting import calibrate_noise, get_accountant

ARGS = ("pld", 4.0, 1e-5, 0.25, 12)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(cc.SWITCH_ENV, raising=False)
    monkeypatch.setenv(cc.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / cc.CACHE_NAME


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def search(*args: object) -> float:
        calls.append(args)
        return calibrate_noise.__wrapped__(*args)  # type: ignore[attr-defined]

    monkeypatch.setattr(cc, "calibrate_noise", search)
    return calls


def test_second_call_reads_the_cache_and_gives_the_same_number(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch)
    first = cc.calibrated_noise(*ARGS)
    second = cc.calibrated_noise(*ARGS)
    assert first == second == calibrate_noise(*ARGS)
    assert len(calls) == 1
    stored = json.loads(cache.read_text())
    assert list(stored.values()) == [first]  # the key's parameters and the multiplier only
    assert json.loads(next(iter(stored)))[1:6] == ["pld", "4.0", "1e-05", "0.25", 12]


def test_other_parameters_are_searched_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    cc.calibrated_noise(*ARGS)
    cc.calibrated_noise("pld", 2.0, 1e-5, 0.25, 12)
    assert len(calls) == 2
    assert len(json.loads(cache.read_text())) == 2


def test_a_tampered_entry_is_ignored_and_replaced(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = cc.calibrated_noise(*ARGS)
    key = next(iter(json.loads(cache.read_text())))
    cache.write_text(json.dumps({key: good / 2}))  # too little noise: epsilon over the target
    calls = _counting(monkeypatch)
    assert cc.calibrated_noise(*ARGS) == good
    assert len(calls) == 1
    assert json.loads(cache.read_text())[key] == good
    eps = get_accountant("pld").epsilon(((good, 0.25, 12),), 1e-5)
    assert eps <= 4.0


def test_an_unreadable_file_is_a_miss(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    calls = _counting(monkeypatch)
    assert cc.calibrated_noise(*ARGS) == calibrate_noise(*ARGS)
    assert len(calls) == 1
    assert len(json.loads(cache.read_text())) == 1


def test_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cc.SWITCH_ENV, "off")
    monkeypatch.setenv(cc.CACHE_ENV, str(tmp_path))
    assert cc.cache_dir() is None
    calls = _counting(monkeypatch)
    cc.calibrated_noise(*ARGS)
    cc.calibrated_noise(*ARGS)
    assert len(calls) == 2
    assert not any(tmp_path.iterdir())


def test_default_dir_is_the_datasets_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cc.CACHE_ENV, raising=False)
    monkeypatch.delenv(cc.SWITCH_ENV, raising=False)
    assert cc.cache_file() == Path.home() / ".cache" / "fedpriv" / cc.CACHE_NAME


def test_plan_dpsgd_uses_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from privacy.dpsgd import plan_dpsgd

    plan_dpsgd.cache_clear()
    calls = _counting(monkeypatch)
    kwargs = dict(target_epsilon=3.0, delta=1e-5, n_train=121, batch_size=32, local_epochs=1)
    first = plan_dpsgd(**kwargs, rounds=3)
    plan_dpsgd.cache_clear()  # a new process: the in-memory memo is gone, the file is not
    second = plan_dpsgd(**kwargs, rounds=3)
    assert first == second
    assert len(calls) == 1
    plan_dpsgd.cache_clear()
