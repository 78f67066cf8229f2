"""Structured-config schema for ``conf/``: every key, its type and its default.

Hydra merges the YAML groups into these dataclasses, so a misspelt key or a value of the wrong
type fails at composition; value ranges are checked by
:meth:`protocol.settings.RunSettings.validate` and :func:`experiments.config.check_data`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class DatasetConf:
    """``dataset=``: which data, and for Hugging Face sources the hub name and columns."""

    name: str = "digits"
    hf_name: str = ""
    feature_key: str = "image"
    label_key: str = "label"


@dataclass
class ModelConf:
    """``model=``: a registered model and its hidden width."""

    name: str = "mlp"
    hidden: int = 64


@dataclass
class PrivacyConf:
    """``privacy=``: the mechanism and its per-client budget over the whole run.

    ``target_epsilon`` is the client's total budget in every mode; ``privacy=functional``
    spends all of it on its single noise draw. ``functional_bound`` (``l2`` | ``paper``) picks
    the functional mechanism's sensitivity; ``functional_steps`` is the number of gradient
    steps per round from the global weights towards the noisy objective's minimiser
    (0: the closed-form minimiser). ``functional_aggregation``: ``objective`` (the server sums
    the released noisy objectives and minimises once) or ``average`` (FedAvg of minimisers).
    """

    mode: str = "dpsgd"
    target_epsilon: float = 4.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "pld"
    reproducible_noise: bool = False
    eval_epsilon: float = 0.0
    grad_sample_mode: str = "ew"
    functional_bound: str = "l2"
    functional_steps: int = 0
    functional_aggregation: str = "objective"


@dataclass
class FederationConf:
    """``federation=``: clients, rounds, local training and how data is split.

    ``engine``: ``simulation`` (Flower's simulation engine here) or ``deployment`` (a running
    SuperLink at ``superlink`` = ``HOST:PORT``, verified with the CA in ``root_certificates``;
    ``num_clients`` is then how many SuperNodes the server waits for).
    """

    engine: str = "simulation"
    num_clients: int = 3
    rounds: int = 3
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.5
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    val_fraction: float = 0.1
    round_timeout: float = 600.0
    min_replies: int = 1
    client_cpus: int = 1
    client_gpus: float = 0.0
    superlink: str = ""
    root_certificates: str = ""


@dataclass
class ReliabilityConf:
    """``reliability=``: how updates are combined (our scorer or a robust baseline)."""

    strategy: str = "fedavg"
    scorer: str = "uniform"
    decay: float = 0.5
    threshold: float = 0.0
    relative_threshold: float = 0.0
    by_reputation: bool = True
    server_data_size: int = 0
    trim_beta: float = 0.2
    num_malicious: int = 0


@dataclass
class ParticipantsConf:
    """``participants=``: simulated unreliable participants (simulation only)."""

    unreliable_fraction: float = 0.0
    kind: str = "label_flip"
    noise_rate: float = 0.5
    feature_noise_std: float = 1.0
    tiny_size: int = 5


@dataclass
class FedPrivConf:
    """The whole composed config (``conf/config.yaml``)."""

    seed: int = 0
    device: str = "auto"
    resume: str = ""
    dataset: DatasetConf = field(default_factory=DatasetConf)
    model: ModelConf = field(default_factory=ModelConf)
    privacy: PrivacyConf = field(default_factory=PrivacyConf)
    federation: FederationConf = field(default_factory=FederationConf)
    reliability: ReliabilityConf = field(default_factory=ReliabilityConf)
    participants: ParticipantsConf = field(default_factory=ParticipantsConf)


def register_schema() -> None:
    """Register the schema as ``fedpriv_schema`` for ``conf/config.yaml``'s defaults list."""
    ConfigStore.instance().store(name="fedpriv_schema", node=FedPrivConf)
