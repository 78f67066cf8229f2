"""Per-round results written as they happen, so a crash loses at most the round in flight.

Files in the run's output directory:

``metrics.csv``   one row per round (round 0 is the initial model)
``clients.csv``   one row per client and round: status, weight, epsilon, loss, reason
``final_model.npz``  the final global weights (numpy, no pickle)
``checkpoint/``   the last completed round's state, for ``resume`` (:mod:`protocol.checkpoint`)
``summary.json``  written last; its presence means the run completed
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from protocol.atomic import write_atomically

from .replies import ClientOutcome, RoundLog


def _mean_loss(trained: list[ClientOutcome], field: str = "train_loss") -> float:
    """Aggregation-weighted train loss (plain mean when a baseline gives no weights)."""
    pairs = [(o.weight, getattr(o, field)) for o in trained if math.isfinite(getattr(o, field))]
    if not pairs:
        return math.nan
    w = np.array([p[0] for p in pairs])
    losses = np.array([p[1] for p in pairs])
    if np.all(np.isfinite(w)) and w.sum() > 0:
        return float((w * losses).sum() / w.sum())
    return float(losses.mean())


def _json_safe(value: Any) -> Any:
    """Plain JSON: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunRecorder:
    """Collect round rows and client rows; rewrite the CSVs atomically after every round."""

    def __init__(self, out_dir: Path, num_rounds: int) -> None:
        self.out_dir = out_dir
        self.num_rounds = num_rounds
        out_dir.mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        self.started = time.time()

    def record_round(
        self, server_round: int, test_loss: float, test_accuracy: float, log: RoundLog | None
    ) -> dict[str, Any]:
        """Add one round's row (and its clients' rows) and flush both tables to disk."""
        row: dict[str, Any] = {
            "round": server_round,
            "test_accuracy": test_accuracy,
            "test_loss": test_loss,
        }
        if log is not None:
            outcomes = log.outcomes
            trained = [o for o in outcomes if o.status == "trained"]
            eps = [o.epsilon for o in outcomes if math.isfinite(o.epsilon)]
            secs = [o.train_seconds for o in trained if math.isfinite(o.train_seconds)]
            row |= {
                "val_accuracy": log.val_accuracy,
                "val_loss": log.val_loss,
                "val_accuracy_dp": log.val_accuracy_dp,
                "val_loss_dp": log.val_loss_dp,
                "train_loss": _mean_loss(trained),
                "train_loss_dp": _mean_loss(trained, "train_loss_dp"),
                "participants": len(trained),
                "declined": sum(o.status == "declined" for o in outcomes),
                "rejected": sum(o.status == "rejected" for o in outcomes),
                "failed": sum(o.status == "failed" for o in outcomes),
                "epsilon_max": max(eps) if eps else math.nan,
                "epsilon_mean": float(np.mean(eps)) if eps else math.nan,
                "kept_previous_model": log.kept_previous_model,
                "kept_reason": log.kept_reason,
                "round_seconds": time.perf_counter() - log.started,
                "client_train_seconds_max": max(secs) if secs else math.nan,
                "client_train_seconds_sum": sum(secs),
            } | log.central
            self.clients.extend(dataclasses.asdict(o) for o in outcomes)
        self.rounds.append(row)
        self.flush()
        return row

    def restore(
        self, rounds: list[dict[str, Any]], clients: list[dict[str, Any]], wall_seconds: float
    ) -> None:
        """Continue a resumed run: its rows so far (from a checkpoint) and its wall time."""
        self.rounds = [dict(r) for r in rounds]
        self.clients = [dict(c) for c in clients]
        self.started = time.time() - wall_seconds
        (self.out_dir / "summary.json").unlink(missing_ok=True)  # not complete any more
        self.flush()

    def elapsed(self) -> float:
        """Seconds the run has spent so far (across resumes)."""
        return time.time() - self.started

    def flush(self) -> None:
        """Rewrite ``metrics.csv`` and ``clients.csv``."""
        for name, rows in (("metrics.csv", self.rounds), ("clients.csv", self.clients)):
            frame = pd.DataFrame(rows)
            write_atomically(self.out_dir / name, frame.to_csv(index=False))

    def finish(self, weights: dict[str, np.ndarray], extra: dict[str, Any]) -> dict[str, Any]:
        """Save the final model and ``summary.json`` (the run's completion mark)."""
        buf = io.BytesIO()
        np.savez(buf, **weights)  # type: ignore[arg-type]
        write_atomically(self.out_dir / "final_model.npz", buf.getvalue())
        last = self.rounds[-1] if self.rounds else {}
        eps = [r.get("epsilon_max", math.nan) for r in self.rounds]
        eps = [e for e in eps if isinstance(e, float) and math.isfinite(e)]
        summary = {
            "status": "completed",
            "rounds": len(self.rounds) - 1,
            "final_test_accuracy": last.get("test_accuracy"),
            "final_test_loss": last.get("test_loss"),
            "epsilon_max": max(eps) if eps else None,
            "wall_seconds": time.time() - self.started,
        } | extra
        summary = {k: _json_safe(v) for k, v in summary.items()}
        text = json.dumps(summary, indent=2, allow_nan=False)
        write_atomically(self.out_dir / "summary.json", text)
        return summary
