"""privacy.csv, privacy_events.csv and summary.json's epsilon come from the ledgers on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

from experiments.report import ledger_epsilons, privacy_events, privacy_table
from experiments.run import with_ledger_epsilon
from privacy import PureDpEvent, SampledGaussianEvent
from privacy.ledger_file import LedgerFile, init_ledger


def _ledgers(out: Path) -> None:
    folder = out / "ledgers"
    for pid, events in (
        (0, [SampledGaussianEvent(1.1, 0.1, 10, 1), SampledGaussianEvent(1.1, 0.1, 10, 2)]),
        (1, [SampledGaussianEvent(1.1, 0.1, 10, 1), SampledGaussianEvent(1.4, 0.1, 10, 1)]),
        (2, [PureDpEvent(0.5, 1, mechanism="functional")]),
    ):
        init_ledger(folder, pid)  # writes the head and lock files beside each ledger
        store = LedgerFile(folder / f"client-{pid}.json", 1e-5, "pld")
        ledger = store.load()
        for e in events:
            ledger.record(e)
        store.save(ledger)
    (folder / "dpsgd-plan-client-0.json").write_text("{}")
    (folder / "functional-client-2.json").write_text("{}")


def test_tables_read_every_ledger_and_nothing_else(tmp_path: Path) -> None:
    _ledgers(tmp_path)
    table = privacy_table(tmp_path)
    assert list(table["partition_id"]) == [0, 1, 2]
    assert list(table["events"]) == [2, 2, 1]
    assert table.loc[1, "noise_multipliers"] == "1.1;1.4"  # every event, not the first
    assert table.loc[2, "mechanisms"] == "functional" and table.loc[2, "pure_epsilon"] == 0.5
    assert set(table["neighbouring"]) == {"replace_one"}
    events = privacy_events(tmp_path)
    assert len(events) == 5 and set(events["partition_id"]) == {0, 1, 2}
    eps = ledger_epsilons(tmp_path)
    assert sorted(eps) == [0, 1, 2] and math.isclose(eps[2], 0.5)


def test_summary_epsilon_is_recomputed_from_the_ledgers(tmp_path: Path) -> None:
    _ledgers(tmp_path)
    summary = with_ledger_epsilon({"epsilon_max": 0.1, "epsilon_source": "replies"}, tmp_path)
    assert summary["epsilon_source"] == "ledgers"
    assert summary["epsilon_max"] == max(ledger_epsilons(tmp_path).values()) > 0.1
    assert set(summary["epsilon_clients"]) == {"0", "1", "2"}
    json.dumps(summary, allow_nan=False)
    # without ledgers on this machine (a deployment) the replies' figure stays, so labelled
    assert with_ledger_epsilon({"epsilon_max": 0.1}, tmp_path / "none") == {"epsilon_max": 0.1}
