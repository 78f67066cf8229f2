"""Shared by the node tests: the server's identity around each test, and one node's data file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fl_messages import server_identity

from experiments.local_deployment import export_partitions


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Partition 0 of a 3-way digits split, as the npz file a deployment node reads."""
    return export_partitions(tmp_path_factory.mktemp("data"), 3, "npz", ["dataset=digits"])[0]
