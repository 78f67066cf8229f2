"""The training groups.

``privacy``, ``federation``, ``aggregation``, ``participants``, ``central_dp`` and
``personalization``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .base import (
    CENTRAL_DP_MODES,
    FUNCTIONAL_AGGREGATIONS,
    FUNCTIONAL_BOUNDS,
    FUNCTIONAL_NOISES,
    GRAD_SAMPLE_MODES,
    MIN_ROUND_TIMEOUT,
    PERSONALIZATIONS,
    STRATEGIES,
    Group,
    launch_only,
)


@dataclass
class PrivacyGroup(Group):
    """``privacy=``: the mechanism and its per-client budget over the whole run.

    ``target_epsilon`` is the client's total budget in every mode; ``privacy=functional``
    spends all of it on its single noise draw. The budget's checks depend on ``mode`` and are
    in :meth:`protocol.settings.RunSettings.validate`.
    """

    NAME: ClassVar[str] = "privacy"

    mode: str = "dpsgd"
    target_epsilon: float = 4.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "pld"
    """dp_accounting PLD under replace-one (the only valid one: n is public)."""
    reproducible_noise: bool = False
    """true: noise derived from ``seed``: NO guarantee against whoever knows it."""
    eval_epsilon: float = 0.0
    """> 0: each federated evaluation releases a noisy accuracy at this epsilon."""
    grad_sample_mode: str = "auto"
    """Opacus per-sample gradients: ``auto`` (the model's measured fastest) | ``ew`` (expanded
    weights) | ``hooks`` | ``functorch`` | ``ghost`` (ghost clipping); the same step in all."""
    functional_bound: str = "l2"
    """The functional mechanism's sensitivity: ``l2`` (tight) | ``paper`` (FM's)."""
    functional_noise: str = "laplace"
    """``laplace`` (FM's, pure epsilon-DP) | ``gaussian`` ((epsilon, delta = privacy.delta))."""
    functional_steps: int = 0
    """Per round: 0 = closed-form minimiser, N = N gradient steps from the global weights."""
    functional_aggregation: str = "objective"
    """``objective``: the server sums the released noisy objectives and minimises once;
    ``average``: FedAvg of the clients' minimisers."""

    def validate(self) -> None:
        """Mechanism options: names, ``max_grad_norm`` > 0, ``functional_steps`` >= 0."""
        self._one_of("grad_sample_mode", GRAD_SAMPLE_MODES)
        self._positive("max_grad_norm")
        self._one_of("functional_bound", FUNCTIONAL_BOUNDS)
        self._one_of("functional_noise", FUNCTIONAL_NOISES)
        self._require("functional_steps", self.functional_steps >= 0, "must be >= 0")
        self._one_of("functional_aggregation", FUNCTIONAL_AGGREGATIONS)


@dataclass
class FederationGroup(Group):
    """``federation=``: clients, rounds, local training and how data is split.

    ``engine``: ``simulation`` (Flower's simulation engine here) or ``deployment`` (a running
    SuperLink at ``superlink`` = ``HOST:PORT``, verified with the CA in ``root_certificates``;
    ``num_clients`` is then how many SuperNodes the server waits for). Those and the simulated
    clients' ``client_cpus``/``client_gpus`` are launch-only (checked by ``experiments``).
    """

    NAME: ClassVar[str] = "federation"

    engine: str = launch_only("simulation")
    num_clients: int = 3
    rounds: int = 3
    fraction_train: float = 1.0
    """Share of clients sampled per round."""
    fraction_evaluate: float = 0.0
    """Share of clients evaluating on their validation split (0: none)."""
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.5
    partitioner: str = "iid"
    """``iid`` | ``dirichlet`` | ``pathological``."""
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    """``pathological`` partitioner."""
    val_fraction: float = 0.1
    round_timeout: float = 600.0
    """Seconds a round waits for replies (a silent node is counted as failed)."""
    min_replies: int = 1
    """Fewer usable replies than this: the round keeps the previous model."""
    client_cpus: int = launch_only(1)
    """CPUs reserved per simulated client."""
    client_gpus: float = launch_only(0.0)
    """GPU share per simulated client (0.25: four clients per GPU)."""
    superlink: str = launch_only("")
    root_certificates: str = launch_only("")

    def validate(self) -> None:
        """Counts > 0, fractions in range, ``round_timeout`` >= 10 s, ``min_replies``."""
        self._require(
            "round_timeout",
            math.isfinite(self.round_timeout) and self.round_timeout >= MIN_ROUND_TIMEOUT,
            f"must be >= {MIN_ROUND_TIMEOUT:g} seconds (Flower polls for replies every 3 s)",
        )
        for name in ["num_clients", "rounds", "local_epochs", "batch_size"]:
            self._require(name, getattr(self, name) > 0, "must be > 0")
        self._positive("learning_rate", "dirichlet_alpha")
        self._require("fraction_train", 0 < self.fraction_train <= 1, "must be in (0, 1]")
        self._require("fraction_evaluate", 0 <= self.fraction_evaluate <= 1, "must be in [0, 1]")
        self._require("val_fraction", 0 <= self.val_fraction < 1, "must be in [0, 1)")
        self._require("classes_per_client", self.classes_per_client > 0, "must be > 0")
        self._require(
            "min_replies",
            1 <= self.min_replies <= self.num_clients,
            f"must be in [1, federation.num_clients={self.num_clients}]",
        )


@dataclass
class AggregationGroup(Group):
    """``aggregation=``: how updates are aggregated (a strategy and, for ``scorer``, its scorer).

    ``strategy=scorer`` weights FedAvg by the reliability scorer ``scorer`` (the
    ``reliability`` package); the others are Flower's robust baselines. Formerly
    ``reliability=`` (still accepted, with a warning).
    """

    NAME: ClassVar[str] = "aggregation"

    strategy: str = "fedavg"
    scorer: str = "uniform"
    decay: float = 0.5
    threshold: float = 0.0
    relative_threshold: float = 0.0
    by_reputation: bool = True
    server_data_size: int = 0
    """Examples held back from the clients' pool for the server (FLTrust's root data)."""
    trim_beta: float = 0.2
    """``fedtrimmedavg``: fraction cut from each end."""
    num_malicious: int = 0
    """``krum``, ``multikrum``, ``bulyan``: assumed Byzantine clients per round."""

    def validate(self) -> None:
        """A known strategy; decay, thresholds, ``trim_beta`` and counts in range."""
        self._one_of("strategy", STRATEGIES)
        self._require("decay", 0 <= self.decay < 1, "must be in [0, 1)")
        self._require("threshold", self.threshold >= 0, "must be >= 0")
        self._require("relative_threshold", 0 <= self.relative_threshold <= 1, "must be in [0, 1]")
        self._require("server_data_size", self.server_data_size >= 0, "must be >= 0")
        self._require("trim_beta", 0 <= self.trim_beta < 0.5, "must be in [0, 0.5)")
        self._require("num_malicious", self.num_malicious >= 0, "must be >= 0")


@dataclass
class ParticipantsGroup(Group):
    """``participants=``: simulated unreliable participants (simulation only)."""

    NAME: ClassVar[str] = "participants"

    unreliable_fraction: float = 0.0
    kind: str = "label_flip"
    noise_rate: float = 0.5
    """``label_noise``: share of labels replaced at random."""
    feature_noise_std: float = 1.0
    """``feature_noise``: std of the Gaussian noise added to features."""
    tiny_size: int = 5
    """``tiny_data``: examples such a client keeps."""

    def validate(self) -> None:
        """Fractions in [0, 1], noise >= 0, ``tiny_size`` > 0."""
        self._require(
            "unreliable_fraction", 0 <= self.unreliable_fraction <= 1, "must be in [0, 1]"
        )
        self._require("noise_rate", 0 <= self.noise_rate <= 1, "must be in [0, 1]")
        self._require("feature_noise_std", self.feature_noise_std >= 0, "must be >= 0")
        self._require("tiny_size", self.tiny_size > 0, "must be > 0")


@dataclass
class CentralDpGroup(Group):
    """``central_dp=``: client-level DP added by the server (DP-FedAvg), over the whole run.

    ``fixed`` clips every client's update to ``clip``; ``adaptive`` starts at ``initial_clip``
    and moves it towards the ``target_quantile`` of the update norms (Andrew et al. 2021),
    from a count noised with std ``count_stddev_fraction`` x the expected clients per round.
    Checks across groups and the calibration are in ``RunSettings.validate`` and
    ``experiments.config``.
    """

    NAME: ClassVar[str] = "central_dp"

    mode: str = "none"
    """``none`` | ``fixed`` | ``adaptive``."""
    target_epsilon: float = 4.0
    delta: float = 1e-5
    clip: float = 1.0
    """``fixed``: the L2 clip norm of each client's update."""
    initial_clip: float = 0.1
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev_fraction: float = 0.05
    """``adaptive``: clipped-count noise std over the expected clients (Andrew et al.: 1/20)."""

    def validate(self) -> None:
        """A known mode; epsilon, clips, rate > 0; delta and quantile in (0, 1)."""
        self._one_of("mode", CENTRAL_DP_MODES)
        self._positive("target_epsilon", "clip", "initial_clip", "clip_lr")
        self._positive("count_stddev_fraction")
        self._require("delta", 0 < self.delta < 1, "must be in (0, 1)")
        self._require("target_quantile", 0 < self.target_quantile < 1, "must be in (0, 1)")


@dataclass
class PersonalizationGroup(Group):
    """``personalization=``: personal models after the federation (Servia-Rodriguez et al. 2018).

    Each client fine-tunes the final global model on its own training data for ``epochs`` of
    plain SGD at ``learning_rate`` (mini-batches of ``federation.batch_size``). The personal
    model never leaves the client, so it costs no privacy; the global model and every ledger
    are unchanged. ``initial_clients=K`` > 0: only the first K owners federate (the paper's
    initial model from a few users); every owner then personalises it.
    """

    NAME: ClassVar[str] = "personalization"

    mode: str = "none"
    """``none`` | ``finetune`` (every layer) | ``last_layer``."""
    epochs: int = 10
    learning_rate: float = 0.05
    initial_clients: int = 0
    """> 0: a federation of the first K owners only (naturally federated data)."""

    def validate(self) -> None:
        """A known mode, ``epochs`` > 0, ``learning_rate`` > 0, ``initial_clients`` >= 0."""
        self._one_of("mode", PERSONALIZATIONS)
        self._require("epochs", self.epochs > 0, "must be > 0")
        self._positive("learning_rate")
        self._require("initial_clients", self.initial_clients >= 0, "must be >= 0")
