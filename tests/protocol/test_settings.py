"""RunSettings: run-config round trip, validation, and agreement of conf/, pyproject and code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import hydra
import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from experiments.config import check_data, to_settings
from experiments.schema import register_schema
from protocol.settings import RunSettings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
DIGITS_TRAIN = 1347  # 1,797 digits minus the 25% stratified test holdout


def _pyproject_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["flwr"]["app"]["config"]


def _compose(overrides: list[str] | None = None):
    register_schema()
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra.compose("config", overrides=overrides or [])


# ---------------------------------------------------------------------- run config round trip
def test_run_config_round_trip_of_defaults() -> None:
    s = RunSettings()
    assert RunSettings.from_run_config(s.to_run_config()) == s


def test_run_config_round_trip_of_non_defaults() -> None:
    s = RunSettings(
        seed=7,
        dataset_name="mnist",
        model_name="cnn",
        privacy_target_epsilon=2.5,
        privacy_delta=1e-6,
        privacy_reproducible_noise=True,
        num_clients=5,
        fraction_evaluate=0.0,
        partitioner="dirichlet",
        device="cpu",
        output_dir="/tmp/x",
    )
    back = RunSettings.from_run_config(s.to_run_config())
    assert back == s
    assert back.privacy_reproducible_noise is True


def test_run_config_keys_use_dashes() -> None:
    rc = RunSettings(privacy_target_epsilon=3.0).to_run_config()
    assert rc["privacy-target-epsilon"] == 3.0
    assert "privacy_target_epsilon" not in rc
    assert all("_" not in k for k in rc)
    assert len(rc) == len(dataclasses.fields(RunSettings))


def test_from_run_config_ignores_unknown_and_defaults_missing() -> None:
    s = RunSettings.from_run_config({"num-clients": 7, "not-a-setting": "x"})
    assert s == dataclasses.replace(RunSettings(), num_clients=7)


def test_setting_name_is_the_hydra_key() -> None:
    assert RunSettings.setting_name("privacy_delta") == "privacy.delta"
    assert RunSettings.setting_name("num_rounds") == "federation.rounds"
    assert RunSettings.run_config_key("privacy_delta") == "privacy-delta"


# ---------------------------------------------------------------------- validate()
def test_defaults_are_valid() -> None:
    s = RunSettings()
    assert s.validate() is s


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("privacy_target_epsilon", -1, "privacy.target_epsilon must be > 0, got -1"),
        ("privacy_target_epsilon", 0, "privacy.target_epsilon must be > 0, got 0"),
        ("privacy_target_epsilon", float("nan"), "privacy.target_epsilon must be > 0"),
        ("privacy_delta", 0, "privacy.delta must be in (0, 1), got 0"),
        ("privacy_delta", 1.5, "privacy.delta must be in (0, 1), got 1.5"),
        ("num_rounds", 0, "federation.rounds must be > 0, got 0"),
        ("batch_size", 0, "federation.batch_size must be > 0, got 0"),
        ("num_clients", 0, "federation.num_clients must be > 0, got 0"),
        ("fraction_train", 0, "federation.fraction_train must be in (0, 1], got 0"),
        ("fraction_train", 1.5, "federation.fraction_train must be in (0, 1], got 1.5"),
        ("device", "tpu", "device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'"),
    ],
)
def test_validate_names_key_and_value(field: str, value: object, message: str) -> None:
    s = dataclasses.replace(RunSettings(), **{field: value})
    with pytest.raises(ValueError) as err:
        s.validate()
    assert message in str(err.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"privacy_target_epsilon": -1},
        {"privacy_target_epsilon": 0},
        {"privacy_delta": 0},
        {"privacy_delta": 1.5},
    ],
)
def test_privacy_mode_none_skips_budget_checks(changes: dict) -> None:
    s = dataclasses.replace(RunSettings(), privacy_mode="none", **changes)
    assert s.validate() is s


# ---------------------------------------------------------------------- from_run_config types
def test_non_integer_for_int_field_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"federation\.rounds must be an integer, got 2\.5"):
        RunSettings.from_run_config({"num-rounds": 2.5})


def test_bool_for_int_field_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"federation\.num_clients"):
        RunSettings.from_run_config({"num-clients": True})


@pytest.mark.parametrize(
    ("key", "value", "name"),
    [("num-rounds", "abc", "federation.rounds"), ("privacy-delta", "tiny", "privacy.delta")],
)
def test_unparsable_string_names_the_key(key: str, value: str, name: str) -> None:
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        RunSettings.from_run_config({key: value})


def test_integral_float_string_for_int_field_is_accepted() -> None:
    assert RunSettings.from_run_config({"num-rounds": "3.0"}).num_rounds == 3


def test_non_integral_string_for_int_field_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"federation\.rounds must be an integer"):
        RunSettings.from_run_config({"num-rounds": "3.5"})


def test_numeric_strings_are_accepted() -> None:
    s = RunSettings.from_run_config({"num-rounds": "4", "privacy-delta": "1e-6"})
    assert (s.num_rounds, s.privacy_delta) == (4, 1e-6)


def test_integral_float_for_int_field_is_accepted() -> None:
    s = RunSettings.from_run_config({"num-rounds": 4.0})
    assert s.num_rounds == 4
    assert type(s.num_rounds) is int


def test_int_for_float_field_becomes_float() -> None:
    s = RunSettings.from_run_config({"privacy-target-epsilon": 2})
    assert s.privacy_target_epsilon == 2.0
    assert type(s.privacy_target_epsilon) is float


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("false", False), ("True", True), ("FALSE", False)]
)
def test_bool_from_string(text: str, expected: bool) -> None:
    assert (
        RunSettings.from_run_config({"privacy-reproducible-noise": text}).privacy_reproducible_noise
        is expected
    )


def test_bool_from_other_value_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"privacy\.reproducible_noise must be true or false"):
        RunSettings.from_run_config({"privacy-reproducible-noise": "yes"})


# ---------------------------------------------------------------------- pyproject defaults
def test_pyproject_defaults_equal_run_settings_defaults() -> None:
    pyproject = _pyproject_config()
    defaults = RunSettings().to_run_config()
    assert not set(defaults) - set(pyproject), "RunSettings keys missing from pyproject"
    assert not set(pyproject) - set(defaults), "pyproject keys RunSettings does not know"
    for key, value in defaults.items():
        assert pyproject[key] == value, key
        assert type(pyproject[key]) is type(value), key
    assert RunSettings.from_run_config(pyproject) == RunSettings()


# ---------------------------------------------------------------------- Hydra conf/
def test_conf_defaults_equal_run_settings_defaults() -> None:
    settings = to_settings(_compose(), output_dir="out/x")
    assert settings == dataclasses.replace(RunSettings(), output_dir="out/x")
    assert RunSettings.from_run_config(settings.to_run_config()) == settings


def test_conf_overrides_land_in_settings() -> None:
    cfg = _compose(
        ["privacy.target_epsilon=2", "federation.num_clients=5", "model=cnn", "privacy=none"]
    )
    settings = to_settings(cfg)
    assert settings.privacy_target_epsilon == 2.0
    assert settings.num_clients == 5
    assert settings.model_name == "cnn"
    assert settings.privacy_mode == "none"
    assert settings.to_run_config()["privacy-target-epsilon"] == 2.0


def test_conf_misspelt_key_fails_at_composition() -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)):
        _compose(["privacy.target_epsilonn=2"])


def test_conf_wrong_type_fails_at_composition() -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)):
        _compose(["federation.rounds=many"])


def test_conf_out_of_range_value_fails_in_to_settings() -> None:
    cfg = _compose(["privacy.target_epsilon=-1"])
    with pytest.raises(ValueError, match=r"privacy\.target_epsilon must be > 0"):
        to_settings(cfg)


# ---------------------------------------------------------------------- check_data
@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"dataset_name": "cifar1000"}, r"dataset\.name must be one of"),
        ({"model_name": "transformer"}, r"model\.name must be one of"),
        ({"privacy_mode": "laplace"}, r"privacy\.mode must be one of"),
        ({"num_clients": DIGITS_TRAIN + 1}, r"federation\.num_clients"),
        ({"num_clients": 3, "privacy_delta": 0.01}, r"privacy\.delta must be below 1/n"),
    ],
)
def test_check_data_rejects(changes: dict, pattern: str) -> None:
    settings = dataclasses.replace(RunSettings(), **changes)
    with pytest.raises(ValueError, match=pattern):
        check_data(settings)


def test_check_data_delta_check_skipped_without_privacy() -> None:
    settings = dataclasses.replace(RunSettings(), privacy_mode="none", privacy_delta=0.01)
    assert len(check_data(settings).train_sizes) == settings.num_clients


def test_check_data_valid_config_sizes() -> None:
    settings = RunSettings()
    result = check_data(settings)
    assert len(result.train_sizes) == settings.num_clients
    assert all(n > 0 for n in result.train_sizes)
    expected = (1 - settings.val_fraction) * DIGITS_TRAIN
    assert abs(sum(result.train_sizes) - expected) <= settings.num_clients
    assert result.test_size == 450
