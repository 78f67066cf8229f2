"""One simulation SuperLink per sweep, and the launcher pieces that cut a run's start-up."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import experiments.run as run_module
import experiments.sweep as sweep_module
from experiments.processes.launcher import REPO, stage_app
from experiments.schema import register_schema
from experiments.sweep import SUPERLINK_ENV, SweepCallback, shared_superlink
from protocol.settings import RunSettings

CONF = REPO / "conf"
register_schema()


class FakeSuperLink:
    """Stands in for :class:`SimulationSuperLink`: counts starts and stops."""

    started: list[Path] = []
    stopped = 0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.address, self.pid = "127.0.0.1:9", os.getpid()

    def start(self) -> FakeSuperLink:
        FakeSuperLink.started.append(self.workdir)
        return self

    def stop(self) -> None:
        FakeSuperLink.stopped += 1


@pytest.fixture
def fake_superlink(monkeypatch: pytest.MonkeyPatch) -> type[FakeSuperLink]:
    FakeSuperLink.started, FakeSuperLink.stopped = [], 0
    monkeypatch.setattr(sweep_module, "SimulationSuperLink", FakeSuperLink)
    monkeypatch.delenv(SUPERLINK_ENV, raising=False)
    return FakeSuperLink


def _multirun_config(sweep_dir: Path, *task: str) -> Any:
    """The multirun config Hydra hands the callback: the sweep's overrides in ``task``."""
    config = compose(
        config_name="config", overrides=[f"hydra.sweep.dir={sweep_dir}"], return_hydra_config=True
    )
    with open_dict(config):
        config.hydra.overrides.task = list(task)
    return config


def test_a_sweep_starts_one_superlink_and_stops_it_at_the_end(
    tmp_path: Path, fake_superlink: type[FakeSuperLink]
) -> None:
    sweep_dir = tmp_path / "sweep"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = _multirun_config(sweep_dir, "privacy.target_epsilon=2,4", "federation.rounds=1")
        callback = SweepCallback()
        callback.on_multirun_start(config, config_name="config")
        assert fake_superlink.started == [sweep_dir / ".superlink"]  # one for both jobs
        assert shared_superlink() == ("127.0.0.1:9", os.getpid())
        callback.on_multirun_end(config, config_name="config")
    assert fake_superlink.stopped == 1
    assert shared_superlink() is None
    callback.stop_superlink()  # idempotent: nothing left to stop
    assert fake_superlink.stopped == 1


def test_a_deployment_sweep_starts_no_superlink(
    tmp_path: Path, fake_superlink: type[FakeSuperLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep_module, "_check_job", lambda cfg: (None, "deployment"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = _multirun_config(tmp_path / "sweep", "seed=0,1")
        SweepCallback().on_multirun_start(config, config_name="config")
    assert fake_superlink.started == []
    assert shared_superlink() is None


def test_a_job_submits_to_the_sweeps_superlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    class SubmittedError(Exception):
        pass

    class FakeSimulation:
        def __init__(self, workdir: Path, n: int, cpus: int, gpus: float, **kw: Any) -> None:
            seen.update(kw, workdir=workdir, n=n)

        def __enter__(self) -> FakeSimulation:
            return self

        def __exit__(self, *exc: object) -> None:
            seen["exited"] = True

        def submit(self, config: dict) -> int:
            raise SubmittedError

    monkeypatch.setattr(run_module, "LocalSimulation", FakeSimulation)
    monkeypatch.setenv(SUPERLINK_ENV, "127.0.0.1:5555 4242")
    settings = RunSettings(output_dir=str(tmp_path / "run"))
    with pytest.raises(SubmittedError):
        run_module.run_federation(settings, 1, 0.0)
    assert seen["superlink"] == "127.0.0.1:5555" and seen["superlink_pid"] == 4242
    assert seen["exited"]
    monkeypatch.delenv(SUPERLINK_ENV)
    with pytest.raises(SubmittedError):
        run_module.run_federation(settings, 1, 0.0)
    assert seen["superlink"] is None  # a run of its own starts its own SuperLink


def test_completion_mark_is_a_new_completed_summary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    assert not run_module._completion_mark(path, None)
    path.write_text(json.dumps({"status": "completed"}))
    old = run_module._stamp(path)
    assert run_module._completion_mark(path, None)
    assert not run_module._completion_mark(path, old)  # a resumed run's earlier summary
    tmp = tmp_path / "new.json"
    tmp.write_text(json.dumps({"status": "completed"}))
    tmp.replace(path)  # written atomically again by the ServerApp
    assert run_module._completion_mark(path, old)
    path.write_text("{half")
    assert not run_module._completion_mark(path, None)


def _fab_entries(fab: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(fab)) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_staged_app_packs_the_same_fab(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    staged = stage_app(REPO, tmp_path / ".fab")
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "pyproject.toml" in files and "fl_client/app.py" in files
    assert not any(f.startswith(("tests/", "bench/", "experiments/", ".venv/")) for f in files)
    assert _fab_entries(build_fab_from_disk(staged)) == _fab_entries(build_fab_from_disk(REPO))


def test_an_app_without_patterns_is_not_staged(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app]\npublisher = "x"\n')
    assert stage_app(tmp_path, tmp_path / ".fab") == tmp_path
    assert not (tmp_path / ".fab").exists()


def test_follow_returns_at_the_apps_completion_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import experiments.processes.launcher as launcher

    fake_flwr = tmp_path / "flwr"
    fake_flwr.write_text("#!/bin/sh\nexec sleep 60\n")  # a log stream that never ends
    fake_flwr.chmod(0o755)
    monkeypatch.setattr(launcher, "bin_path", lambda name: str(fake_flwr))
    cli = launcher.FlowerCli(tmp_path)
    asked: list[int] = []

    def fake_status(run_id: int) -> launcher.RunStatus:
        asked.append(run_id)
        return launcher.RunStatus("running")

    monkeypatch.setattr(cli, "status", fake_status)
    ticks = iter([False, False, True])
    status = cli.follow(7, poll=0.01, completed=lambda: next(ticks))
    assert status.completed and "completion mark" in status.details
    assert asked == [7]  # asked once at the start, not polled until Flower noticed the end
