"""One source per setting: conf/, the Hydra schema, RunSettings and pyproject agree with the groups.

Every key, type and default is declared once, in ``protocol.groups``. These tests hold the
other places to it: the YAML options under ``conf/`` (keys that exist, values of the declared
type, the default options equal to the defaults), the structured config ``experiments.schema``
registers, the flat :class:`~protocol.settings.RunSettings` and ``pyproject.toml``'s
``[tool.flwr.app.config]``; and the deprecated names (``reliability=``, ``model=logreg``).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import hydra
import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.aliases import upgrade_argv, upgrade_config, upgrade_override
from experiments.schema import SCHEMA_NAME, register_schema
from protocol.checkpoint import config_differences
from protocol.groups import (
    GROUPS,
    LAUNCH_ONLY,
    AggregationGroup,
    CentralDpGroup,
    DatasetGroup,
    DeprecatedSettingWarning,
    FederationGroup,
    FedPrivConf,
    ModelGroup,
    ParticipantsGroup,
    PersonalizationGroup,
    PrivacyGroup,
    default_of,
    setting_field,
    settings_keys,
)
from protocol.settings import RunSettings, upgrade_run_config, write_pyproject

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
GROUP_FILES = sorted(p for p in CONF.glob("*/*.yaml") if p.parent.name in GROUPS)
TOP_LEVEL = [f.name for f in dataclasses.fields(FedPrivConf) if f.name not in GROUPS]


def _compose(overrides: list[str] | None = None) -> DictConfig:
    register_schema()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra.compose("config", overrides=overrides or [])


def _declared_type(key: str) -> type:
    group, _, name = key.rpartition(".")
    cls = GROUPS[group] if group else FedPrivConf
    return typing.get_type_hints(cls)[name]


def _check_value(key: str, value: Any, where: str) -> None:
    """``value`` is of ``key``'s declared type (an integer may stand for a float)."""
    kind = _declared_type(key)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    assert ok, f"{where}: {key} must be {kind.__name__}, got {value!r}"


def _yaml(path: Path) -> dict[str, Any]:
    data = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(data, dict), path
    return data


def _defaults() -> dict[str, Any]:
    return dataclasses.asdict(FedPrivConf())


# ---------------------------------------------------------------------- the groups themselves
def test_every_group_is_named_as_it_is_nested() -> None:
    assert set(GROUPS) == {
        "dataset",
        "model",
        "privacy",
        "federation",
        "aggregation",
        "participants",
        "central_dp",
        "personalization",
    }
    for name, cls in GROUPS.items():
        assert cls.NAME == name
    assert TOP_LEVEL == ["seed", "device", "resume"]


def test_defaults_of_the_groups_are_valid() -> None:
    FedPrivConf().validate()


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (FedPrivConf(seed=-1), "seed must be in [0, 2**63 - 1], got -1"),
        (FedPrivConf(device="tpu"), "device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'"),
        (ModelGroup(hidden=0), "model.hidden must be > 0, got 0"),
        (PrivacyGroup(max_grad_norm=-1.0), "privacy.max_grad_norm must be > 0, got -1"),
        (PrivacyGroup(grad_sample_mode="x"), "privacy.grad_sample_mode must be one of"),
        (PrivacyGroup(functional_steps=-2), "privacy.functional_steps must be >= 0, got -2"),
        (FederationGroup(rounds=0), "federation.rounds must be > 0, got 0"),
        (FederationGroup(round_timeout=1.0), "federation.round_timeout must be >= 10 seconds"),
        (FederationGroup(min_replies=4), "federation.min_replies must be in [1, federation."),
        (AggregationGroup(strategy="x"), "aggregation.strategy must be one of"),
        (AggregationGroup(trim_beta=0.7), "aggregation.trim_beta must be in [0, 0.5), got 0.7"),
        (ParticipantsGroup(noise_rate=2.0), "participants.noise_rate must be in [0, 1], got 2"),
        (ParticipantsGroup(tiny_size=0), "participants.tiny_size must be > 0, got 0"),
        (CentralDpGroup(mode="x"), "central_dp.mode must be one of ['none', 'fixed', 'adaptive']"),
        (CentralDpGroup(target_epsilon=-1), "central_dp.target_epsilon must be > 0, got -1"),
        (CentralDpGroup(delta=1.0), "central_dp.delta must be in (0, 1), got 1"),
        (CentralDpGroup(target_quantile=1.5), "central_dp.target_quantile must be in (0, 1)"),
        (CentralDpGroup(clip=0), "central_dp.clip must be > 0, got 0"),
        (PersonalizationGroup(epochs=0), "personalization.epochs must be > 0, got 0"),
        (PersonalizationGroup(epochs=-3), "personalization.epochs must be > 0, got -3"),
        (PersonalizationGroup(mode="x"), "personalization.mode must be one of ['none', 'fin"),
        (PersonalizationGroup(learning_rate=0), "personalization.learning_rate must be > 0"),
        (DatasetGroup(task="ranking"), "dataset.task must be one of ['classification', 're"),
        (DatasetGroup(normalization="pooled"), "dataset.normalization must be one of"),
    ],
)
def test_group_validate_names_the_setting_and_the_value(group: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        group.validate()
    assert message in str(err.value)
    if not isinstance(group, FedPrivConf):  # the whole config runs the same group check
        with pytest.raises(ValueError, match=re.escape(message)):
            FedPrivConf(**{group.NAME: group}).validate()  # type: ignore[arg-type]


def test_setting_lookup() -> None:
    assert default_of("privacy.target_epsilon") == 4.0
    assert default_of("seed") == 0
    assert setting_field("federation.engine").metadata[LAUNCH_ONLY]
    for key in ["privacy", "reliability.scorer", "privacy.nope", "output_dir"]:
        with pytest.raises(KeyError, match="no setting"):
            setting_field(key)


# ---------------------------------------------------------------------- conf/
@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_conf_group_option_sets_only_declared_keys_of_their_type(path: Path) -> None:
    group = path.parent.name
    data = _yaml(path)
    defaults = data.pop("defaults", [])
    for entry in defaults:  # an option may only build on options of its own group
        assert isinstance(entry, str), f"{path}: defaults entry {entry!r}"
        assert entry == "_self_" or (path.parent / f"{entry}.yaml").is_file(), entry
    assert data or defaults, f"{path} sets nothing"
    for name, value in data.items():
        key = f"{group}.{name}"
        setting_field(key)  # a KeyError names a key no group declares
        _check_value(key, value, str(path.relative_to(ROOT)))


def test_conf_config_yaml_top_level_keys_are_declared() -> None:
    data = _yaml(CONF / "config.yaml")
    groups = {next(iter(d)) for d in data.pop("defaults") if isinstance(d, dict)}
    assert groups == set(GROUPS), "config.yaml must choose an option of every group"
    data.pop("hydra")
    for key, value in data.items():
        _check_value(key, value, "conf/config.yaml")


@pytest.mark.parametrize("path", sorted((CONF / "experiment").glob("*.yaml")), ids=str)
def test_conf_experiment_presets_use_declared_keys(path: Path) -> None:
    data = _yaml(path)
    for entry in data.pop("defaults", []):
        (target, option), *_ = entry.items()
        group = target.removeprefix("override /")
        assert group in GROUPS and (CONF / group / f"{option}.yaml").is_file(), entry
    params = data.pop("hydra", {}).get("sweeper", {}).get("params", {})
    for key in params:
        assert key in GROUPS or key in settings_keys(), f"{path}: swept key {key!r}"
    for group, values in data.items():
        assert group in GROUPS, f"{path}: {group!r} is not a group"
        for name, value in values.items():
            _check_value(f"{group}.{name}", value, str(path))


def test_composed_default_config_equals_the_group_defaults() -> None:
    """The default options (digits, mlp, dpsgd, simulation, fedavg, reliable) restate only
    defaults, so the composed default config is exactly the groups' defaults."""
    cfg = OmegaConf.to_container(_compose())
    assert cfg == _defaults()


def test_deployment_inherits_the_simulation_keys() -> None:
    deployment = _yaml(CONF / "federation" / "deployment.yaml")
    simulation = _yaml(CONF / "federation" / "simulation.yaml")
    assert deployment.pop("defaults") == ["simulation", "_self_"]
    assert set(deployment) == {"engine", "superlink", "root_certificates"}
    assert not (set(deployment) - {"engine"}) & set(simulation), "repeats simulation.yaml"
    composed = OmegaConf.to_container(_compose(["federation=deployment"]).federation)
    assert isinstance(composed, dict)
    assert composed == _defaults()["federation"] | simulation | deployment
    assert composed["engine"] == "deployment"


# ---------------------------------------------------------------------- experiments.schema
def test_registered_schema_is_exactly_the_groups() -> None:
    register_schema()
    node = ConfigStore.instance().load(f"{SCHEMA_NAME}.yaml").node
    assert OmegaConf.get_type(node) is FedPrivConf
    assert OmegaConf.to_container(node) == _defaults()
    for group, cls in GROUPS.items():
        assert OmegaConf.get_type(node, group) is cls
        assert list(node[group]) == [f.name for f in dataclasses.fields(cls)]


# ---------------------------------------------------------------------- RunSettings
def test_run_settings_has_every_flat_setting_once_with_the_group_default_and_type() -> None:
    fields = [f for f in dataclasses.fields(RunSettings) if f.metadata.get("setting", True)]
    keys = [f.metadata["key"] for f in fields]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(settings_keys(include_launch_only=False))
    hints = typing.get_type_hints(RunSettings)
    for f in fields:
        key = f.metadata["key"]
        assert f.default == default_of(key), key
        assert type(f.default) is type(default_of(key)), key
        assert hints[f.name] is _declared_type(key), key
    launch_only = set(settings_keys()) - set(settings_keys(include_launch_only=False))
    assert launch_only == {
        "federation.engine",
        "federation.client_cpus",
        "federation.client_gpus",
        "federation.superlink",
        "federation.root_certificates",
    }


def test_run_settings_groups_round_trip() -> None:
    s = dataclasses.replace(RunSettings(), privacy_delta=1e-6, aggregation_strategy="krum")
    groups = s.groups()
    assert groups.privacy.delta == 1e-6
    assert groups.aggregation.strategy == "krum"
    assert groups.federation.engine == "simulation"  # launch-only: its default


# ---------------------------------------------------------------------- pyproject.toml
def test_pyproject_run_config_is_generated_from_the_groups(tmp_path: Path) -> None:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        table = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    defaults = RunSettings().to_run_config()
    assert list(table.items()) == list(defaults.items())
    assert [type(v) for v in table.values()] == [type(v) for v in defaults.values()]
    copy = tmp_path / "pyproject.toml"
    copy.write_text((ROOT / "pyproject.toml").read_text())
    assert not write_pyproject(copy), "run: python -m protocol.settings --pyproject --write"


def test_pyproject_generator_replaces_a_stale_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[a]\nx = 1\n\n[tool.flwr.app.config]\nseed = 5\nold-key = 1\n\n[b]\ny = 2\n")
    assert write_pyproject(path)
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    assert data["tool"]["flwr"]["app"]["config"] == RunSettings().to_run_config()
    assert data["a"] == {"x": 1} and data["b"] == {"y": 2}
    assert not write_pyproject(path)


# ---------------------------------------------------------------------- deprecated names
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("reliability=krum", "aggregation=krum"),
        ("reliability.scorer=fltrust", "aggregation.scorer=fltrust"),
        ("+reliability.decay=0.8", "+aggregation.decay=0.8"),
        ("++reliability.decay=0.8", "++aggregation.decay=0.8"),
        ("~reliability", "~aggregation"),
        ("reliability=fedavg,krum", "aggregation=fedavg,krum"),
        ("model=logreg", "model=softmax"),
        ("model=logreg,mlp", "model=softmax,mlp"),
        ("model.name=logreg", "model.name=softmax"),
        ("model=logistic", "model=logistic"),
        ("reliability_x=1", "reliability_x=1"),
        ("hydra.run.dir=reliability", "hydra.run.dir=reliability"),
        ("dataset.name=logreg", "dataset.name=logreg"),
    ],
)
def test_deprecated_overrides_are_upgraded(old: str, new: str) -> None:
    assert upgrade_override(old) == new


def test_upgrade_argv_names_the_new_key(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run.py", "-m", "reliability=krum", "--cfg", "job", "seed=1", "model=logreg"]
    assert upgrade_argv(argv) == [
        "run.py",
        "-m",
        "aggregation=krum",
        "--cfg",
        "job",
        "seed=1",
        "model=softmax",
    ]
    err = capsys.readouterr().err
    assert "reliability=krum is deprecated: use aggregation=krum" in err
    assert "model=logreg is deprecated: use model=softmax" in err
    assert upgrade_argv(["run.py", "aggregation=krum"]) == ["run.py", "aggregation=krum"]
    assert capsys.readouterr().err == ""


def test_upgraded_overrides_compose_into_aggregation() -> None:
    args = upgrade_argv(["x", "reliability=krum", "reliability.num_malicious=1"])[1:]
    cfg = _compose(args)
    assert (cfg.aggregation.strategy, cfg.aggregation.num_malicious) == ("krum", 1)
    assert "reliability" not in cfg


def test_deprecated_model_value_in_run_settings_warns_and_is_renamed() -> None:
    with pytest.warns(DeprecatedSettingWarning, match="use model.name=softmax"):
        s = RunSettings(model_name="logreg")
    assert s.model_name == "softmax"
    with pytest.warns(DeprecatedSettingWarning):
        assert RunSettings.from_run_config({"model-name": "logreg"}).model_name == "softmax"


def test_stored_configs_under_old_names_are_upgraded() -> None:
    old = {"reliability-strategy": "krum", "model-name": "logreg", "seed": 3}
    assert upgrade_run_config(old) == {
        "aggregation-strategy": "krum",
        "model-name": "softmax",
        "seed": 3,
    }
    current = RunSettings(seed=3, aggregation_strategy="krum").to_run_config()
    assert config_differences({**old, "model-name": "mlp"}, current) == []
    assert config_differences({"reliability-strategy": "fedavg"}, current) == [
        ("aggregation-strategy", "fedavg", "krum")
    ]
    stored = {"reliability": {"strategy": "krum"}, "model": {"name": "logreg", "hidden": 8}}
    assert upgrade_config(stored) == {
        "aggregation": {"strategy": "krum"},
        "model": {"name": "softmax", "hidden": 8},
    }


def test_the_cli_accepts_the_old_names_and_says_the_new_ones() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--cfg", "job", "reliability=krum"]
        + ["++reliability.decay=0.8", "model=logreg", "federation=deployment"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reliability=krum is deprecated: use aggregation=krum" in res.stderr
    assert "model=logreg is deprecated: use model=softmax" in res.stderr
    cfg = OmegaConf.create(res.stdout)
    assert (cfg.aggregation.strategy, cfg.aggregation.decay) == ("krum", 0.8)
    assert cfg.model.name == "softmax"
    assert cfg.federation.engine == "deployment"
    assert cfg.federation.batch_size == default_of("federation.batch_size")
    assert "reliability" not in cfg


def test_group_classes_are_the_exported_ones() -> None:
    assert GROUPS == {
        "dataset": DatasetGroup,
        "model": ModelGroup,
        "privacy": PrivacyGroup,
        "federation": FederationGroup,
        "aggregation": AggregationGroup,
        "participants": ParticipantsGroup,
        "central_dp": CentralDpGroup,
        "personalization": PersonalizationGroup,
    }
