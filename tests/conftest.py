"""Shared fixtures: a safety net that stops any Flower/Ray process a test left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.launcher import processes_in_home, stop_process_tree


@pytest.fixture
def flower_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for one federation; every process started under it is stopped by PID."""
    home = tmp_path_factory.mktemp("federation")
    yield home
    for proc in processes_in_home(home):
        stop_process_tree(proc, grace=5)
