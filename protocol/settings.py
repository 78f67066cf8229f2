"""The flat run config, typed and validated.

Flower passes a flat ``{str: bool | int | float | str}`` run config to both apps.
:class:`RunSettings` is its one typed view: ``experiments`` builds it from the composed Hydra
config and calls :meth:`RunSettings.to_run_config`; the apps call
:meth:`RunSettings.from_run_config`. Each field records the setting it comes from
(``_f("privacy.target_epsilon")``) and takes that setting's default from its group in
:mod:`protocol.groups`, so an error names the setting a user actually typed and no default is
written twice. ``python -m protocol.settings --pyproject`` prints ``pyproject.toml``'s
``[tool.flwr.app.config]`` (``--write`` updates the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.modes import MODES, is_private
from protocol.groups import (
    FUNCTIONAL_AGGREGATIONS,
    FUNCTIONAL_BOUNDS,
    GRAD_SAMPLE_MODES,
    MAX_SEED,
    MIN_ROUND_TIMEOUT,
    RENAMED_GROUPS,
    RENAMED_VALUES,
    STRATEGIES,
    FedPrivConf,
    default_of,
    deprecated,
    from_values,
    show,
)

__all__ = [
    "FUNCTIONAL_AGGREGATIONS",
    "FUNCTIONAL_BOUNDS",
    "GRAD_SAMPLE_MODES",
    "MAX_SEED",
    "MIN_ROUND_TIMEOUT",
    "OBJECTIVE_STRATEGIES",
    "ROBUST_MIN_CLIENTS",
    "STRATEGIES",
    "RunSettings",
    "Scalar",
    "show",
    "upgrade_run_config",
]

Scalar = bool | int | float | str

ROBUST_MIN_CLIENTS = {"krum": (2, 3), "multikrum": (2, 3), "bulyan": (4, 3)}
"""``strategy: (a, b)``: Flower's rule needs at least ``a * num_malicious + b`` replies a round."""

CENTRAL_DP_STRATEGIES = ("fedavg", "scorer")
"""Strategies whose aggregate has a sensitivity the clip bounds (weights from public
information only: uniform); Flower's robust baselines are refused with central DP."""

OBJECTIVE_STRATEGIES = ("fedavg", "scorer")
"""Strategies that can aggregate released objectives (their weights scale each objective)."""


def _f(key: str) -> Any:
    """The field of setting ``key``, with the default its group declares."""
    return field(default=default_of(key), metadata={"key": key})


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs, as plain values. Field ``x_y`` is run-config key ``x-y``."""

    seed: int = _f("seed")
    dataset_name: str = _f("dataset.name")
    dataset_hf_name: str = _f("dataset.hf_name")
    dataset_feature_key: str = _f("dataset.feature_key")
    dataset_label_key: str = _f("dataset.label_key")
    dataset_path: str = _f("dataset.path")
    dataset_label: str = _f("dataset.label")
    dataset_partition_by: str = _f("dataset.partition_by")
    dataset_features: str = _f("dataset.features")
    dataset_task: str = _f("dataset.task")
    dataset_bounds: str = _f("dataset.bounds")
    dataset_normalization: str = _f("dataset.normalization")
    dataset_test_fraction: float = _f("dataset.test_fraction")
    dataset_pipeline: str = _f("dataset.pipeline")
    model_name: str = _f("model.name")
    model_hidden: int = _f("model.hidden")
    privacy_mode: str = _f("privacy.mode")
    privacy_target_epsilon: float = _f("privacy.target_epsilon")
    privacy_delta: float = _f("privacy.delta")
    privacy_max_grad_norm: float = _f("privacy.max_grad_norm")
    privacy_accountant: str = _f("privacy.accountant")
    privacy_reproducible_noise: bool = _f("privacy.reproducible_noise")
    privacy_eval_epsilon: float = _f("privacy.eval_epsilon")
    privacy_grad_sample_mode: str = _f("privacy.grad_sample_mode")
    privacy_functional_bound: str = _f("privacy.functional_bound")
    privacy_functional_noise: str = _f("privacy.functional_noise")
    privacy_functional_steps: int = _f("privacy.functional_steps")
    privacy_functional_aggregation: str = _f("privacy.functional_aggregation")
    num_clients: int = _f("federation.num_clients")
    num_rounds: int = _f("federation.rounds")
    fraction_train: float = _f("federation.fraction_train")
    fraction_evaluate: float = _f("federation.fraction_evaluate")
    local_epochs: int = _f("federation.local_epochs")
    batch_size: int = _f("federation.batch_size")
    learning_rate: float = _f("federation.learning_rate")
    partitioner: str = _f("federation.partitioner")
    dirichlet_alpha: float = _f("federation.dirichlet_alpha")
    classes_per_client: int = _f("federation.classes_per_client")
    val_fraction: float = _f("federation.val_fraction")
    aggregation_strategy: str = _f("aggregation.strategy")
    aggregation_scorer: str = _f("aggregation.scorer")
    aggregation_decay: float = _f("aggregation.decay")
    aggregation_threshold: float = _f("aggregation.threshold")
    aggregation_relative_threshold: float = _f("aggregation.relative_threshold")
    aggregation_by_reputation: bool = _f("aggregation.by_reputation")
    aggregation_server_data_size: int = _f("aggregation.server_data_size")
    aggregation_trim_beta: float = _f("aggregation.trim_beta")
    aggregation_num_malicious: int = _f("aggregation.num_malicious")
    participants_unreliable_fraction: float = _f("participants.unreliable_fraction")
    participants_kind: str = _f("participants.kind")
    participants_noise_rate: float = _f("participants.noise_rate")
    participants_feature_noise_std: float = _f("participants.feature_noise_std")
    participants_tiny_size: int = _f("participants.tiny_size")
    central_dp_mode: str = _f("central_dp.mode")
    central_dp_target_epsilon: float = _f("central_dp.target_epsilon")
    central_dp_delta: float = _f("central_dp.delta")
    central_dp_clip: float = _f("central_dp.clip")
    central_dp_initial_clip: float = _f("central_dp.initial_clip")
    central_dp_target_quantile: float = _f("central_dp.target_quantile")
    central_dp_clip_lr: float = _f("central_dp.clip_lr")
    central_dp_count_stddev_fraction: float = _f("central_dp.count_stddev_fraction")
    personalization_mode: str = _f("personalization.mode")
    personalization_epochs: int = _f("personalization.epochs")
    personalization_learning_rate: float = _f("personalization.learning_rate")
    personalization_initial_clients: int = _f("personalization.initial_clients")
    device: str = _f("device")
    output_dir: str = field(default="", metadata={"key": "output_dir", "setting": False})
    """Where the run writes (set by ``experiments``, not a setting of ``conf/``)."""
    personalization_on_nodes: bool = field(
        default=False, metadata={"key": "personalization_on_nodes", "setting": False}
    )
    """``personalization`` runs on the nodes, which keep the results (a deployment; set by
    ``experiments`` from ``federation.engine``): the ServerApp sends them the final model."""
    round_timeout: float = _f("federation.round_timeout")
    min_replies: int = _f("federation.min_replies")
    resume_dir: str = _f("resume")

    def __post_init__(self) -> None:
        for name, renamed in _RENAMED_VALUES.items():  # deprecated values, with a warning
            value = getattr(self, name)
            if isinstance(value, str) and value in renamed:
                key = self.setting_name(name)
                deprecated(f"{key}={value}", f"{key}={renamed[value]}")
                object.__setattr__(self, name, renamed[value])

    @property
    def evaluations_planned(self) -> int:
        """Federated evaluations a client may release: one per round when evaluation is on."""
        on = is_private(self.privacy_mode) and self.fraction_evaluate > 0
        return self.num_rounds if on and self.privacy_eval_epsilon > 0 else 0

    @property
    def training_epsilon(self) -> float:
        """The part of ``privacy.target_epsilon`` that training may spend.

        The rest, ``privacy.eval_epsilon`` for each planned evaluation, is kept for the noisy
        validation accuracies (basic composition: the epsilons add up to the target).
        """
        return self.privacy_target_epsilon - self.evaluations_planned * self.privacy_eval_epsilon

    # ------------------------------------------------------------------ conversion
    @staticmethod
    def run_config_key(name: str) -> str:
        """Flat run-config key of field ``name`` (``privacy_delta`` -> ``privacy-delta``)."""
        return name.replace("_", "-")

    @classmethod
    def setting_name(cls, name: str) -> str:
        """Hydra key of field ``name`` (``privacy_delta`` -> ``privacy.delta``)."""
        return str(cls._fields()[name].metadata["key"])

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field[Any]]:
        return {f.name: f for f in dataclasses.fields(cls)}

    def to_run_config(self) -> dict[str, Scalar]:
        """Flower's flat run config."""
        return {self.run_config_key(k): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Read a flat run config; unknown keys are ignored, missing ones take defaults."""
        kwargs: dict[str, Any] = {}
        for name, f in cls._fields().items():
            key = cls.run_config_key(name)
            if key not in run_config:
                continue
            kwargs[name] = _coerce(run_config[key], f.default, cls.setting_name(name))
        return cls(**kwargs)

    # ------------------------------------------------------------------ validation
    def validate(self) -> RunSettings:
        """Check every value that can be checked without data; raise ``ValueError`` naming it.

        Each group's own checks are its :meth:`protocol.groups.Group.validate`; the checks
        here involve several groups, or depend on ``privacy.mode``.
        """
        self.groups().validate()
        if self.aggregation_strategy in ROBUST_MIN_CLIENTS:
            a, b = ROBUST_MIN_CLIENTS[self.aggregation_strategy]
            per_round = max(1, int(self.num_clients * self.fraction_train))
            self._require(
                "aggregation_num_malicious",
                per_round >= a * self.aggregation_num_malicious + b,
                f"needs at least {a} * num_malicious + {b} clients a round for "
                f"aggregation.strategy={self.aggregation_strategy!r}, and this federation "
                f"samples {per_round}",
            )
        if is_private(self.privacy_mode):
            eps = self.privacy_target_epsilon
            self._require("privacy_target_epsilon", math.isfinite(eps) and eps > 0, "must be > 0")
            self._require("privacy_delta", 0 < self.privacy_delta < 1, "must be in (0, 1)")
            ev = self.privacy_eval_epsilon
            self._require("privacy_eval_epsilon", math.isfinite(ev) and ev >= 0, "must be >= 0")
            self._require(
                "fraction_evaluate",
                self.fraction_evaluate == 0 or ev > 0,
                "must be 0 under a DP privacy.mode unless privacy.eval_epsilon > 0 (federated "
                "evaluation releases statistics of the clients' private validation data; with "
                "privacy.eval_epsilon > 0 each evaluation releases a noisy accuracy, accounted)",
            )
            self._require(
                "privacy_eval_epsilon",
                self.training_epsilon > 0,
                f"times federation.rounds={self.num_rounds} must stay below "
                f"privacy.target_epsilon={self.privacy_target_epsilon:g} (the rest trains)",
            )
        if self.privacy_mode in MODES and MODES[self.privacy_mode].release(self) == "objective":
            self._require(
                "aggregation_strategy",
                self.aggregation_strategy in OBJECTIVE_STRATEGIES,
                f"must be one of {list(OBJECTIVE_STRATEGIES)} with privacy.mode="
                f"{self.privacy_mode!r}, which releases objectives that only they can sum (set "
                "privacy.functional_aggregation=average for Flower's robust baselines)",
            )
        if self.central_dp_mode != "none":
            self._check_central_dp()
        return self

    def _check_central_dp(self) -> None:
        """Client-level DP: a bounded sensitivity, a sampling that earns amplification."""
        n, mode = self.num_clients, f"central_dp.mode={self.central_dp_mode!r}"
        self._require(
            "central_dp_delta",
            self.central_dp_delta < 1.0 / n,
            f"must be below 1/federation.num_clients = {1.0 / n:.3g} (a client-level delta)",
        )
        expected = self.fraction_train * n
        self._require(
            "fraction_train",
            expected >= 1,
            f"gives {expected:.3g} expected clients a round (federation.num_clients={n}); "
            f"{mode} Poisson-samples clients and needs at least 1",
        )
        self._require(
            "aggregation_strategy",
            self.aggregation_strategy in CENTRAL_DP_STRATEGIES,
            f"must be one of {list(CENTRAL_DP_STRATEGIES)} with {mode}: a median or a "
            "selection depends on every client's update, so one client's data can move the "
            "aggregate by more than the clip and the noise bounds nothing",
        )
        self._require(
            "aggregation_scorer",
            self.aggregation_strategy != "scorer" or self.aggregation_scorer == "uniform",
            f"must be 'uniform' with {mode}: a reliability score computed from the other "
            "clients' updates moves every client's weight, so the sensitivity is not bounded",
        )
        release = MODES[self.privacy_mode].release(self) if self.privacy_mode in MODES else ""
        self._require(
            "privacy_mode",
            release in ("", "weights"),
            f"must release weights with {mode} (got release {release!r}; set "
            "privacy.functional_aggregation=average for the functional mechanism)",
        )

    def groups(self) -> FedPrivConf:
        """These values as the setting groups (launch-only keys keep their defaults)."""
        return from_values({self.setting_name(name): getattr(self, name) for name in _SETTINGS})

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{self.setting_name(name)} {what}, got {show(getattr(self, name))}")


_SETTINGS = tuple(
    f.name for f in dataclasses.fields(RunSettings) if f.metadata.get("setting", True)
)
"""Fields that are settings of :mod:`protocol.groups` (all but ``output_dir`` and
``personalization_on_nodes``)."""

_RENAMED_VALUES = {
    name: RENAMED_VALUES[RunSettings.setting_name(name)]
    for name in _SETTINGS
    if RunSettings.setting_name(name) in RENAMED_VALUES
}
"""Field -> {deprecated value: its new name} (``model_name``: ``logreg`` -> ``softmax``)."""


def upgrade_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config written under deprecated names, with the current ones (old checkpoints).

    Keys of renamed groups (``reliability-strategy`` -> ``aggregation-strategy``) and renamed
    values (``model-name = "logreg"`` -> ``"softmax"``); a key given under both names keeps the
    new name's value.
    """
    out = dict(run_config)
    for old, new in RENAMED_GROUPS.items():
        for key in [k for k in out if k.startswith(f"{old}-")]:
            value = out.pop(key)
            out.setdefault(new + key[len(old) :], value)
    for name, renamed in _RENAMED_VALUES.items():
        key = RunSettings.run_config_key(name)
        if isinstance(out.get(key), str) and out[key] in renamed:
            out[key] = renamed[out[key]]
    return out


def pyproject_section() -> str:
    """``pyproject.toml``'s ``[tool.flwr.app.config]``: the defaults of ``flwr run .``."""
    lines = [
        "[tool.flwr.app.config]",
        "# Generated from protocol/groups/ by `python -m protocol.settings --pyproject --write`;",
        "# tests/protocol/test_one_source.py checks that it is current.",
    ]
    for key, value in RunSettings().to_run_config().items():
        text = json.dumps(value) if isinstance(value, (bool, str)) else repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def write_pyproject(path: Path) -> bool:
    """Replace ``path``'s ``[tool.flwr.app.config]`` table by :func:`pyproject_section`.

    Returns whether the file changed. The table runs from its header to the next table.
    """
    lines = path.read_text().splitlines(keepends=True)
    header = "[tool.flwr.app.config]\n"
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    while end > start + 1 and not lines[end - 1].strip():  # keep the blank line before the next
        end -= 1
    text = "".join([*lines[:start], pyproject_section(), *lines[end:]])
    if text == "".join(lines):
        return False
    path.write_text(text)
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m protocol.settings --pyproject [--write [PATH]]``."""
    parser = argparse.ArgumentParser(prog="python -m protocol.settings", description=__doc__)
    parser.add_argument("--pyproject", action="store_true", help="print [tool.flwr.app.config]")
    parser.add_argument(
        "--write",
        nargs="?",
        const="pyproject.toml",
        metavar="PATH",
        help="replace the table in PATH (default: ./pyproject.toml) instead of printing it",
    )
    args = parser.parse_args(argv)
    if not args.pyproject:
        parser.error("nothing to do: give --pyproject")
    if args.write is None:
        sys.stdout.write(pyproject_section())
    else:
        changed = write_pyproject(Path(args.write))
        print(f"{args.write}: {'updated' if changed else 'already current'}")
    return 0


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Convert a run-config value to the type of the field's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, (int, float)):
        kind = "an integer" if isinstance(default, int) else "a number"
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or math.isnan(number):
            raise ValueError(f"{key} must be {kind}, got {value!r}")
        if isinstance(default, int):
            if not number.is_integer():
                raise ValueError(f"{key} must be {kind}, got {value!r}")
            return int(number)
        return number
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
