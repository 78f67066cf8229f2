"""Server checkpoints: everything a resumed run needs, written atomically after every round.

A checkpoint lives in ``<run dir>/checkpoint/``:

``weights-round-NNNN.npz``  the global weights after round NNNN (numpy, no pickle)
``checkpoint.json``         the round number, the results rows so far, the strategy's state
                            (sampling RNG, reliability reputations, clients' last epsilon), the
                            run's flat config, and the name and SHA-256 of the weights file

Both files are written to a temporary name and moved into place with :func:`os.replace`; the
weights go first and ``checkpoint.json`` last, so ``checkpoint.json`` always names a complete
weights file. A crash at any point leaves the previous checkpoint readable (the previous
weights file is only deleted once the new ``checkpoint.json`` is in place).

Floats that JSON cannot hold (NaN, infinities: e.g. the epsilon of ``privacy=none``) are
written as ``{"__float__": "nan"}`` and read back as floats, so the file is strict JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
DIRNAME = "checkpoint"
INDEX = "checkpoint.json"

OPERATIONAL_KEYS = frozenset(
    {"num-rounds", "round-timeout", "min-replies", "device", "output-dir", "resume-dir"}
)
"""Run-config keys a resumed run may change: none of them changes the data, the model or the
privacy of what was trained so far (``num-rounds`` may only grow)."""


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not fit the run that wants to resume it."""


@dataclass
class Checkpoint:
    """The state of a run after its last completed round.

    Attributes
    ----------
    round : int
        The last completed round (0: only the initial model was evaluated).
    weights : dict of str to numpy.ndarray
        The global weights after ``round``.
    metrics : list of dict
        ``metrics.csv``'s rows so far (round 0 .. ``round``).
    clients : list of dict
        ``clients.csv``'s rows so far.
    strategy : dict
        The strategy's JSON state (:meth:`fl_server.strategy.FedPrivMixin.strategy_state`).
    run_config : dict
        The flat run config of the run that wrote it.
    wall_seconds : float
        Wall time the run had spent when the checkpoint was written.
    """

    round: int
    weights: dict[str, np.ndarray]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)
    strategy: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0


def checkpoint_dir(run_dir: Path) -> Path:
    """Where ``run_dir``'s checkpoint lives."""
    return Path(run_dir) / DIRNAME


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint index."""
    return (checkpoint_dir(run_dir) / INDEX).is_file()


# ---------------------------------------------------------------------- JSON with non-finite floats
def _encode(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # 'nan', 'inf', '-inf'
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(obj: dict[str, Any]) -> Any:
    if set(obj) == {"__float__"}:
        return float(obj["__float__"])
    return obj


def dumps(value: Any) -> str:
    """Strict JSON of ``value``; non-finite floats become ``{"__float__": "nan"}``."""
    return json.dumps(_encode(value), indent=1, allow_nan=False)


def loads(text: str) -> Any:
    """Inverse of :func:`dumps`."""
    return json.loads(text, object_hook=_decode)


# ---------------------------------------------------------------------- writing
def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _npz_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in weights.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` into ``run_dir/checkpoint/`` atomically; return the index path."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data = _npz_bytes(ckpt.weights)
    name = f"weights-round-{ckpt.round:04d}.npz"
    _atomic_bytes(folder / name, data)
    index = {
        "format": FORMAT,
        "round": int(ckpt.round),
        "weights_file": name,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "wall_seconds": float(ckpt.wall_seconds),
        "run_config": ckpt.run_config,
        "strategy": ckpt.strategy,
        "metrics": ckpt.metrics,
        "clients": ckpt.clients,
    }
    _atomic_bytes(folder / INDEX, dumps(index).encode())
    for old in folder.glob("weights-round-*.npz"):  # only once the new index is in place
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / INDEX


# ---------------------------------------------------------------------- reading
def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read ``run_dir``'s checkpoint, checking the weights against their recorded hash.

    Raises
    ------
    CheckpointError
        If there is no checkpoint, or it is damaged (unreadable index, missing weights file,
        hash mismatch, unknown format).
    """
    folder = checkpoint_dir(run_dir)
    index_path = folder / INDEX
    if not index_path.is_file():
        raise CheckpointError(f"resume={str(run_dir)!r}: no checkpoint at {index_path}")
    try:
        index = loads(index_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"resume: checkpoint {index_path} is unreadable: {err}") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(
            f"resume: checkpoint {index_path} has format "
            f"{index.get('format') if isinstance(index, dict) else None!r}, expected {FORMAT}"
        )
    weights_path = folder / str(index["weights_file"])
    try:
        data = weights_path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"resume: checkpoint weights {weights_path} missing: {err}") from err
    if hashlib.sha256(data).hexdigest() != index["weights_sha256"]:
        raise CheckpointError(f"resume: checkpoint weights {weights_path} fail their SHA-256")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        weights = {k: npz[k] for k in npz.files}
    return Checkpoint(
        round=int(index["round"]),
        weights=weights,
        metrics=list(index.get("metrics", [])),
        clients=list(index.get("clients", [])),
        strategy=dict(index.get("strategy", {})),
        run_config=dict(index.get("run_config", {})),
        wall_seconds=float(index.get("wall_seconds", 0.0)),
    )


def config_differences(
    stored: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(key, stored, current)`` for every non-operational run-config key that differs."""
    keys = (set(stored) | set(current)) - OPERATIONAL_KEYS
    return [
        (k, stored.get(k), current.get(k))
        for k in sorted(keys)
        if k in stored and k in current and stored[k] != current[k]
    ]
