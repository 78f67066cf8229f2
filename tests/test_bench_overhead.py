"""bench/overhead.py: arguments, the CSV merge, the log timeline, the bare app's run config."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import tomllib

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


overhead = _load("overhead", BENCH / "overhead.py")
breakdown = sys.modules["overhead_breakdown"]
simulate = _load("bare_simulate", BENCH / "bare_app" / "simulate.py")


def test_parse_args_defaults_and_errors():
    args = overhead.parse_args([])
    assert args.figures == list(overhead.FIGURES) and args.repeats == 2
    assert overhead.parse_args(["--figures", "run", "--repeats", "3"]).repeats == 3
    with pytest.raises(SystemExit):
        overhead.parse_args(["--repeats", "0"])
    with pytest.raises(SystemExit):
        overhead.parse_args(["--figures", "nope"])


def test_save_keeps_rows_of_figures_not_measured(tmp_path):
    out = tmp_path / "r.csv"
    overhead.save(out, [breakdown.row("sweep", "old", 2.0, 1.0)], {"sweep"})
    overhead.save(out, [breakdown.row("run", "new", 1.0, 4.0)], {"run"})
    rows = list(csv.DictReader(out.open()))
    assert [(r["figure"], r["ratio"]) for r in rows] == [("sweep", "2.000"), ("run", "0.250")]


def test_timeline_reads_both_log_formats(tmp_path):
    (tmp_path / "superlink.log").write_text(
        "2026-12-01T10:00:01.500Z INFO [uvicorn.error] Uvicorn running on http://x\n"
    )
    (tmp_path / "run.log").write_text(
        "\x1b[92mINFO \x1b[0m: [ROUND 1/3]\n12/01/2026 10:00:05:INFO:[ROUND 1/3]\n"
    )
    marks = breakdown.timeline(tmp_path, 0.0, 1.0, [2.0, 0.5])
    assert marks["round 1 starts"] - marks["superlink listening"] == pytest.approx(3.5)
    assert marks["last round ends"] - marks["round 1 starts"] == pytest.approx(2.5)
    assert "Ray actors ready" not in marks


def test_bare_run_config_matches_fedpriv_defaults():
    bare = tomllib.loads((BENCH / "bare_app" / "pyproject.toml").read_text())
    cfg = bare["tool"]["flwr"]["app"]["config"]
    fed = tomllib.loads((BENCH.parent / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    fed_cfg = fed["config"]
    assert cfg["batch-size"] == fed_cfg["batch-size"]
    assert cfg["learning-rate"] == fed_cfg["learning-rate"]
    assert cfg["target-epsilon"] == fed_cfg["privacy-target-epsilon"]
    assert cfg["hidden"] == fed_cfg["model-hidden"]
    assert simulate.parse_run_config("target-epsilon=2 accountant=prv") == {
        "target-epsilon": 2,
        "accountant": "prv",
    }
    with pytest.raises(ValueError, match="key=value"):
        simulate.parse_run_config("oops")
