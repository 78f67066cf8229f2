"""Shared fixtures: a safety net that stops any Flower/Ray process a test left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.processes.launcher import processes_in_home, stop_process_tree


@pytest.fixture
def flower_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for one federation; every process started under it is stopped by PID."""
    home = tmp_path_factory.mktemp("federation")
    yield home
    for proc in processes_in_home(home):
        stop_process_tree(proc, grace=5)


E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/e2e/`` as ``e2e`` (the fast lane deselects them)."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)
