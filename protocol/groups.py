"""Every setting's one definition: its group, key, type, default and range check.

A run is configured by one group of settings per concern (``dataset``, ``model``,
``privacy``, ``federation``, ``aggregation``, ``participants``, ``central_dp``,
``personalization``) and three top-level keys
(``seed``, ``device``, ``resume``). Each group is a dataclass here; nothing else states a key,
a type or a default:

* ``experiments.schema`` registers :class:`FedPrivConf` (these dataclasses) as Hydra's
  structured config, so ``conf/<group>/*.yaml`` may only set keys that exist here, with values
  of the declared type;
* :class:`protocol.settings.RunSettings`, the flat run config the Flower apps read, takes each
  field's default from here (``_f("privacy.target_epsilon")``);
* ``pyproject.toml``'s ``[tool.flwr.app.config]`` is generated from ``RunSettings``
  (``python -m protocol.settings --pyproject``).

``tests/protocol/test_one_source.py`` checks all of them against these dataclasses. Keys marked
:func:`launch_only` (``federation.engine``, ``superlink``, ``root_certificates``,
``client_cpus``, ``client_gpus``) tell ``experiments`` how to start processes; they are not in
the flat run config. Each group's :meth:`Group.validate` checks what concerns that group only
and raises ``ValueError`` naming the setting and what it found; checks across groups are in
:meth:`protocol.settings.RunSettings.validate`.

No Hydra here: the Flower apps import ``protocol``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

LAUNCH_ONLY = "launch_only"
"""Field-metadata flag of a key that ``experiments`` uses to start processes (not sent to the
Flower apps, so not in :class:`protocol.settings.RunSettings`)."""

GRAD_SAMPLE_MODES = ("ew", "hooks", "functorch")
"""Opacus per-sample-gradient modes (``privacy.grad_sample_mode``); a test keeps this tuple and
``privacy.dpsgd.GRAD_SAMPLE_MODES`` equal."""

FUNCTIONAL_BOUNDS = ("l2", "paper")
"""Sensitivity bounds of the functional mechanism (``privacy.functional_bound``); a test keeps
this tuple and ``privacy.functional.SENSITIVITY_BOUNDS`` equal."""

FUNCTIONAL_NOISES = ("laplace", "gaussian")
"""Noise of the functional mechanism (``privacy.functional_noise``): ``laplace`` (pure epsilon-DP)
or ``gaussian`` ((epsilon, delta)); a test keeps this tuple and
``privacy.functional.FUNCTIONAL_NOISES`` equal."""

FUNCTIONAL_AGGREGATIONS = ("objective", "average")
"""How the server combines functional-mechanism clients (``privacy.functional_aggregation``):
``objective`` sums the clients' released noisy objectives and minimises the sum once;
``average`` averages the clients' own minimisers (FedAvg)."""

STRATEGIES = ("fedavg", "scorer", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
"""Names the ServerApp's strategy registry serves (``aggregation.strategy``); a test keeps the
registry in ``fl_server.registry`` and this tuple equal, so configs are checked up front."""

CENTRAL_DP_MODES = ("none", "fixed", "adaptive")
"""Client-level DP on the server (``central_dp.mode``); a test keeps this tuple and
``privacy.central.CLIPPINGS`` (plus ``none``) equal."""

TABLE_TASKS = ("classification", "regression")
"""``dataset.task`` of a user's table."""

TABLE_NORMALIZATIONS = ("bounds", "client", "none")
"""``dataset.normalization`` of a user's table: declared public bounds, each client's own
statistics (kept local), or none; pooled statistics are never an option."""

PERSONALIZATIONS = ("none", "finetune", "last_layer")
"""``personalization.mode``: after the federation each client fine-tunes the final global model
on its own training data (every layer, or the last layer only); the personal model never
leaves the client."""

MIN_ROUND_TIMEOUT = 10.0
"""Seconds: Flower's grid polls for replies every 3 s and a SuperNode every 3 s, so a shorter
round timeout fails every round."""

MAX_SEED = 2**63 - 1


def launch_only(default: Any) -> Any:
    """A field ``experiments`` reads to start processes; not part of the flat run config."""
    return field(default=default, metadata={LAUNCH_ONLY: True})


def show(value: Any) -> str:
    """A value as a user would have typed it: ``-1`` not ``-1.0``, strings quoted."""
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:g}"
    return repr(value)


class Group:
    """Base of the setting groups: the key of a field and the wording of a failed check."""

    NAME: ClassVar[str] = ""
    """The group's key in the composed config (``privacy``); empty for the top level."""

    @classmethod
    def key(cls, name: str) -> str:
        """Hydra key of field ``name`` (``privacy.delta``)."""
        return f"{cls.NAME}.{name}" if cls.NAME else name

    def validate(self) -> None:
        """Check this group's values; ``ValueError`` names the key and the value found."""

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{self.key(name)} {what}, got {show(getattr(self, name))}")

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            self._require(name, math.isfinite(value) and value > 0, "must be > 0")

    def _one_of(self, name: str, allowed: tuple[str, ...]) -> None:
        self._require(name, getattr(self, name) in allowed, f"must be one of {list(allowed)}")


@dataclass
class DatasetGroup(Group):
    """``dataset=``: which data, and for Hugging Face sources the hub name and columns.

    ``name`` is checked against the dataset registry by ``experiments.config.check_data``.
    """

    NAME: ClassVar[str] = "dataset"

    name: str = "digits"
    hf_name: str = ""
    """``dataset=huggingface``: the hub dataset (``ylecun/mnist``)."""
    feature_key: str = "image"
    label_key: str = "label"
    path: str = ""
    """``dataset=table``: the user's CSV or Parquet file."""
    label: str = ""
    """``dataset=table``: the label column."""
    partition_by: str = ""
    """``dataset=table``: the column naming each row's owner (one client per owner)."""
    features: str = ""
    """``dataset=table``: feature columns, comma-separated ("": every other column)."""
    task: str = "classification"
    """``dataset=table``: ``classification`` | ``regression``."""
    bounds: str = ""
    """``dataset=table``: declared public bounds, ``col:lower:upper,...`` (never the data's)."""
    normalization: str = "client"
    """``dataset=table``: ``bounds`` (declared) | ``client`` (each owner's own statistics,
    kept local) | ``none``; never statistics of the pooled data."""
    test_fraction: float = 0.2
    """``dataset=table``: share of each owner's rows kept for its own test part."""

    def validate(self) -> None:
        """Table options: ``task``, ``normalization`` names, ``test_fraction`` in (0, 1)."""
        self._one_of("task", TABLE_TASKS)
        self._one_of("normalization", TABLE_NORMALIZATIONS)
        self._require("test_fraction", 0 < self.test_fraction < 1, "must be in (0, 1)")


@dataclass
class ModelGroup(Group):
    """``model=``: a registered model and its hidden width (registry names: ``tasks``)."""

    NAME: ClassVar[str] = "model"

    name: str = "mlp"
    hidden: int = 64

    def validate(self) -> None:
        """``hidden`` > 0."""
        self._require("hidden", self.hidden > 0, "must be > 0")


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
    grad_sample_mode: str = "ew"
    """Opacus per-sample gradients: ``ew`` (expanded weights) | ``hooks`` | ``functorch``."""
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


@dataclass
class FedPrivConf(Group):
    """The whole composed config (``conf/config.yaml``): the top-level keys and the groups."""

    seed: int = 0
    device: str = "auto"
    """``auto`` | ``cpu`` | ``cuda[:N]``."""
    resume: str = ""
    """A run directory: continue it from its last checkpoint."""
    dataset: DatasetGroup = field(default_factory=DatasetGroup)
    model: ModelGroup = field(default_factory=ModelGroup)
    privacy: PrivacyGroup = field(default_factory=PrivacyGroup)
    federation: FederationGroup = field(default_factory=FederationGroup)
    aggregation: AggregationGroup = field(default_factory=AggregationGroup)
    participants: ParticipantsGroup = field(default_factory=ParticipantsGroup)
    central_dp: CentralDpGroup = field(default_factory=CentralDpGroup)
    personalization: PersonalizationGroup = field(default_factory=PersonalizationGroup)

    def validate(self) -> None:
        """The top-level keys, then every group's own checks."""
        self._require("seed", 0 <= self.seed <= MAX_SEED, "must be in [0, 2**63 - 1]")
        self._require(
            "device",
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "must be 'auto', 'cpu' or 'cuda[:N]'",
        )
        for group in self.groups():
            group.validate()

    def groups(self) -> Iterator[Group]:
        """The groups, in the order of the fields."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Group):
                yield value


GROUPS: dict[str, Any] = {
    f.name: f.default_factory
    for f in dataclasses.fields(FedPrivConf)
    if f.default_factory is not dataclasses.MISSING
}
"""Group name -> its dataclass (a :class:`Group`), as :class:`FedPrivConf` nests them."""


def setting_field(key: str) -> dataclasses.Field[Any]:
    """The dataclass field of setting ``key`` (``privacy.delta``; ``seed`` for the top level).

    Raises
    ------
    KeyError
        Naming ``key`` when no group defines it.
    """
    group, _, name = key.rpartition(".")
    if not group:
        fields = [f for f in dataclasses.fields(FedPrivConf) if f.name not in GROUPS]
    elif group in GROUPS:
        fields = list(dataclasses.fields(GROUPS[group]))
    else:
        fields = []
    for f in fields:
        if f.name == name:
            return f
    raise KeyError(f"no setting {key!r} in protocol.groups")


def default_of(key: str) -> Any:
    """The default of setting ``key`` (``privacy.target_epsilon`` -> 4.0)."""
    return setting_field(key).default


def settings_keys(include_launch_only: bool = True) -> list[str]:
    """Every setting's key, top level first, then group by group."""
    keys = [f.name for f in dataclasses.fields(FedPrivConf) if f.name not in GROUPS]
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            if include_launch_only or not f.metadata.get(LAUNCH_ONLY, False):
                keys.append(f"{group}.{f.name}")
    return keys


def from_values(values: Mapping[str, Any]) -> FedPrivConf:
    """A :class:`FedPrivConf` from ``{key: value}``; keys not given keep their defaults."""
    by_group: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    top: dict[str, Any] = {}
    for key, value in values.items():
        setting_field(key)  # a KeyError for a key no group defines
        group, _, name = key.rpartition(".")
        (by_group[group] if group else top)[name] = value
    groups: dict[str, Any] = {group: GROUPS[group](**kw) for group, kw in by_group.items()}
    return FedPrivConf(**top, **groups)


# ---------------------------------------------------------------------- deprecated names
RENAMED_GROUPS: dict[str, str] = {"reliability": "aggregation"}
"""Old group -> new group: the Hydra group (``reliability=krum``), its keys
(``reliability.scorer``), run-config keys (``reliability-scorer``)."""

RENAMED_VALUES: dict[str, dict[str, str]] = {"model.name": {"logreg": "softmax"}}
"""Setting -> {old value: new value}; the group option of the same name (``model=logreg``)
is renamed with it."""


class DeprecatedSettingWarning(FutureWarning):
    """A deprecated setting name was used (a ``FutureWarning``: Python shows it to end users)."""


def deprecated(old: str, new: str) -> None:
    """Warn that ``old`` is deprecated and name ``new``."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecatedSettingWarning, stacklevel=3)
