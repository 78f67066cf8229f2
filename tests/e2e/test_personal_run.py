"""End to end: ``dataset=watch personalization=finetune`` writes one personal row per subject."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from e2e_cli import run_cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("seglearn") is None,
    reason="pip install --no-deps seglearn==1.2.5",
)


def test_watch_finetune_run_writes_personal_csv_per_subject(tmp_path: Path) -> None:
    """A federation of the first 3 subjects (kept small), then all 10 fine-tune it."""
    out = tmp_path / "watch"
    res = run_cli(
        out,
        "dataset=watch",
        "model=cnn1d",
        "privacy=none",
        "personalization=finetune",
        "personalization.initial_clients=3",
        "personalization.epochs=2",
        "federation.rounds=1",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fedpriv: 3 clients" in res.stdout
    assert "personal: mean test accuracy global" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    table = pd.read_csv(out / "personal.csv")
    assert list(table["partition_id"]) == list(range(10))  # one row per subject
    assert list(table["federated"]) == [True] * 3 + [False] * 7
    assert (table["epochs"] == 2).all() and (table["test_examples"] > 0).all()
    for column in ("global_accuracy", "personal_accuracy"):
        assert table[column].between(0, 1).all()
    assert (out / "personal.png").stat().st_size > 0
    assert len(pd.read_csv(out / "participants.csv")) == 3
