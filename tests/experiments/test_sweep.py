"""Sweep bookkeeping without Flower: expansion, skip and failure records, progress, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from experiments.report import collect_sweep, epsilon_curve, report_sweep, to_markdown
from experiments.report import main as report_main
from experiments.schema import register_schema
from experiments.sweep import (
    SweepPlan,
    expand_sweep,
    is_completed,
    job_guard,
    progress_line,
    read_status,
    run_identity,
    validate_jobs,
    write_status,
)
from protocol.settings import RunSettings

CONF = Path(__file__).resolve().parents[2] / "conf"
register_schema()


def _fake_run(
    sweep: Path, name: str, eps: float, seed: int, acc: float, mode: str = "dpsgd"
) -> Path:
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        f"- privacy.target_epsilon={eps}\n- seed={seed}\n"
    )
    (run / "config.yaml").write_text(
        "dataset: {name: digits}\nmodel: {name: mlp}\n"
        f"privacy: {{mode: {mode}, target_epsilon: {eps}}}\nseed: {seed}\n"
    )
    (run / "summary.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "rounds": 2,
                "final_test_accuracy": acc,
                "final_test_loss": 1.0 - acc,
                "epsilon_max": None if mode == "none" else eps * 0.99,
                "wall_seconds": 10.0,
            }
        )
    )
    pd.DataFrame({"round": [0, 1, 2], "test_accuracy": [0.1, acc / 2, acc]}).to_csv(
        run / "metrics.csv", index=False
    )
    write_status(run, status="completed", started=1.0, finished=11.0)
    return run


def test_expansion_matches_hydras_basic_sweeper() -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["+experiment=eps_sweep", "federation.rounds=2"],
            return_hydra_config=True,
        )
    # compose() leaves the task overrides to the caller: set them as Hydra's multirun does
    cfg.hydra.overrides.task = ["federation.rounds=2"]
    jobs = expand_sweep(cfg)
    args = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] + ["federation.rounds=2"]
    expected = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    assert jobs == expected[0]
    assert len(jobs) == 2 * 5 * 3  # privacy modes x epsilons x seeds
    assert jobs[0] == [
        "privacy=dpsgd",
        "privacy.target_epsilon=0.5",
        "seed=0",
        "federation.rounds=2",
    ]


def test_validate_jobs_names_the_failing_job() -> None:
    def check(cfg):
        if cfg.privacy.target_epsilon <= 0:
            raise ValueError(
                f"privacy.target_epsilon must be > 0, got {cfg.privacy.target_epsilon}"
            )
        return cfg.privacy.target_epsilon

    with initialize_config_dir(str(CONF), version_base="1.3"):
        assert validate_jobs([["privacy.target_epsilon=2"]], "config", check) == [2.0]
        with pytest.raises(ValueError, match=r"job 2/2 \(privacy.target_epsilon=-1\).*got -1"):
            validate_jobs(
                [["privacy.target_epsilon=2"], ["privacy.target_epsilon=-1"]], "config", check
            )


def test_job_guard_records_a_failure_and_lets_the_sweep_go_on(tmp_path: Path) -> None:
    run = tmp_path / "a=1"
    with job_guard(run, tmp_path, "final_test_accuracy") as job:
        assert not job.skip
        assert read_status(run)["status"] == "running"
        raise RuntimeError("run 7 ended as 'failed'\nlong traceback")
    status = read_status(run)
    assert status["status"] == "failed"
    assert status["error"] == "run 7 ended as 'failed'"
    assert not is_completed(run)


def test_job_guard_passes_keyboard_interrupt_and_marks_the_run(tmp_path: Path) -> None:
    run = tmp_path / "a=1"
    with pytest.raises(KeyboardInterrupt), job_guard(run, tmp_path, "final_test_accuracy"):
        raise KeyboardInterrupt
    assert read_status(run)["status"] == "interrupted"


def test_job_guard_skips_a_completed_run_and_returns_its_result(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "e=2,s=0", 2, 0, 0.8)
    with job_guard(run, tmp_path, "final_test_accuracy") as job:
        assert job.skip
    assert job.value == pytest.approx(0.8)
    assert read_status(run)["started"] == 1.0  # untouched


def test_non_private_runs_that_differ_only_in_epsilon_run_once(tmp_path: Path) -> None:
    none_2 = RunSettings(privacy_mode="none", privacy_target_epsilon=2.0, output_dir="/a")
    none_4 = RunSettings(privacy_mode="none", privacy_target_epsilon=4.0, output_dir="/b")
    dp_2 = RunSettings(privacy_mode="dpsgd", privacy_target_epsilon=2.0)
    dp_4 = RunSettings(privacy_mode="dpsgd", privacy_target_epsilon=4.0)
    assert run_identity(none_2) == run_identity(none_4)
    assert run_identity(dp_2) != run_identity(dp_4)
    assert run_identity(none_2) != run_identity(RunSettings(privacy_mode="none", seed=1))

    first = _fake_run(tmp_path, "none-2", 2, 0, 0.9, mode="none")
    write_status(first, identity=run_identity(none_2))
    second = tmp_path / "none-4"
    with job_guard(second, tmp_path, "final_test_accuracy") as job:
        assert job.is_duplicate(run_identity(none_4))
    assert job.value == pytest.approx(0.9)
    assert read_status(second)["status"] == "duplicate"
    assert read_status(second)["same_as"] == "none-2"
    with job_guard(second, tmp_path, "final_test_accuracy") as again:  # a re-run skips it
        assert again.skip and again.value == pytest.approx(0.9)


def test_progress_line_counts_done_running_failed_and_estimates_time(tmp_path: Path) -> None:
    SweepPlan(tmp_path, [["a=1"], ["a=2"], ["a=3"], ["a=4"]]).save()
    _fake_run(tmp_path, "a=1", 1, 0, 0.5)  # took 10 s
    write_status(tmp_path / "a=2", status="failed", error="boom", started=0.0, finished=1.0)
    write_status(tmp_path / "a=3", status="running", started=20.0)
    line = progress_line(tmp_path)
    assert line == "sweep: 2/4 done (1 failed), 1 running, about 20 s left"


def test_collect_sweep_puts_swept_settings_first_and_reads_final_metrics(tmp_path: Path) -> None:
    for eps in (1, 4):
        for seed in (0, 1):
            _fake_run(tmp_path, f"e={eps},s={seed}", eps, seed, 0.5 + eps / 10 + seed / 100)
    write_status(tmp_path / "broken", status="failed", error="no client succeeded")
    table = collect_sweep(tmp_path)
    assert list(table.columns[:2]) == ["privacy.target_epsilon", "seed"]
    assert len(table) == 5
    assert table.set_index("run_dir").loc["e=4,s=1", "final_test_accuracy"] == pytest.approx(0.91)
    assert table.set_index("run_dir").loc["broken", "error"] == "no client succeeded"
    curve = epsilon_curve(table)
    assert list(curve["count"]) == [2, 2]
    assert curve["mean"].tolist() == pytest.approx([0.605, 0.905])
    assert not math.isnan(curve["std"].iloc[0])


def test_report_writes_table_markdown_and_plots(tmp_path: Path) -> None:
    _fake_run(tmp_path, "e=1", 1, 0, 0.7)
    _fake_run(tmp_path, "e=4", 4, 0, 0.8)
    _fake_run(tmp_path, "none", 1, 0, 0.9, mode="none")
    report = report_sweep(tmp_path)
    assert len(pd.read_csv(report.table)) == 3
    assert "| completed |" in report.markdown.read_text()
    for plot in report.plots:
        assert plot.read_bytes()[:4] == b"\x89PNG"


def test_report_cli_says_when_a_directory_has_no_results(tmp_path, capsys) -> None:
    assert report_main([str(tmp_path)]) == 2
    assert f"no run results under {tmp_path}" in capsys.readouterr().err
    assert report_main([str(tmp_path / "missing")]) == 2


def test_markdown_escapes_pipes_and_blanks_nan() -> None:
    text = to_markdown(pd.DataFrame({"a": ["x|y"], "b": [math.nan]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y |  |"]


@pytest.mark.parametrize("preset", ["eps_sweep", "privacy_modes", "reliability_strategies"])
def test_every_preset_composes_into_valid_settings(preset: str) -> None:
    from experiments.config import to_settings

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}"], return_hydra_config=True)
        cfg.hydra.overrides.task = [f"+experiment={preset}"]
        jobs = expand_sweep(cfg)
        settings = validate_jobs(jobs, "config", to_settings)
    assert len(settings) == len(jobs) >= 9
    assert len({s.seed for s in settings}) >= 2


def test_resume_cannot_be_swept() -> None:
    from experiments.sweep import _check_job

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["resume=/some/run"])
    with pytest.raises(ValueError, match=r"resume='/some/run' cannot be part of a sweep"):
        _check_job(cfg)
