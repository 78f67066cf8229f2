"""Feature pipelines of sensor series: the registry, windows, per-owner standardisation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import hydra
import numpy as np
import pytest

from experiments.config import to_settings
from experiments.schema import register_schema
from protocol.groups import SENSOR_PIPELINES, DatasetGroup
from tasks.data import DatasetSpec, load_dataset, specs_from_settings
from tasks.data.features import (
    PIPELINES,
    TEST,
    TRAIN,
    VAL,
    get_pipeline,
    per_owner_standardise,
    sensor_bundle,
)

CONF = Path(__file__).resolve().parents[3] / "conf"


def test_the_registry_and_the_settings_tuple_name_the_same_pipelines() -> None:
    assert set(PIPELINES) == set(SENSOR_PIPELINES)
    assert get_pipeline("").name == "windows" and get_pipeline("stats").per_owner
    with pytest.raises(ValueError, match=r"dataset.pipeline must be one of \['stats', 'win"):
        get_pipeline("fft")
    with pytest.raises(ValueError, match="dataset.pipeline must be one of"):
        DatasetGroup(pipeline="fft").validate()
    DatasetGroup(pipeline="stats").validate()


def test_stats_are_each_windows_channel_mean_std_min_max() -> None:
    w = np.array([[[1.0, 3.0, 2.0, 6.0], [0.0, 0.0, 0.0, 4.0]]], dtype=np.float32)
    f = get_pipeline("stats").features(w)
    assert f.shape == (1, 8) and f.dtype == np.float32
    assert np.allclose(f[0], [3.0, 1.0, np.std([1, 3, 2, 6]), np.std([0, 0, 0, 4]), 1, 0, 6, 4])


def _series(rng: np.random.Generator, owners: int = 2) -> tuple[list[np.ndarray], ...]:
    series = [rng.normal(o * 5.0, 1.0 + o, size=(300, 3)).astype(np.float32) for o in range(owners)]
    series = [s for s in series for _ in range(3)]  # three series an owner: train, val, test
    owner = np.repeat(np.arange(owners), 3)
    part = np.tile([TRAIN, VAL, TEST], owners)
    return series, np.zeros(len(series), dtype=np.int64), owner, part


def _bundle(series: list[np.ndarray], label, owner, part, pipeline: str):  # type: ignore[no-untyped-def]
    return sensor_bundle(
        "t", series, label, owner, part, num_classes=1, owner_names=("a", "b"),
        window=64, stride=32, pipeline=pipeline,
    )  # fmt: skip


def test_windows_stay_in_their_series_and_part() -> None:
    series, label, owner, part = _series(np.random.default_rng(0))
    series[1] = series[1] + 100.0  # owner 0's validation series
    b = _bundle(series, label, owner, part, "windows")
    assert b.input_shape == (3, 64) and len(b.y_train) == 4 * 8 and len(b.y_test) == 2 * 8
    val = b.x_train[b.val_train & (b.owner_train == 0)]
    assert len(val) == 8 and (val > 50).all()  # exactly the validation series' windows
    assert (b.x_train[~b.val_train] < 50).all() and (b.x_test < 50).all()
    assert np.array_equal(b.x_test[b.owner_test == 1][1], series[5][32:96].T)


def test_stats_are_standardised_by_each_owners_own_training_windows_only() -> None:
    rng = np.random.default_rng(1)
    series, label, owner, part = _series(rng)
    b = _bundle(series, label, owner, part, "stats")
    for o in (0, 1):
        fit = b.x_train[(b.owner_train == o) & ~b.val_train]
        assert np.allclose(fit.mean(axis=0), 0, atol=1e-5) and np.allclose(fit.std(axis=0), 1)
    changed = list(series)
    changed[3] = changed[3] * 10 + 7  # owner 1's training series
    changed[2] = changed[2] * 3  # owner 0's test series
    c = _bundle(changed, label, owner, part, "stats")
    mine = b.owner_train == 0
    assert np.array_equal(b.x_train[mine], c.x_train[mine])  # others' data and my test: no say
    assert not np.array_equal(b.x_train[~mine], c.x_train[~mine])


def test_per_owner_standardise_refuses_an_owner_without_training_rows() -> None:
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    out, stats = per_owner_standardise(x, np.array([0, 0, 1, 1]), np.array([1, 1, 1, 0], bool))
    assert np.allclose(stats[0][0], [1, 2]) and np.allclose(stats[1][1], 1)  # constant: std 1
    assert np.allclose(out[3], x[3] - x[2])
    with pytest.raises(ValueError, match="owner 1 has no training windows"):
        per_owner_standardise(x, np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0], bool))


@pytest.mark.skipif(importlib.util.find_spec("seglearn") is None, reason="seglearn data")
def test_watch_runs_through_the_stats_pipeline_from_the_config() -> None:
    register_schema()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra.compose("config", ["dataset=watch", "dataset.pipeline=stats", "model=mlp"])
    settings = to_settings(cfg)
    assert settings.dataset_pipeline == "stats" and settings.num_clients == 10
    b = load_dataset(specs_from_settings(settings)[0])
    raw = load_dataset(DatasetSpec("watch"))
    assert b.input_shape == (24,) and len(b.y_train) == len(raw.y_train)
    assert np.array_equal(b.y_test, raw.y_test) and np.array_equal(b.owner_test, raw.owner_test)
