"""Random number generators for the privacy layer.

Every noise or sampling draw in :mod:`privacy` takes an explicit :class:`torch.Generator`,
so that no draw silently falls back to torch's global RNG. The privacy modes seed it from OS
entropy (``secure=True``) unless a user sets ``privacy.reproducible_noise``: a generator seeded
from the run config's seed is reproducible, and gives **no guarantee** against the server,
which writes that seed. :func:`derive_seed` serves reproducible runs and the simulation of
participants, never a secret draw.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

__all__ = ["derive_seed", "hardened_normal", "make_generator"]

_SEED_BITS = 63
_SEED_MASK = (1 << _SEED_BITS) - 1


def make_generator(
    seed: int | None, *, secure: bool = False, device: str | torch.device = "cpu"
) -> torch.Generator:
    """Create the :class:`torch.Generator` that drives DP sampling and noise.

    Parameters
    ----------
    seed : int or None
        Seed of the generator. Required (must not be ``None``) when ``secure`` is
        ``False``; ignored when ``secure`` is ``True``.
    secure : bool, default False
        If ``True``, seed the generator from OS entropy (``secrets.randbits(63)``); the
        result is deliberately not reproducible.
    device : str or torch.device, default "cpu"
        Device of the generator. Opacus' Poisson sampler draws on the CPU, so the generator
        handed to :func:`privacy.dpsgd.make_private` must be a CPU generator.

    Returns
    -------
    torch.Generator
        A freshly seeded generator.

    Raises
    ------
    ValueError
        If ``seed`` is ``None`` in non-secure mode, or is not a non-negative int.

    Notes
    -----
    Be honest about what "secure" means here. torch's generators (Mersenne Twister on the
    CPU, Philox on CUDA) are **not** cryptographically secure: an adversary who observes
    enough outputs can in principle reconstruct the state. Opacus' real secure mode
    (``PrivacyEngine(secure_mode=True)``) requires ``torchcsprng``, which has no build for
    torch 2.x, so it cannot be used. Our secure mode is therefore:

    * generators seeded from OS entropy (not reproducible, not guessable from the run seed),
    * plus Opacus' floating-point-attack-resistant Gaussian sampling (``secure_mode`` on the
      ``DPOptimizer``, Opacus ``_generate_noise``: the sum of 4 Gaussians scaled by 1/2,
      Holohan & Braghin 2021, "Secure Random Sampling in Differential Privacy",
      arXiv:2107.10138, Sec. 5.1).

    This closes the known floating-point attack (Jin et al. 2022, arXiv:2112.05307) but does
    not make the PRNG a CSPRNG.

    """
    gen = torch.Generator(device=device)
    if secure:
        gen.manual_seed(secrets.randbits(_SEED_BITS))
        return gen
    if seed is None:
        raise ValueError("privacy.seed must be set when secure mode is off, got None")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"privacy.seed must be a non-negative int, got {seed!r}")
    gen.manual_seed(seed)
    return gen


def hardened_normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> np.ndarray:
    """``N(0, std^2)`` float64 noise of ``shape`` drawn from ``gen`` (fresh on every call).

    Drawn as the sum of four standard normals times ``std / 2`` (the same distribution):
    Opacus' ``secure_mode`` hardening against the floating-point attack on the Gaussian
    (Holohan and Braghin 2021, Sec. 5.1; Jin et al. 2022). ``gen`` must be secret
    (:func:`make_generator` with ``secure=True``) unless the user asked for reproducible noise.
    """
    draws = torch.randn((4, *shape), generator=gen, dtype=torch.float64)
    return (draws.sum(dim=0) * (std / 2.0)).numpy()


def derive_seed(*parts: int) -> int:
    """Deterministically mix integers into a 63-bit seed.

    Used to derive independent per-client / per-round seeds from the run seed, e.g.
    ``derive_seed(run_seed, client_id, round)``. Mixing uses
    :class:`numpy.random.SeedSequence`, whose hashing gives well-separated streams for
    different inputs (including inputs that differ only in order).

    Parameters
    ----------
    *parts : int
        One or more non-negative integers.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``.

    Raises
    ------
    ValueError
        If no part is given or a part is negative or not an int.

    """
    if not parts:
        raise ValueError("derive_seed needs at least one part, got none")
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"derive_seed parts must be non-negative ints, got {p!r}")
    state = np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)
    return int(state[0]) & _SEED_MASK
