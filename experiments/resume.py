"""``python -m experiments.run resume=<run dir>``: continue a run from its last checkpoint.

A resumed run takes the config stored in ``<run dir>/config.yaml`` (the user repeats nothing)
and writes into the same directory, so ``metrics.csv`` and ``clients.csv`` end up covering
every round once. Only settings that change neither the data nor the model nor the privacy of
what was already trained may be given again with a new value (:data:`MAY_CHANGE`);
``federation.rounds`` may only be raised. Anything else that differs is refused, naming the
key, before any process starts.

The checkpoint is verified completely here, before any process starts
(:func:`protocol.checkpoint.load_checkpoint`: hash, file names, rounds against the metrics,
finite weights; :func:`experiments.run.prepare` adds the model's shapes), and again by the
ServerApp, which also checks the stored flat config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.aliases import upgrade_config
from experiments.schema import FedPrivConf
from protocol.checkpoint import load_checkpoint

CHECKPOINT_INDEX = Path("checkpoint") / "checkpoint.json"

MAY_CHANGE = frozenset(
    {
        "federation.rounds",
        "federation.round_timeout",
        "federation.min_replies",
        "federation.client_cpus",
        "federation.client_gpus",
        "device",
    }
)
"""Keys a resumed run may set to a new value; ``federation.rounds`` only upwards."""


def resume_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with Hydra told to use the resumed run's directory and keep its ``.hydra/``.

    ``resume=DIR`` adds ``hydra.run.dir=DIR`` (unless given) and ``hydra.output_subdir=null``
    (so the original run's ``.hydra/`` record is not overwritten) when ``DIR`` exists. Other
    argv is unchanged.
    """
    args = list(argv)
    value = next((a.split("=", 1)[1] for a in args[1:] if a.startswith("resume=")), "")
    if not value or not Path(value).expanduser().is_dir():
        return args  # nothing to resume: resume_config says so before anything starts
    if not any(a.startswith("hydra.run.dir=") for a in args[1:]):
        args.append(f"hydra.run.dir={value}")
    if not any(a.startswith("hydra.output_subdir=") for a in args[1:]):
        args.append("hydra.output_subdir=null")
    return args


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def checkpoint_round(run_dir: Path) -> int:
    """The last completed round recorded in ``run_dir``'s checkpoint.

    Raises
    ------
    ValueError
        Naming ``resume`` and the path, if the directory or its checkpoint is missing or
        unreadable.
    """
    if not run_dir.is_dir():
        raise ValueError(f"resume={str(run_dir)!r}: no such run directory")
    if not (run_dir / CHECKPOINT_INDEX).is_file():
        raise ValueError(
            f"resume={str(run_dir)!r}: no checkpoint ({run_dir / CHECKPOINT_INDEX} is missing); "
            "only runs that completed at least the initial evaluation can be resumed"
        )
    return load_checkpoint(run_dir).round  # verified: hash, names, rounds, finite weights


def resume_config(
    cfg: DictConfig, overrides: Sequence[str], out_dir: Path
) -> tuple[DictConfig, Path]:
    """The config and output directory of the run to execute, resumed or not.

    Without ``resume`` returns ``(cfg, out_dir)`` unchanged. With it, returns the stored
    config of that run (completed by the schema's defaults for keys added since), with the
    allowed overrides applied and ``resume`` set to the run directory, and that directory.

    Raises
    ------
    ValueError
        Naming ``resume`` and the path when there is nothing to resume, or naming the key
        when an override would change what the run trains or how privately.
    """
    if not cfg.get("resume"):
        return cfg, out_dir
    run_dir = Path(str(cfg.resume)).expanduser().resolve()
    done = checkpoint_round(run_dir)
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        raise ValueError(f"resume={str(run_dir)!r}: the run's config.yaml is missing")
    loaded = OmegaConf.to_container(OmegaConf.load(stored_path))
    if not isinstance(loaded, dict):
        raise ValueError(f"resume={str(run_dir)!r}: {stored_path} is not a mapping")
    stored = OmegaConf.merge(OmegaConf.structured(FedPrivConf), upgrade_config(loaded))
    assert isinstance(stored, DictConfig)
    stored_rounds = int(stored.federation.rounds)
    for override in overrides:
        key = _key(override)
        if key == "resume" or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        given, before = _plain(OmegaConf.select(cfg, key)), _plain(OmegaConf.select(stored, key))
        if key in MAY_CHANGE:
            OmegaConf.update(stored, key, given, merge=False)
        elif given != before:
            raise ValueError(
                f"resume: {key} was {before!r} in {stored_path}, got {given!r}; a resumed run "
                f"keeps its config (only {', '.join(sorted(MAY_CHANGE))} may change)"
            )
    rounds = int(stored.federation.rounds)
    if rounds < stored_rounds:
        raise ValueError(
            f"resume: federation.rounds can only be raised, from {stored_rounds}, got {rounds}"
        )
    if done >= rounds:
        raise ValueError(
            f"resume={str(run_dir)!r}: the run already completed round {done} of "
            f"federation.rounds={rounds}; raise federation.rounds to continue it"
        )
    stored.resume = str(run_dir)
    return stored, run_dir
