"""The lower layers take explicit parameters, converted once from the run's settings.

:class:`tasks.training.TrainConfig`, :class:`tasks.training.EvalConfig` and
:class:`tasks.participants.ParticipantsConfig` each have one conversion, ``from_settings``;
nothing else in ``tasks/training/``, ``tasks/participants/`` or ``tasks/data/node_files.py``
reads :class:`protocol.settings.RunSettings` (checked on the source).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from protocol.settings import RunSettings
from tasks.participants import ParticipantsConfig
from tasks.training import EvalConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
LOWER = sorted(
    [
        *(ROOT / "tasks" / "training").glob("*.py"),
        *(ROOT / "tasks" / "participants").glob("*.py"),
        ROOT / "tasks" / "data" / "node_files.py",
    ]
)

SETTINGS = RunSettings(
    seed=11,
    model_name="logistic",
    dataset_name="adult",
    privacy_mode="functional",
    privacy_target_epsilon=3.0,
    privacy_delta=1e-6,
    privacy_max_grad_norm=0.7,
    privacy_accountant="rdp",
    privacy_reproducible_noise=True,
    privacy_eval_epsilon=0.25,
    privacy_grad_sample_mode="ew",
    privacy_functional_bound="l1",
    privacy_functional_steps=7,
    privacy_functional_aggregation="objective",
    num_clients=9,
    num_rounds=4,
    fraction_evaluate=0.5,
    local_epochs=3,
    batch_size=17,
    learning_rate=0.03,
    participants_unreliable_fraction=0.4,
    participants_kind="label_noise",
    participants_noise_rate=0.2,
    participants_feature_noise_std=0.6,
    participants_tiny_size=5,
    output_dir="/runs/explicit",
)


def test_train_config_reads_each_of_its_settings() -> None:
    config = TrainConfig.from_settings(SETTINGS)
    assert config == TrainConfig(
        mode="functional",
        learning_rate=0.03,
        batch_size=17,
        local_epochs=3,
        rounds=4,
        target_epsilon=3.0,
        training_epsilon=SETTINGS.training_epsilon,
        delta=1e-6,
        max_grad_norm=0.7,
        accountant="rdp",
        reproducible_noise=True,
        grad_sample_mode="ew",
        functional_bound="l1",
        functional_steps=7,
        release="objective",
        model_name="logistic",
        run_seed=11,
        run_id="/runs/explicit",
    )
    assert config.training_epsilon == pytest.approx(3.0 - 4 * 0.25)


def test_train_config_release_is_the_modes() -> None:
    average = dataclasses.replace(SETTINGS, privacy_functional_aggregation="average")
    assert TrainConfig.from_settings(average).release == "weights"
    assert TrainConfig.from_settings(RunSettings(privacy_mode="dpsgd")).release == "weights"
    assert TrainConfig.from_settings(RunSettings(privacy_mode="none")).release == "weights"
    with pytest.raises(ValueError, match=r"privacy\.mode must be one of"):
        TrainConfig.from_settings(RunSettings(privacy_mode="magic"))


def test_eval_config_reads_each_of_its_settings() -> None:
    assert EvalConfig.from_settings(SETTINGS) == EvalConfig(
        mode="functional", eval_epsilon=0.25, target_epsilon=3.0
    )


def test_participants_config_reads_each_of_its_settings() -> None:
    assert ParticipantsConfig.from_settings(SETTINGS) == ParticipantsConfig(
        kind="label_noise",
        unreliable_fraction=0.4,
        num_clients=9,
        seed=11,
        noise_rate=0.2,
        feature_noise_std=0.6,
        tiny_size=5,
    )


@pytest.mark.parametrize("convert", [TrainConfig, EvalConfig, ParticipantsConfig])
def test_configs_are_frozen_and_hashable(convert) -> None:
    config = convert.from_settings(SETTINGS)
    assert hash(config) == hash(convert.from_settings(SETTINGS))
    name = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, name, None)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of the statements under ``if TYPE_CHECKING:``."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


@pytest.mark.parametrize("path", LOWER, ids=lambda p: str(p.relative_to(ROOT)))
def test_lower_layers_read_no_run_settings(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _type_checking_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "protocol.settings":
            assert node.lineno in typing_only, f"{path.name}:{node.lineno} imports the settings"
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations = [a.annotation for a in (*node.args.args, *node.args.kwonlyargs)]
            if any(a is not None and "RunSettings" in ast.unparse(a) for a in annotations):
                assert node.name == "from_settings", f"{path.name}: {node.name} takes settings"
