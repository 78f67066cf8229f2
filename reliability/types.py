"""Data passed between the server strategy and the reliability scorers.

Everything here is plain numpy: a round's input is what the trained clients released (their
weights, as updates against the global model, and their example counts) plus, optionally, the
server's own update on its clean root data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RoundInput", "Scores", "Weights"]

Weights = dict[str, np.ndarray]
"""Model parameters (or an update to them): parameter name -> array."""


@dataclass(frozen=True)
class RoundInput:
    """What the scorers see in one round.

    Parameters
    ----------
    round : int
        Server round (1-based, as Flower counts).
    client_ids : tuple of int
        Stable ids (partition ids) of the clients that trained, in the order of ``updates``.
    updates : tuple of Weights
        Each client's update ``d_i = w_i - g`` against the global weights ``g``.
    num_examples : tuple of int
        Each client's number of training examples, in the order of ``updates``.
    server_update : Weights or None, default None
        The server's own update on its clean root data this round (FLTrust), or ``None`` when
        the server holds no data.

    Raises
    ------
    ValueError
        If the per-client tuples differ in length or a client id appears twice.

    """

    round: int
    client_ids: tuple[int, ...]
    updates: tuple[Weights, ...]
    num_examples: tuple[int, ...]
    server_update: Weights | None = None

    def __post_init__(self) -> None:
        n = len(self.client_ids)
        if len(self.updates) != n or len(self.num_examples) != n:
            raise ValueError(
                f"RoundInput needs one update and one example count per client, got "
                f"{n} client ids, {len(self.updates)} updates, "
                f"{len(self.num_examples)} example counts"
            )
        if len(set(self.client_ids)) != n:
            raise ValueError(f"RoundInput client_ids must be unique, got {list(self.client_ids)}")

    def __len__(self) -> int:
        return len(self.client_ids)


@dataclass(frozen=True)
class Scores:
    """A scorer's verdict on one round.

    Parameters
    ----------
    scores : numpy.ndarray
        One finite score ``>= 0`` per client for this round (before any memory across rounds).
    updates : tuple of Weights
        The updates to aggregate: the input updates unless the scorer transforms them (FLTrust
        rescales every update to the norm of the server's update).
    details : dict of str to numpy.ndarray, optional
        Per-client diagnostics for the results table (e.g. ``cosine``, ``distance``), each an
        array with one entry per client.

    """

    scores: np.ndarray
    updates: tuple[Weights, ...]
    details: dict[str, np.ndarray] = field(default_factory=dict)
