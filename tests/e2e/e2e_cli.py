"""Run ``python -m experiments.run`` as a user would, and make sure it left nothing running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil

from experiments.processes.launcher import processes_in_home, stop_process_tree

REPO = Path(__file__).resolve().parents[2]


def run_cli(out: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one federation into ``out``; fail if any Flower/Ray process outlives it."""
    return run_experiments(out, f"hydra.run.dir={out}", *overrides, timeout=timeout)


def run_experiments(
    home: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m experiments.run ARGS``; fail if a process started under ``home`` outlives it."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "experiments.run", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        # a process may still be on its way out (a loaded machine): give it a few seconds
        _, leftovers = psutil.wait_procs(processes_in_home(home), timeout=5)
        names = []
        for proc in leftovers:
            try:
                names.append(" ".join(proc.cmdline()))
            except psutil.Error:
                names.append(f"pid {proc.pid}")
            stop_process_tree(proc, grace=5)
        assert not leftovers, f"processes left running: {names}"


def rounds_in(path: Path) -> list[int]:
    """The rounds ``metrics.csv`` holds so far (none while it is missing or half written)."""
    try:
        return [int(r) for r in pd.read_csv(path)["round"]]
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError, KeyError):
        return []


def _sigkill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def kill_tree(proc: subprocess.Popen[str], home: Path) -> None:
    """SIGKILL ``proc`` and everything it started (as a crash would), by PID."""
    try:
        root = psutil.Process(proc.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    # the family at once (the run may finish its next round within a second), then any process
    # under ``home`` that is not a descendant (scanning every process takes longer)
    _sigkill(family[::-1])  # the deepest first: the ServerApp writes the rounds
    _sigkill(processes_in_home(home))
    psutil.wait_procs(family, timeout=10)
    proc.wait(timeout=10)


def run_killed_after(out: Path, kill_round: int, *overrides: str, timeout: float = 540) -> None:
    """Start a run into ``out`` and SIGKILL it once ``kill_round`` is in ``metrics.csv``."""
    log = open(out.parent / f"{out.name}-first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", f"hydra.run.dir={out}", *overrides],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while kill_round not in rounds_in(out / "metrics.csv"):
            assert proc.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, f"round {kill_round} did not finish in time"
            time.sleep(0.05)  # kill soon after: the next rounds may take well under a second
        kill_tree(proc, out)
    finally:
        if proc.poll() is None:
            kill_tree(proc, out)
        for p in processes_in_home(out):
            stop_process_tree(p, grace=2)
        log.close()
