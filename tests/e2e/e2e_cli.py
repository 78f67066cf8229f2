"""Run ``python -m experiments.run`` as a user would, and make sure it left nothing running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
