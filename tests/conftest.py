"""Shared fixtures: a safety net that stops any Flower/Ray process a test left behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from experiments.launcher import stop_process_tree


def processes_under(home: Path) -> list[psutil.Process]:
    """Processes whose FLWR_HOME lies under ``home`` (started for one test)."""
    found = []
    for proc in psutil.process_iter():
        try:
            flwr_home = proc.environ().get("FLWR_HOME", "")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if flwr_home and Path(flwr_home).is_relative_to(home) and proc.pid != os.getpid():
            found.append(proc)
    return found


@pytest.fixture
def flower_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for one federation; every process started under it is stopped by PID."""
    home = tmp_path_factory.mktemp("federation")
    yield home
    for proc in processes_under(home):
        stop_process_tree(proc, grace=5)
