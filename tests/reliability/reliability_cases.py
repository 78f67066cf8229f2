"""Hand-made client updates for the reliability tests (seeded numpy)."""

from __future__ import annotations

import numpy as np

from reliability import RoundInput, Weights

SHAPES = {"fc.weight": (20, 10), "fc.bias": (10,), "out.weight": (3, 10)}
N_HONEST = 8


def unflatten(vec: np.ndarray) -> Weights:
    out, i = {}, 0
    for k, shape in SHAPES.items():
        size = int(np.prod(shape))
        out[k] = vec[i : i + size].reshape(shape).astype(np.float32)
        i += size
    return out


def dim() -> int:
    return sum(int(np.prod(s)) for s in SHAPES.values())


def direction(seed: int = 0) -> np.ndarray:
    d = np.random.default_rng(seed).normal(size=dim())
    return d / np.linalg.norm(d)


def honest(rng: np.random.Generator, true: np.ndarray, noise: float = 0.3) -> np.ndarray:
    """``true + noise`` with noise of norm about ``noise * ||true||``."""
    return true + rng.normal(scale=noise / np.sqrt(true.size), size=true.size)


def attacked_round(seed: int = 0, rnd: int = 1, server: bool = True) -> RoundInput:
    """8 honest clients (ids 0-7), then negated (8), large noise (9), free rider zeros (10)."""
    rng = np.random.default_rng(seed + 1000 * rnd)
    true = direction(seed)
    vecs = [honest(rng, true) for _ in range(N_HONEST)]
    vecs.append(-honest(rng, true))
    vecs.append(rng.normal(scale=10 / np.sqrt(true.size), size=true.size))
    vecs.append(np.zeros(true.size))
    return RoundInput(
        round=rnd,
        client_ids=tuple(range(len(vecs))),
        updates=tuple(unflatten(v) for v in vecs),
        num_examples=tuple(100 + 10 * i for i in range(len(vecs))),
        server_update=unflatten(honest(rng, true, 0.2)) if server else None,
    )


def non_iid_round(seed: int = 0, n: int = 10, bias: float = 0.5) -> RoundInput:
    """Honest clients only: ``true + bias_i + small noise`` with ``||bias_i|| = bias``."""
    rng = np.random.default_rng(seed + 10_000)  # not the generator of direction(seed)
    true = direction(seed)
    vecs = []
    for _ in range(n):
        b = rng.normal(size=true.size)
        vecs.append(honest(rng, true, 0.1) + bias * b / np.linalg.norm(b))
    return RoundInput(
        round=1,
        client_ids=tuple(range(n)),
        updates=tuple(unflatten(v) for v in vecs),
        num_examples=(100,) * n,
        server_update=unflatten(honest(rng, true, 0.2)),
    )


def flat(w: Weights) -> np.ndarray:
    return np.concatenate([np.asarray(w[k], dtype=np.float64).ravel() for k in SHAPES])
