"""Canaries: crafted records, each put in the audited client's data by a secret fair coin.

Canary ``i`` is a crafted input ``x_i`` (a sparse pattern: a random eighth of the features at
the top of their public range, the rest at the bottom, so that canaries overlap little with
each other) with two labels: ``y_in_i`` and ``y_out_i != y_in_i``. Its slot in the audited client's
training data holds ``(x_i, y_in_i)`` when its coin is heads and ``(x_i, y_out_i)`` otherwise, so
the two datasets of one coin differ in one record and have the same size: neighbours under
replace-one, the relation every fedpriv guarantee is stated for (``docs/privacy.md``; the
client's ``n`` is public and does not depend on the coins). The canaries themselves are public
(derived from the run's seed: the attacker knows them); only the coins are secret, drawn from
the OS's CSPRNG (:class:`secrets.SystemRandom`) and never derived from a seed.

``audit.canary_kind`` (:data:`CANARY_KINDS`) picks these input-space canaries (``input``) or
Dirac gradient canaries (``gradient``, :class:`DiracCanaries`: one public parameter coordinate
per canary, whose slot's per-sample gradient is ``+C`` or ``-C`` there by the same secret coin;
the trainer that adds them is :mod:`tasks.audit.gradient`).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

import numpy as np
from torch import nn

from tasks.data.partition import ClientData

Weights = dict[str, np.ndarray]

CANARY_KINDS: dict[str, str] = {
    "input": "mislabelled crafted records in the audited client's training data",
    "gradient": "Dirac gradient canaries in the audited client's DP-SGD (white-box)",
}
"""``audit.canary_kind``: the kinds of canary, and what each is."""


@dataclass(frozen=True)
class Canaries:
    """``m`` crafted inputs and their two labels (public: the attacker knows all of this)."""

    x: np.ndarray
    """Shape ``(m, *input_shape)``, float32, inside the public feature range."""
    y_in: np.ndarray
    """The label a canary carries when its coin is heads."""
    y_out: np.ndarray
    """The label of the replacement record when its coin is tails (always ``!= y_in``)."""

    def __len__(self) -> int:
        return len(self.y_in)


def make_canaries(
    m: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    lower: np.ndarray,
    upper: np.ndarray,
    seed: int,
) -> Canaries:
    """``m`` canaries: sparse inputs within ``[lower, upper]`` per feature, two distinct labels.

    ``seed`` is public (the run's): the design is known to the attacker, the coins are not.
    """
    if num_classes < 2:
        raise ValueError(f"an audit needs a classification dataset, got num_classes={num_classes}")
    rng = np.random.default_rng([seed, 0xCA7A])
    lo = np.broadcast_to(
        np.asarray(lower, dtype=np.float64).reshape(-1), (int(np.prod(input_shape)),)
    )
    hi = np.broadcast_to(np.asarray(upper, dtype=np.float64).reshape(-1), lo.shape)
    on = max(1, lo.size // 8)
    mask = np.zeros((m, lo.size), dtype=bool)
    for row in mask:
        row[rng.choice(lo.size, size=on, replace=False)] = True
    x = np.where(mask, hi, lo).astype(np.float32).reshape(m, *input_shape)
    y_in = rng.integers(0, num_classes, size=m)
    y_out = (y_in + rng.integers(1, num_classes, size=m)) % num_classes
    return Canaries(x, y_in.astype(np.int64), y_out.astype(np.int64))


def draw_coins(m: int, rng: secrets.SystemRandom | None = None) -> np.ndarray:
    """``m`` fair secret coins (True: the canary is in), from the OS's CSPRNG."""
    source = rng if rng is not None else secrets.SystemRandom()
    return np.array([source.random() < 0.5 for _ in range(m)], dtype=bool)


def insert_canaries(data: ClientData, canaries: Canaries, coins: np.ndarray) -> ClientData:
    """``data`` with one training record per canary slot: the canary or its replacement.

    Appended after the client's own records (the order is not released: DP-SGD samples
    records by Poisson sampling, plain SGD shuffles). Validation data is left alone.
    """
    if len(coins) != len(canaries):
        raise ValueError(f"need one coin per canary, got {len(coins)} for {len(canaries)}")
    labels = np.where(coins, canaries.y_in, canaries.y_out).astype(data.y_train.dtype)
    return dataclasses.replace(
        data,
        x_train=np.concatenate([data.x_train, canaries.x.astype(data.x_train.dtype)]),
        y_train=np.concatenate([data.y_train, labels]),
    )


@dataclass(frozen=True)
class DiracCanaries:
    """``m`` public canary coordinates (the attacker knows them; the coins it does not)."""

    names: tuple[str, ...]
    """The trainable parameters, in ``named_parameters`` order (the optimizer's)."""
    sizes: tuple[int, ...]
    """Their numbers of entries."""
    index: np.ndarray
    """Shape ``(m,)``: each canary's coordinate in the concatenation of the flat parameters."""

    def __len__(self) -> int:
        return len(self.index)

    def at(self, weights: Weights) -> np.ndarray:
        """The values of ``weights`` at the canaries' coordinates, float64."""
        flat = np.concatenate(
            [np.asarray(weights[k], dtype=np.float64).reshape(-1) for k in self.names]
        )
        return flat[self.index]


def make_gradient_canaries(model: nn.Module, m: int, seed: int) -> DiracCanaries:
    """``m`` distinct coordinates of ``model``'s trainable parameters, drawn from ``seed``."""
    named = [(k, p.numel()) for k, p in model.named_parameters() if p.requires_grad]
    total = sum(n for _, n in named)
    if m > total:
        raise ValueError(
            f"audit.canaries must be at most the model's {total} trainable parameters for "
            f"audit.canary_kind=gradient (one coordinate per canary), got {m}"
        )
    rng = np.random.default_rng([seed, 0xD12AC])
    index = rng.choice(total, size=m, replace=False).astype(np.int64)
    return DiracCanaries(tuple(k for k, _ in named), tuple(n for _, n in named), index)
