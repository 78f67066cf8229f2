"""Simulated unreliable participants (simulation only), driven by ``participants.*``.

Which clients are unreliable is a deterministic function of ``seed`` (so the server and the
report know the ground truth without asking the clients). A kind corrupts either the client's
data when it is loaded (label flipping, label noise, feature noise, tiny data, out-of-
distribution data) or its reply (free riders returning random or stale weights). The
functions read a :class:`ParticipantsConfig`, converted once from the run's settings by
:meth:`ParticipantsConfig.from_settings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tasks.data.partition import ClientData

if TYPE_CHECKING:  # the adapter's type only: nothing here reads the flat run config
    from protocol.settings import RunSettings


@dataclass(frozen=True)
class ParticipantsConfig:
    """Who is simulated as unreliable and how, as explicit parameters (``participants.*``).

    Built by :meth:`from_settings`, the one conversion from the run's settings.

    Attributes
    ----------
    kind : str
        ``participants.kind``: a data corruption (:data:`DATA_KINDS`) or a reply corruption
        (:data:`REPLY_KINDS`).
    unreliable_fraction : float
        ``participants.unreliable_fraction``: the share of clients that are unreliable.
    num_clients : int
        ``federation.num_clients``: the clients they are drawn from.
    seed : int
        ``seed``: the run's seed (who is unreliable, and their corruptions' draws).
    noise_rate : float
        ``participants.noise_rate``: the share of labels ``label_noise`` redraws.
    feature_noise_std : float
        ``participants.feature_noise_std``: the std of ``feature_noise``'s Gaussian noise.
    tiny_size : int
        ``participants.tiny_size``: the training examples ``tiny_data`` keeps.
    """

    kind: str
    unreliable_fraction: float
    num_clients: int
    seed: int
    noise_rate: float
    feature_noise_std: float
    tiny_size: int

    @classmethod
    def from_settings(cls, settings: RunSettings) -> ParticipantsConfig:
        """The simulated participants of a run's settings."""
        return cls(
            kind=settings.participants_kind,
            unreliable_fraction=settings.participants_unreliable_fraction,
            num_clients=settings.num_clients,
            seed=settings.seed,
            noise_rate=settings.participants_noise_rate,
            feature_noise_std=settings.participants_feature_noise_std,
            tiny_size=settings.participants_tiny_size,
        )


DataCorruption = Callable[[ClientData, ParticipantsConfig, np.random.Generator], ClientData]
ReplyCorruption = Callable[
    [dict[str, np.ndarray], dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]
]
DATA_KINDS: dict[str, DataCorruption] = {}
REPLY_KINDS: dict[str, ReplyCorruption] = {}


def unreliable_clients(config: ParticipantsConfig) -> list[int]:
    """Partition ids of the unreliable clients: ``round(fraction * num_clients)`` of them."""
    count = int(round(config.unreliable_fraction * config.num_clients))
    if count > config.num_clients:
        raise ValueError(
            f"participants.unreliable_fraction gives {count} unreliable clients, more than "
            f"federation.num_clients={config.num_clients}"
        )
    rng = np.random.default_rng([config.seed, 0x5EED])
    return sorted(int(i) for i in rng.choice(config.num_clients, size=count, replace=False))


def check_kind(kind: str) -> None:
    """Raise ``ValueError`` listing the kinds when ``kind`` is unknown."""
    known = sorted(DATA_KINDS) + sorted(REPLY_KINDS)
    if kind not in known:
        raise ValueError(f"participants.kind must be one of {known}, got {kind!r}")


def _rng(config: ParticipantsConfig, partition_id: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, partition_id, 0xBAD])


def corrupt_data(data: ClientData, config: ParticipantsConfig, partition_id: int) -> ClientData:
    """The data an unreliable client trains on (unchanged for reliable ones and free riders)."""
    if partition_id not in unreliable_clients(config):
        return data
    check_kind(config.kind)
    fn = DATA_KINDS.get(config.kind)
    return fn(data, config, _rng(config, partition_id)) if fn else data


def corrupt_reply(
    trained: dict[str, np.ndarray],
    global_weights: dict[str, np.ndarray],
    config: ParticipantsConfig,
    partition_id: int,
) -> dict[str, np.ndarray]:
    """The weights an unreliable client sends (free riders replace what they trained)."""
    if partition_id not in unreliable_clients(config):
        return trained
    fn = REPLY_KINDS.get(config.kind)
    return fn(trained, global_weights, _rng(config, partition_id)) if fn else trained


def _register(table: dict, name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        table[name] = fn
        return fn

    return deco


@_register(DATA_KINDS, "label_flip")
def _label_flip(d: ClientData, c: ParticipantsConfig, rng: np.random.Generator) -> ClientData:
    """Every training label y becomes (num_classes - 1 - y)."""
    return dataclasses.replace(d, y_train=(d.num_classes - 1 - d.y_train).astype(np.int64))


@_register(DATA_KINDS, "label_noise")
def _label_noise(d: ClientData, c: ParticipantsConfig, rng: np.random.Generator) -> ClientData:
    """A share ``noise_rate`` of training labels replaced by uniformly random labels."""
    y = d.y_train.copy()
    hit = rng.random(len(y)) < c.noise_rate
    y[hit] = rng.integers(0, d.num_classes, size=int(hit.sum()))
    return dataclasses.replace(d, y_train=y)


@_register(DATA_KINDS, "feature_noise")
def _feature_noise(d: ClientData, c: ParticipantsConfig, rng: np.random.Generator) -> ClientData:
    """Gaussian noise of std ``feature_noise_std`` added to every training feature."""
    noise = rng.normal(0.0, c.feature_noise_std, size=d.x_train.shape)
    return dataclasses.replace(d, x_train=(d.x_train + noise).astype(np.float32))


@_register(DATA_KINDS, "tiny_data")
def _tiny(d: ClientData, c: ParticipantsConfig, rng: np.random.Generator) -> ClientData:
    """Only ``tiny_size`` training examples are kept."""
    keep = rng.permutation(len(d.y_train))[: c.tiny_size]
    return dataclasses.replace(d, x_train=d.x_train[keep], y_train=d.y_train[keep])


@_register(DATA_KINDS, "out_of_distribution")
def _ood(d: ClientData, c: ParticipantsConfig, rng: np.random.Generator) -> ClientData:
    """Features from another distribution: a fixed random permutation of the input values."""
    flat = d.x_train.reshape(len(d.x_train), -1)
    perm = rng.permutation(flat.shape[1])
    return dataclasses.replace(d, x_train=flat[:, perm].reshape(d.x_train.shape))


@_register(REPLY_KINDS, "free_rider_random")
def _random(
    trained: dict[str, np.ndarray], g: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random weights with the global model's per-tensor scale."""
    return {
        k: rng.normal(0.0, float(np.std(v)) or 1.0, size=v.shape).astype(v.dtype)
        for k, v in g.items()
    }


@_register(REPLY_KINDS, "free_rider_stale")
def _stale(
    trained: dict[str, np.ndarray], g: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The received global weights sent back unchanged (no work done)."""
    return {k: v.copy() for k, v in g.items()}
