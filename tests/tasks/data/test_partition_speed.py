"""The fast partition paths give exactly flwr-datasets' partitions (one partition at a time)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from tasks.data.partition import PARTITIONERS, PartitionSpec, partition_indices


def _reference(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """What partition_indices computed before: ``load_partition(i)`` for every i."""
    table = datasets.Dataset.from_dict(
        {"label": labels.astype(np.int64), "row": np.arange(len(labels), dtype=np.int64)}
    )
    partitioner = PARTITIONERS[spec.method](spec)
    partitioner.dataset = table  # type: ignore[attr-defined]
    parts = [
        np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)  # type: ignore[attr-defined]
        for i in range(spec.num_partitions)
    ]
    if spec.method == "iid":
        order = np.random.default_rng(spec.seed).permutation(len(labels))
        parts = [np.sort(order[p]) for p in parts]
    return parts


@pytest.mark.parametrize(
    ("method", "n", "k"),
    [
        ("iid", 103, 7),
        ("iid", 103, 103),
        ("iid", 1000, 1),
        ("dirichlet", 400, 9),
        ("pathological", 400, 9),
    ],
)
def test_same_partitions_as_one_at_a_time(method: str, n: int, k: int) -> None:
    labels = np.random.default_rng(5).integers(0, 10, size=n)
    spec = PartitionSpec(method, k, seed=3, alpha=0.5, classes_per_client=2)
    fast = partition_indices(labels, spec)
    slow = _reference(labels, spec)
    assert len(fast) == len(slow) == k
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    if method == "iid":  # every row in exactly one partition
        np.testing.assert_array_equal(np.sort(np.concatenate(fast)), np.arange(n))
