"""Noise calibration searched once per machine: a small JSON cache of public numbers.

The DP-SGD noise multiplier (:func:`privacy.accounting.calibrate_noise`) is a pure function of
public parameters: the accountant, the target epsilon and delta, the Poisson sample rate and
the number of steps (the sample rate comes from a client's example count, which is public
under the replace-one relation, ``docs/privacy.md``). Its bisection takes about a second with
PLD (a few with PRV), and the pre-start data check and every client process of a simulation
used to repeat it. :func:`calibrated_noise` looks the result up in a cache file first.

Privacy
-------
The cache holds public numbers only: the parameters above and the noise multiplier they give,
never data, losses, weights or anything else computed from private data. It lives on this
machine only, in the directory this node keeps its converted datasets in (:func:`cache_dir`:
``FEDPRIV_CACHE``, else ``~/.cache/fedpriv``), never one the server or a run config names, and
nothing reads it but this node. An entry can only save the search, never weaken a guarantee:
before a cached noise multiplier is used its epsilon is recomputed with the same accountant
and the entry is ignored (and searched again) unless that epsilon lies in
``[target * (1 - rel_tol), target]``, the contract of the search itself. The file is written
atomically (:func:`protocol.atomic.write_atomically`); two processes writing at once can lose
an entry (the next caller searches again), never tear the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from privacy.accounting import calibrate_noise, get_accountant
from protocol.atomic import write_atomically

__all__ = ["CACHE_ENV", "SWITCH_ENV", "cache_dir", "cache_file", "calibrated_noise"]

CACHE_ENV = "FEDPRIV_CACHE"
"""Environment variable naming the node's cache directory (also the converted datasets')."""
SWITCH_ENV = "FEDPRIV_CALIBRATION_CACHE"
"""``off`` (or ``0``, ``no``, ``false``) turns the calibration cache off."""
CACHE_NAME = "calibration.json"
FORMAT = 1
"""Bumped when the meaning of a key or of the search changes: older entries are then ignored."""
MAX_ENTRIES = 4096
"""Entries kept; beyond this the oldest are dropped (one entry is about 100 bytes)."""


def cache_dir() -> Path | None:
    """The node's cache directory, or ``None`` when the calibration cache is off.

    ``FEDPRIV_CACHE`` when set, else ``~/.cache/fedpriv`` (as
    :func:`tasks.data.registry.cache_dir`); ``FEDPRIV_CALIBRATION_CACHE=off`` turns it off.
    """
    if os.environ.get(SWITCH_ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return None
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedpriv"


def cache_file() -> Path | None:
    """The cache file (``calibration.json`` in :func:`cache_dir`), ``None`` when off."""
    folder = cache_dir()
    return None if folder is None else folder / CACHE_NAME


def _key(
    accountant: str,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    rel_tol: float,
) -> str:
    # repr of floats round-trips exactly: equal keys mean bit-equal parameters
    return json.dumps(
        [FORMAT, accountant, repr(float(target_epsilon)), repr(float(delta)),
         repr(float(sample_rate)), int(steps), repr(float(rel_tol))]
    )  # fmt: skip


def _read(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: float(v)
        for k, v in data.items()
        if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _write(path: Path, key: str, value: float) -> None:
    entries = _read(path)  # merge with what other processes wrote meanwhile
    entries.pop(key, None)
    entries[key] = value
    if len(entries) > MAX_ENTRIES:  # dicts keep insertion order: drop the oldest
        entries = dict(list(entries.items())[-MAX_ENTRIES:])
    try:
        write_atomically(path, json.dumps(entries, indent=0))
    except OSError:
        pass  # an unwritable cache only costs the next search


def calibrated_noise(
    accountant: str,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    rel_tol: float = 0.01,
) -> float:
    """:func:`privacy.accounting.calibrate_noise`, searched once per machine.

    Returns the cached noise multiplier when the cache holds one for exactly these
    parameters and the accountant confirms its epsilon is in ``[target * (1 - rel_tol),
    target]``; otherwise searches (raising what the search raises), stores the result and
    returns it. With the cache off (:func:`cache_dir` is ``None``) this is the search.
    """
    path = cache_file()
    key = _key(accountant, target_epsilon, delta, sample_rate, steps, rel_tol)
    if path is not None:
        hit = _read(path).get(key)
        if hit is not None and math.isfinite(hit) and hit > 0:
            eps = get_accountant(accountant).epsilon(((hit, sample_rate, steps),), delta)
            if target_epsilon * (1 - rel_tol) <= eps <= target_epsilon:
                return hit
    sigma = calibrate_noise(accountant, target_epsilon, delta, sample_rate, steps, rel_tol)
    if path is not None:
        _write(path, key, sigma)
    return sigma
