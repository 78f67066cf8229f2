"""Server checkpoints: everything a resumed run needs, written atomically after every round.

A checkpoint lives in ``<run dir>/checkpoint/``:

``weights-round-NNNN.npz``  the global weights after round NNNN (numpy, no pickle)
``checkpoint.json``         the round number, the results rows so far, the strategy's state
                            (sampling RNG, reliability reputations, clients' last epsilon), the
                            run's flat config, and the name and SHA-256 of the weights file

Both files are written through :func:`protocol.atomic.write_atomically` (temporary file, fsync,
rename, directory fsync); the weights go first and ``checkpoint.json`` last, so
``checkpoint.json`` always names a complete weights file. A crash at any point leaves the
previous checkpoint readable (the previous weights file is only deleted once the new
``checkpoint.json`` is in place). :func:`load_checkpoint` verifies everything before a resumed
run starts.

Floats that JSON cannot hold (NaN, infinities: e.g. the epsilon of ``privacy=none``) are
written as ``{"__float__": "nan"}`` and read back as floats, so the file is strict JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol.atomic import write_atomically
from protocol.settings import upgrade_run_config

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
        The strategy's JSON state (:meth:`fl_server.mixin.FedPrivMixin.strategy_state`).
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
    write_atomically(folder / name, data)
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
    write_atomically(folder / INDEX, dumps(index))
    for old in folder.glob("weights-round-*.npz"):  # only once the new index is in place
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / INDEX


# ---------------------------------------------------------------------- reading
WEIGHTS_NAME = re.compile(r"weights-round-(\d{4,})\.npz")
"""The only weights file names a checkpoint may point to (no directories, no other names)."""


def _fail(run_dir: Path, what: str) -> CheckpointError:
    return CheckpointError(f"resume={str(run_dir)!r}: checkpoint {what}")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_checkpoint(
    run_dir: Path, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> Checkpoint:
    """Read and verify ``run_dir``'s checkpoint completely; every defect is a clean error.

    Checks: the index is strict JSON of the known format with fields of the right types; the
    round is an integer >= 0 and the metrics rows are rounds ``0..round`` in order; the
    weights file name is ``weights-round-NNNN.npz`` for that round (nothing else, no path);
    the file exists, matches its SHA-256 and loads as an npz without pickles; every weight is
    finite; and, given ``shapes`` (the model's, ``name -> shape``), the weights have exactly
    those names and shapes.

    Raises
    ------
    CheckpointError
        Naming ``resume``, the run directory and what is wrong.
    """
    folder = checkpoint_dir(run_dir)
    index_path = folder / INDEX
    if not index_path.is_file():
        raise CheckpointError(f"resume={str(run_dir)!r}: no checkpoint at {index_path}")
    try:
        index = loads(index_path.read_text())
    except (OSError, ValueError) as err:
        raise _fail(run_dir, f"{index_path} is unreadable: {err}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise _fail(run_dir, f"{index_path} has format {found!r}, expected {FORMAT}")
    rnd = _int(index.get("round"))
    if rnd is None or rnd < 0:
        raise _fail(run_dir, f"round must be an integer >= 0, got {index.get('round')!r}")
    for key, kind in (
        ("metrics", list),
        ("clients", list),
        ("strategy", dict),
        ("run_config", dict),
    ):
        if not isinstance(index.get(key, kind()), kind):
            raise _fail(run_dir, f"{key} must be a JSON {kind.__name__}")
    metrics = list(index.get("metrics", []))
    rounds = [row.get("round") if isinstance(row, dict) else None for row in metrics]
    if rounds != list(range(rnd + 1)):
        raise _fail(run_dir, f"round {rnd} does not match its metrics rows (rounds {rounds[:12]})")
    name = index.get("weights_file")
    match = WEIGHTS_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or int(match.group(1)) != rnd:
        raise _fail(run_dir, f"weights_file must be 'weights-round-{rnd:04d}.npz', got {name!r}")
    digest = index.get("weights_sha256")
    if not isinstance(digest, str) or re.fullmatch(r"[0-9a-f]{64}", digest) is None:
        raise _fail(run_dir, f"weights_sha256 must be 64 hex digits, got {digest!r}")
    weights_path = folder / match.group(0)
    try:
        data = weights_path.read_bytes()
    except OSError as err:
        raise _fail(run_dir, f"weights {weights_path} missing: {err}") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise _fail(run_dir, f"weights {weights_path} fail their SHA-256")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
    except Exception as err:  # BadZipFile, ValueError (pickles), EOFError, ...
        raise _fail(run_dir, f"weights {weights_path} do not load: {type(err).__name__}") from None
    for key, value in weights.items():
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise _fail(run_dir, f"weights {key!r} hold NaN or infinite values")
    if shapes is not None:
        if set(weights) != set(shapes):
            missing, extra = set(shapes) - set(weights), set(weights) - set(shapes)
            raise _fail(
                run_dir,
                f"weights do not fit the model: missing {sorted(missing)}, unexpected "
                f"{sorted(extra)}",
            )
        for key, shape in shapes.items():
            if tuple(weights[key].shape) != tuple(shape):
                raise _fail(
                    run_dir,
                    f"weights {key!r} have shape {tuple(weights[key].shape)}, the model's is "
                    f"{tuple(shape)}",
                )
    try:
        wall = float(index.get("wall_seconds", 0.0))
    except (TypeError, ValueError):
        raise _fail(run_dir, "wall_seconds must be a number") from None
    return Checkpoint(
        round=rnd,
        weights=weights,
        metrics=metrics,
        clients=list(index.get("clients", [])),
        strategy=dict(index.get("strategy", {})),
        run_config=dict(index.get("run_config", {})),
        wall_seconds=wall,
    )


def config_differences(
    stored: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(key, stored, current)`` for every non-operational run-config key that differs.

    ``stored`` may use deprecated names (a run started before a rename): they are upgraded
    first (:func:`protocol.settings.upgrade_run_config`).
    """
    stored = upgrade_run_config(stored)
    keys = (set(stored) | set(current)) - OPERATIONAL_KEYS
    return [
        (k, stored.get(k), current.get(k))
        for k in sorted(keys)
        if k in stored and k in current and stored[k] != current[k]
    ]
