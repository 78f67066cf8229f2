"""The flat run config, typed and validated.

Flower passes a flat ``{str: bool | int | float | str}`` run config to both apps.
:class:`RunSettings` is its one typed view: ``experiments`` builds it from the composed Hydra
config and calls :meth:`RunSettings.to_run_config`; the apps call
:meth:`RunSettings.from_run_config`. Each field records the Hydra key it comes from, so an
error names the setting a user actually typed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Scalar = bool | int | float | str


GRAD_SAMPLE_MODES = ("ew", "hooks", "functorch")
"""Opacus per-sample-gradient modes (``privacy.grad_sample_mode``); a test keeps this tuple and
``privacy.dpsgd.GRAD_SAMPLE_MODES`` equal."""

MIN_ROUND_TIMEOUT = 10.0
"""Seconds: Flower's grid polls for replies every 3 s and a SuperNode every 3 s, so a shorter
round timeout fails every round."""

MAX_SEED = 2**63 - 1

ROBUST_MIN_CLIENTS = {"krum": (2, 3), "multikrum": (2, 3), "bulyan": (4, 3)}
"""``strategy: (a, b)``: Flower's rule needs at least ``a * num_malicious + b`` replies a round."""

STRATEGIES = ("fedavg", "scorer", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
"""Names the ServerApp's strategy registry serves (``reliability.strategy``); a test keeps the
registry in ``fl_server.strategies`` and this tuple equal, so configs are checked up front."""

FUNCTIONAL_BOUNDS = ("l2", "paper")
"""Sensitivity bounds of the functional mechanism (``privacy.functional_bound``); a test keeps
this tuple and ``privacy.functional.SENSITIVITY_BOUNDS`` equal."""

FUNCTIONAL_AGGREGATIONS = ("objective", "average")
"""How the server combines functional-mechanism clients (``privacy.functional_aggregation``):
``objective`` sums the clients' released noisy objectives and minimises the sum once;
``average`` averages the clients' own minimisers (FedAvg)."""

OBJECTIVE_STRATEGIES = ("fedavg", "scorer")
"""Strategies that can aggregate released objectives (their weights scale each objective)."""


def _f(key: str, default: Any) -> Any:
    return field(default=default, metadata={"key": key})


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs, as plain values. Field ``x_y`` is run-config key ``x-y``."""

    seed: int = _f("seed", 0)
    dataset_name: str = _f("dataset.name", "digits")
    dataset_hf_name: str = _f("dataset.hf_name", "")
    dataset_feature_key: str = _f("dataset.feature_key", "image")
    dataset_label_key: str = _f("dataset.label_key", "label")
    model_name: str = _f("model.name", "mlp")
    model_hidden: int = _f("model.hidden", 64)
    privacy_mode: str = _f("privacy.mode", "dpsgd")
    privacy_target_epsilon: float = _f("privacy.target_epsilon", 4.0)
    privacy_delta: float = _f("privacy.delta", 1e-5)
    privacy_max_grad_norm: float = _f("privacy.max_grad_norm", 1.0)
    privacy_accountant: str = _f("privacy.accountant", "pld")
    privacy_reproducible_noise: bool = _f("privacy.reproducible_noise", False)
    privacy_eval_epsilon: float = _f("privacy.eval_epsilon", 0.0)
    privacy_grad_sample_mode: str = _f("privacy.grad_sample_mode", "ew")
    privacy_functional_bound: str = _f("privacy.functional_bound", "l2")
    privacy_functional_steps: int = _f("privacy.functional_steps", 0)
    privacy_functional_aggregation: str = _f("privacy.functional_aggregation", "objective")
    num_clients: int = _f("federation.num_clients", 3)
    num_rounds: int = _f("federation.rounds", 3)
    fraction_train: float = _f("federation.fraction_train", 1.0)
    fraction_evaluate: float = _f("federation.fraction_evaluate", 0.0)
    local_epochs: int = _f("federation.local_epochs", 1)
    batch_size: int = _f("federation.batch_size", 32)
    learning_rate: float = _f("federation.learning_rate", 0.5)
    partitioner: str = _f("federation.partitioner", "iid")
    dirichlet_alpha: float = _f("federation.dirichlet_alpha", 0.5)
    classes_per_client: int = _f("federation.classes_per_client", 2)
    val_fraction: float = _f("federation.val_fraction", 0.1)
    reliability_strategy: str = _f("reliability.strategy", "fedavg")
    reliability_scorer: str = _f("reliability.scorer", "uniform")
    reliability_decay: float = _f("reliability.decay", 0.5)
    reliability_threshold: float = _f("reliability.threshold", 0.0)
    reliability_relative_threshold: float = _f("reliability.relative_threshold", 0.0)
    reliability_by_reputation: bool = _f("reliability.by_reputation", True)
    reliability_server_data_size: int = _f("reliability.server_data_size", 0)
    reliability_trim_beta: float = _f("reliability.trim_beta", 0.2)
    reliability_num_malicious: int = _f("reliability.num_malicious", 0)
    participants_unreliable_fraction: float = _f("participants.unreliable_fraction", 0.0)
    participants_kind: str = _f("participants.kind", "label_flip")
    participants_noise_rate: float = _f("participants.noise_rate", 0.5)
    participants_feature_noise_std: float = _f("participants.feature_noise_std", 1.0)
    participants_tiny_size: int = _f("participants.tiny_size", 5)
    device: str = _f("device", "auto")
    output_dir: str = _f("output_dir", "")
    round_timeout: float = _f("federation.round_timeout", 600.0)
    min_replies: int = _f("federation.min_replies", 1)
    resume_dir: str = _f("resume", "")

    @property
    def evaluations_planned(self) -> int:
        """Federated evaluations a client may release: one per round when evaluation is on."""
        on = self.privacy_mode != "none" and self.fraction_evaluate > 0
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
        """Check every value that can be checked without data; raise ``ValueError`` naming it."""
        self._require("seed", 0 <= self.seed <= MAX_SEED, "must be in [0, 2**63 - 1]")
        self._require(
            "privacy_grad_sample_mode",
            self.privacy_grad_sample_mode in GRAD_SAMPLE_MODES,
            f"must be one of {list(GRAD_SAMPLE_MODES)}",
        )
        self._require(
            "round_timeout",
            math.isfinite(self.round_timeout) and self.round_timeout >= MIN_ROUND_TIMEOUT,
            f"must be >= {MIN_ROUND_TIMEOUT:g} seconds (Flower polls for replies every 3 s)",
        )
        if self.reliability_strategy in ROBUST_MIN_CLIENTS:
            a, b = ROBUST_MIN_CLIENTS[self.reliability_strategy]
            per_round = max(1, int(self.num_clients * self.fraction_train))
            self._require(
                "reliability_num_malicious",
                per_round >= a * self.reliability_num_malicious + b,
                f"needs at least {a} * num_malicious + {b} clients a round for "
                f"reliability.strategy={self.reliability_strategy!r}, and this federation "
                f"samples {per_round}",
            )
        positive_int = ["num_clients", "num_rounds", "local_epochs", "batch_size", "model_hidden"]
        for name in positive_int:
            self._require(name, getattr(self, name) > 0, "must be > 0")
        for name in ["learning_rate", "round_timeout", "privacy_max_grad_norm", "dirichlet_alpha"]:
            value = getattr(self, name)
            self._require(name, math.isfinite(value) and value > 0, "must be > 0")
        self._require("fraction_train", 0 < self.fraction_train <= 1, "must be in (0, 1]")
        self._require("fraction_evaluate", 0 <= self.fraction_evaluate <= 1, "must be in [0, 1]")
        self._require("val_fraction", 0 <= self.val_fraction < 1, "must be in [0, 1)")
        self._require("classes_per_client", self.classes_per_client > 0, "must be > 0")
        self._require(
            "min_replies",
            1 <= self.min_replies <= self.num_clients,
            f"must be in [1, federation.num_clients={self.num_clients}]",
        )
        if self.privacy_mode != "none":
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
        self._require(
            "privacy_functional_bound",
            self.privacy_functional_bound in FUNCTIONAL_BOUNDS,
            f"must be one of {list(FUNCTIONAL_BOUNDS)}",
        )
        self._require(
            "privacy_functional_steps", self.privacy_functional_steps >= 0, "must be >= 0"
        )
        self._require(
            "privacy_functional_aggregation",
            self.privacy_functional_aggregation in FUNCTIONAL_AGGREGATIONS,
            f"must be one of {list(FUNCTIONAL_AGGREGATIONS)}",
        )
        if self.privacy_mode == "functional" and self.privacy_functional_aggregation == "objective":
            self._require(
                "reliability_strategy",
                self.reliability_strategy in OBJECTIVE_STRATEGIES,
                f"must be one of {list(OBJECTIVE_STRATEGIES)} with privacy.mode='functional' and "
                "privacy.functional_aggregation='objective' (set "
                "privacy.functional_aggregation=average for Flower's robust baselines)",
            )
        self._require(
            "reliability_strategy",
            self.reliability_strategy in STRATEGIES,
            f"must be one of {list(STRATEGIES)}",
        )
        self._require(
            "participants_unreliable_fraction",
            0 <= self.participants_unreliable_fraction <= 1,
            "must be in [0, 1]",
        )
        self._require(
            "participants_noise_rate", 0 <= self.participants_noise_rate <= 1, "must be in [0, 1]"
        )
        self._require(
            "participants_feature_noise_std",
            self.participants_feature_noise_std >= 0,
            "must be >= 0",
        )
        self._require("participants_tiny_size", self.participants_tiny_size > 0, "must be > 0")
        self._require("reliability_decay", 0 <= self.reliability_decay < 1, "must be in [0, 1)")
        self._require("reliability_threshold", self.reliability_threshold >= 0, "must be >= 0")
        self._require(
            "reliability_relative_threshold",
            0 <= self.reliability_relative_threshold <= 1,
            "must be in [0, 1]",
        )
        self._require(
            "reliability_server_data_size", self.reliability_server_data_size >= 0, "must be >= 0"
        )
        self._require(
            "reliability_trim_beta", 0 <= self.reliability_trim_beta < 0.5, "must be in [0, 0.5)"
        )
        self._require(
            "reliability_num_malicious", self.reliability_num_malicious >= 0, "must be >= 0"
        )
        self._require(
            "device",
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "must be 'auto', 'cpu' or 'cuda[:N]'",
        )
        return self

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{self.setting_name(name)} {what}, got {show(getattr(self, name))}")


def show(value: Any) -> str:
    """A value as a user would have typed it: ``-1`` not ``-1.0``, strings quoted."""
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:g}"
    return repr(value)


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
