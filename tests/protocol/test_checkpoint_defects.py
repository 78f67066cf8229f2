"""Every defect of a checkpoint is a clean error before a resumed run starts anything."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from protocol.checkpoint import Checkpoint, CheckpointError, dumps, load_checkpoint, loads
from protocol.checkpoint import save_checkpoint as save
from protocol.settings import RunSettings

REPO = Path(__file__).parents[2]
SHAPES = {"layer.weight": (3, 2), "layer.bias": (3,)}


def _good(tmp: Path, rnd: int = 2) -> Path:
    save(
        tmp,
        Checkpoint(
            round=rnd,
            weights={k: np.ones(s, dtype=np.float32) for k, s in SHAPES.items()},
            metrics=[{"round": r, "test_accuracy": 0.5} for r in range(rnd + 1)],
            run_config=RunSettings().to_run_config(),
        ),
    )
    return tmp / "checkpoint" / "checkpoint.json"


def _edit(index: Path, change: Callable[[dict], None]) -> None:
    data = loads(index.read_text())
    change(data)
    index.write_text(dumps(data))


def _weights(index: Path) -> Path:
    return index.parent / loads(index.read_text())["weights_file"]


def _rewrite_weights(index: Path, weights: dict[str, np.ndarray]) -> None:
    """Replace the weights and fix up their hash (a consistent but wrong checkpoint)."""
    import hashlib
    import io

    buf = io.BytesIO()
    np.savez(buf, **weights)  # type: ignore[arg-type]
    _weights(index).write_bytes(buf.getvalue())
    _edit(index, lambda d: d.update(weights_sha256=hashlib.sha256(buf.getvalue()).hexdigest()))


def _truncate(index: Path) -> None:
    """Cut the weights file short and fix up its hash (a torn file that passes the hash)."""
    import hashlib

    data = _weights(index).read_bytes()[:40]
    _weights(index).write_bytes(data)
    _edit(index, lambda d: d.update(weights_sha256=hashlib.sha256(data).hexdigest()))


DEFECTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "wrong hash": (lambda i: _edit(i, lambda d: d.update(weights_sha256="0" * 64)), "SHA-256"),
    "hash not hex": (lambda i: _edit(i, lambda d: d.update(weights_sha256="xyz")), "64 hex"),
    "round negative": (lambda i: _edit(i, lambda d: d.update(round=-1)), "integer >= 0"),
    "round a string": (lambda i: _edit(i, lambda d: d.update(round="2")), "integer >= 0"),
    "round a bool": (lambda i: _edit(i, lambda d: d.update(round=True)), "integer >= 0"),
    "round backwards": (
        lambda i: _edit(i, lambda d: d.update(round=1)),
        "does not match its metrics",
    ),
    "round ahead of the metrics": (
        lambda i: _edit(i, lambda d: d["metrics"].pop()),
        "does not match its metrics",
    ),
    "path in the weights name": (
        lambda i: _edit(i, lambda d: d.update(weights_file="../../x.npz")),
        "weights_file must be 'weights-round-0002.npz'",
    ),
    "weights of another round": (
        lambda i: _edit(i, lambda d: d.update(weights_file="weights-round-0001.npz")),
        "weights_file must be",
    ),
    "weights missing": (lambda i: _weights(i).unlink(), "missing"),
    "truncated npz": (lambda i: _truncate(i), "do not load"),
    "NaN weights": (
        lambda i: _rewrite_weights(
            i, {"layer.weight": np.full((3, 2), np.nan, np.float32), "layer.bias": np.ones(3)}
        ),
        "NaN or infinite",
    ),
    "wrong shape": (
        lambda i: _rewrite_weights(
            i, {"layer.weight": np.ones((2, 3), np.float32), "layer.bias": np.ones(3)}
        ),
        "have shape (2, 3), the model's is (3, 2)",
    ),
    "missing parameter": (
        lambda i: _rewrite_weights(i, {"layer.weight": np.ones((3, 2), np.float32)}),
        "missing ['layer.bias']",
    ),
    "unknown format": (lambda i: _edit(i, lambda d: d.update(format=9)), "format 9"),
    "not JSON": (lambda i: i.write_text("{"), "unreadable"),
    "strategy not a dict": (lambda i: _edit(i, lambda d: d.update(strategy=[1])), "strategy"),
    "metrics not a list": (lambda i: _edit(i, lambda d: d.update(metrics={})), "metrics"),
}


def test_a_good_checkpoint_loads_with_the_model_shapes(tmp_path: Path) -> None:
    _good(tmp_path)
    ckpt = load_checkpoint(tmp_path, SHAPES)
    assert ckpt.round == 2 and set(ckpt.weights) == set(SHAPES)


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_every_defect_is_a_clean_error(tmp_path: Path, defect: str) -> None:
    index = _good(tmp_path)
    damage, needle = DEFECTS[defect]
    damage(index)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, SHAPES)
    assert needle in str(err.value), str(err.value)
    assert f"resume={str(tmp_path)!r}" in str(err.value)


def test_the_cli_refuses_a_checkpoint_that_does_not_fit_the_model(tmp_path: Path) -> None:
    """A checkpoint whose weights are not the model's: exit 2 before any process starts."""
    from hydra import compose, initialize_config_dir

    from experiments.schema import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config")
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    _good(tmp_path, rnd=1)  # weights named layer.*: not the default MLP's
    res = subprocess.run(
        [sys.executable, "-m", "experiments.run", f"resume={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "weights do not fit the model" in res.stderr
    assert not (tmp_path / "superlink.log").exists()
