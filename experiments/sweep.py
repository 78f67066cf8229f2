"""Hydra multiruns that survive failure, skip finished runs and report on the whole sweep.

``python -m experiments.run -m privacy.target_epsilon=0.5,1,2 seed=0,1`` runs one federation per
combination, each in ``<sweep dir>/<its overrides>/`` (``hydra.sweep.subdir`` is the job's
``override_dirname``, so the same combination always lands in the same directory).

1. :class:`SweepCallback.on_multirun_start` expands the sweep exactly as Hydra's basic sweeper
   does, composes every job's config and validates it (:func:`experiments.config.to_settings`,
   :func:`experiments.config.check_data`) before the first run starts; a bad value stops the
   sweep there, naming the key and the job. It then starts one simulation SuperLink for the
   whole sweep (:class:`experiments.processes.launcher.SimulationSuperLink`, its state and log
   in ``<sweep dir>/.superlink/``): every simulated job submits its run there
   (:func:`shared_superlink`) instead of starting and stopping its own, which cost each
   federation a few seconds. It is stopped by PID at the end of the sweep, and on Ctrl-C,
   SIGTERM or a crash of the sweep (``atexit``).
2. Each job (:func:`job_guard` in ``experiments.run``) skips itself when its directory already
   holds a completed run, records a failure in ``status.json`` instead of stopping the sweep, and
   prints the sweep's progress (done, running, failed, estimated time left).
3. :class:`SweepCallback.on_multirun_end` gathers every run into one table and plots
   (:func:`experiments.report.report_sweep`).

Re-running an interrupted sweep with the same command and ``hydra.sweep.dir=<its directory>``
runs only what is missing.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.processes.launcher import SimulationSuperLink
from privacy import is_private
from protocol.atomic import write_atomically
from protocol.settings import RunSettings

STATUS_FILE = "status.json"
SWEEP_FILE = "sweep.json"
DONE = "completed"
SUPERLINK_DIR = ".superlink"
SUPERLINK_ENV = "FEDPRIV_SWEEP_SUPERLINK"
"""``ADDRESS PID`` of the sweep's simulation SuperLink, for the jobs (also in child processes)."""


# --------------------------------------------------------------------------- job status files
def read_status(run_dir: Path) -> dict[str, Any]:
    """A run directory's ``status.json`` (empty when it has none or it is unreadable)."""
    try:
        data = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(run_dir: Path, **fields: Any) -> None:
    """Merge ``fields`` into ``status.json``, atomically (a crash never leaves half a file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = read_status(run_dir) | fields | {"updated": time.time()}
    write_atomically(run_dir / STATUS_FILE, json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def is_completed(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that finished: status ``completed`` and a summary."""
    return read_status(run_dir).get("status") == DONE and (run_dir / "summary.json").exists()


# --------------------------------------------------------------------------- sweep expansion
def expand_sweep(config: DictConfig) -> list[list[str]]:
    """Every job's overrides, in the order Hydra's basic sweeper launches them.

    ``hydra.sweeper.params`` (presets in ``conf/experiment/``) come first, then the command
    line's, as in :meth:`hydra._internal.core_plugins.basic_sweeper.BasicSweeper.sweep`.
    """
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += [str(o) for o in config.hydra.overrides.task]
    overrides = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(overrides, None)
    return [list(job) for batch in batches for job in batch]


@dataclass
class SweepPlan:
    """The jobs of a sweep and where their results go."""

    sweep_dir: Path
    jobs: list[list[str]]
    settings: list[Any] = field(default_factory=list)

    def save(self) -> None:
        """Write ``sweep.json`` (the whole plan; progress and reports read it)."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(
            {"jobs": self.jobs, "total": len(self.jobs), "started": time.time()}, indent=2
        )
        write_atomically(self.sweep_dir / SWEEP_FILE, text)


def validate_jobs(
    jobs: list[list[str]], config_name: str, check: Callable[[DictConfig], Any]
) -> list[Any]:
    """Compose and check every job before any runs; ``ValueError`` names the failing job.

    ``check`` turns a composed config into validated settings (it raises ``ValueError`` naming
    the key); composition errors (a key that does not exist) are Hydra's own and name the key.
    """
    checked = []
    for i, job in enumerate(jobs):
        cfg = compose(config_name=config_name, overrides=job)
        try:
            checked.append(check(cfg))
        except ValueError as err:
            raise ValueError(f"sweep job {i + 1}/{len(jobs)} ({' '.join(job)}): {err}") from err
    return checked


def _check_job(cfg: DictConfig) -> tuple[RunSettings, str]:
    from experiments.config import check_data, to_settings

    if cfg.get("resume"):
        raise ValueError(
            f"resume={cfg.resume!r} cannot be part of a sweep: resume one run on its own, or "
            "re-run the sweep with hydra.sweep.dir=<its directory> to run what is missing"
        )
    settings = to_settings(cfg)
    check_data(settings)
    return settings, str(cfg.federation.engine)


def shared_superlink() -> tuple[str, int] | None:
    """The sweep's simulation SuperLink as ``(address, pid)``; ``None`` outside a sweep."""
    value = os.environ.get(SUPERLINK_ENV, "").split()
    if len(value) != 2 or not value[1].isdigit():
        return None
    return value[0], int(value[1])


class SweepCallback(Callback):
    """Hydra callback (``hydra.callbacks.sweep`` in ``conf/config.yaml``): steps 1 and 3."""

    def __init__(self) -> None:
        self.superlink: SimulationSuperLink | None = None
        self._previous_sigterm: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Validate every job, write ``sweep.json``, start the sweep's SuperLink."""
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = expand_sweep(config)
        config_name = kwargs.get("config_name") or "config"
        print(f"sweep: checking the {len(jobs)} runs' settings ...", flush=True)
        try:
            checked = validate_jobs(jobs, config_name, _check_job)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
        SweepPlan(sweep_dir, jobs).save()
        done = sum(is_completed(d) for d in _run_dirs(sweep_dir))
        print(
            f"sweep: {len(jobs)} runs into {sweep_dir}"
            + (f"; {done} of them completed before and will not run again" if done else ""),
            flush=True,
        )
        if any(engine == "simulation" for _, engine in checked) and done < len(jobs):
            self.start_superlink(sweep_dir / SUPERLINK_DIR)

    def start_superlink(self, workdir: Path) -> SimulationSuperLink:
        """Start the SuperLink every job of the sweep submits to; stopped however it ends."""
        self.superlink = SimulationSuperLink(workdir).start()
        os.environ[SUPERLINK_ENV] = f"{self.superlink.address} {self.superlink.pid}"
        atexit.register(self.stop_superlink)  # an exception or Ctrl-C ending the sweep
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._previous_sigterm = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
        return self.superlink

    def stop_superlink(self) -> None:
        """Stop the sweep's SuperLink and everything it started, by PID (idempotent)."""
        if self.superlink is not None:
            self.superlink.stop()
            self.superlink = None
        os.environ.pop(SUPERLINK_ENV, None)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        atexit.unregister(self.stop_superlink)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Stop the sweep's SuperLink; gather every run into the table and the plots."""
        from experiments.report import report_sweep

        self.stop_superlink()
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            paths = report_sweep(sweep_dir)
        except ValueError as err:
            print(f"sweep report: {err}", file=sys.stderr, flush=True)
            return
        print(paths.markdown.read_text(), flush=True)
        print(f"sweep report: {paths.table}, {paths.markdown}, {', '.join(map(str, paths.plots))}")


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # as Ctrl-C: the job is marked interrupted, atexit stops the SuperLink


def _run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob(f"**/{STATUS_FILE}"))


# --------------------------------------------------------------------------- one job of a sweep
def progress_line(sweep_dir: Path, now: float | None = None) -> str:
    """``sweep: 3/10 done (1 failed), 1 running, about 4 min left``, from the status files."""
    now = time.time() if now is None else now
    try:
        total = int(json.loads((sweep_dir / SWEEP_FILE).read_text())["total"])
    except (OSError, ValueError, KeyError):
        total = 0
    statuses = [read_status(d) for d in _run_dirs(sweep_dir)]
    done = [s for s in statuses if s.get("status") in (DONE, "failed", "duplicate")]
    failed = sum(s.get("status") == "failed" for s in statuses)
    running = sum(s.get("status") == "running" for s in statuses)
    total = max(total, len(statuses))
    timed = [
        s["finished"] - s["started"]
        for s in done
        if s.get("status") == DONE and "started" in s and "finished" in s
    ]
    left = total - len(done)
    line = f"sweep: {len(done)}/{total} done ({failed} failed), {running} running"
    if timed and left > 0:
        per_run = sum(timed) / len(timed)
        line += f", about {_minutes(per_run * left / max(running, 1))} left"
    return line


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_identity(settings: RunSettings) -> str:
    """The settings that decide a run's result, as a string (equal strings: the same run).

    ``output_dir`` is left out, and with ``privacy.mode=none`` so is every other privacy
    setting: a non-private reference swept over epsilon is one run, not one per epsilon.
    """
    if not is_private(settings.privacy_mode):
        defaults = RunSettings()
        settings = dataclasses.replace(
            settings,
            **{
                f.name: getattr(defaults, f.name)
                for f in dataclasses.fields(settings)
                if f.name.startswith("privacy_") and f.name != "privacy_mode"
            },
        )
    config = settings.to_run_config()
    config.pop(RunSettings.run_config_key("output_dir"))
    return json.dumps(config, sort_keys=True)


@dataclass
class JobOutcome:
    """What :func:`job_guard` hands the job: whether to skip it, and its result."""

    skip: bool
    run_dir: Path
    sweep_dir: Path
    metric: str
    value: float = math.nan
    final_status: str = DONE

    def is_duplicate(self, identity: str) -> bool:
        """Whether a completed run of the sweep had the same settings (then reuse its result).

        Records ``identity`` in this run's ``status.json`` so later runs can find it.
        """
        for other in _run_dirs(self.sweep_dir):
            status = read_status(other)
            if other == self.run_dir or status.get("identity") != identity:
                continue
            if status.get("status") == DONE and (other / "summary.json").exists():
                self.value = _stored_value(other, self.metric)
                self.final_status = "duplicate"
                write_status(self.run_dir, same_as=str(other.relative_to(self.sweep_dir)))
                print(f"sweep: same settings as {other.name}, not run again", flush=True)
                return True
        write_status(self.run_dir, identity=identity)
        return False


def _stored_value(run_dir: Path, metric: str) -> float:
    value = json.loads((run_dir / "summary.json").read_text()).get(metric)
    return float(value) if value is not None else math.nan


@contextmanager
def job_guard(run_dir: Path, sweep_dir: Path, metric: str) -> Iterator[JobOutcome]:
    """Wrap one job of a sweep: skip it if done, record success or failure, show progress.

    A failure (any ``Exception``) is written to ``status.json`` with its message and swallowed,
    so the sweep goes on; ``KeyboardInterrupt`` marks the run interrupted and stops the sweep.
    """
    if is_completed(run_dir) or read_status(run_dir).get("status") == "duplicate":
        print(f"sweep: {run_dir.name} already completed, skipped", flush=True)
        same_as = read_status(run_dir).get("same_as")
        source = sweep_dir / same_as if same_as else run_dir
        yield JobOutcome(True, run_dir, sweep_dir, metric, _stored_value(source, metric))
        return
    write_status(run_dir, status="running", started=time.time(), error=None)
    print(progress_line(sweep_dir), flush=True)
    outcome = JobOutcome(False, run_dir, sweep_dir, metric)
    try:
        yield outcome
    except KeyboardInterrupt:
        write_status(run_dir, status="interrupted", finished=time.time())
        raise
    except Exception as err:  # noqa: BLE001 - a failed run must not end the sweep
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        write_status(run_dir, status="failed", finished=time.time(), error=message)
        print(f"sweep: {run_dir.name} failed: {message}", file=sys.stderr, flush=True)
    else:
        write_status(run_dir, status=outcome.final_status, finished=time.time())
    print(progress_line(sweep_dir), flush=True)
