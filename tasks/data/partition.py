"""Split a training pool across clients with flwr-datasets partitioners.

Partitioners work on a Hugging Face ``Dataset``; we hand them a light one holding only the
labels and the row index, and slice the feature arrays with the indices they return. The same
function serves any source (digits, MNIST, a Hugging Face dataset), deterministic from ``seed``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from protocol.settings import RunSettings
from tasks.data.registry import DataBundle, DatasetSpec, load_dataset


@dataclass(frozen=True)
class PartitionSpec:
    """How to split: a registered partitioner name and its parameters."""

    method: str = "iid"
    num_partitions: int = 3
    seed: int = 0
    alpha: float = 0.5
    classes_per_client: int = 2
    server_holdout: int = 0
    """Examples kept back from the clients for the server's own clean root data."""


PartitionerFactory = Callable[[PartitionSpec], object]
PARTITIONERS: dict[str, PartitionerFactory] = {}


def register_partitioner(name: str) -> Callable[[PartitionerFactory], PartitionerFactory]:
    """Register a factory of flwr-datasets partitioners (``federation.partitioner``)."""

    def deco(fn: PartitionerFactory) -> PartitionerFactory:
        PARTITIONERS[name] = fn
        return fn

    return deco


@register_partitioner("iid")
def _iid(p: PartitionSpec) -> object:
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=p.num_partitions)


@register_partitioner("dirichlet")
def _dirichlet(p: PartitionSpec) -> object:
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=p.num_partitions,
        partition_by="label",
        alpha=p.alpha,
        min_partition_size=2,
        self_balancing=True,
        seed=p.seed,
    )


@register_partitioner("pathological")
def _pathological(p: PartitionSpec) -> object:
    from flwr_datasets.partitioner import PathologicalPartitioner

    return PathologicalPartitioner(
        num_partitions=p.num_partitions,
        partition_by="label",
        num_classes_per_partition=p.classes_per_client,
        class_assignment_mode="first-deterministic",
        seed=p.seed,
    )


@register_partitioner("natural")
def _natural(p: PartitionSpec) -> object:
    """One partition per owner of the rows (flwr-datasets' ``NaturalIdPartitioner``)."""
    from flwr_datasets.partitioner import NaturalIdPartitioner

    return NaturalIdPartitioner(partition_by="owner")


NATURAL = "natural"
"""The partitioner of naturally federated data: ``whose row is it``, one client per owner."""


def partition_indices(
    labels: np.ndarray, spec: PartitionSpec, owners: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices of each partition, deterministic from ``spec.seed``.

    ``owners`` (the owner of each row, :attr:`DataBundle.owner_train`) is what the
    ``natural`` partitioner splits by: it returns one partition per owner, in the owners'
    order, whatever ``spec.num_partitions`` (a federation may train with the first few).

    Raises
    ------
    ValueError
        For an unknown partitioner, one that cannot make ``num_partitions`` partitions, or
        ``natural`` on a dataset without owners.
    """
    if spec.method not in PARTITIONERS:
        raise ValueError(
            f"federation.partitioner must be one of {sorted(PARTITIONERS)}, got {spec.method!r}"
        )
    if spec.method == NATURAL:
        if owners is None:
            raise ValueError(
                "federation.partitioner='natural' needs a naturally federated dataset (one "
                "whose rows have owners: dataset=watch, dataset=table), this one has none"
            )
        return _natural_parts(owners, spec)
    if spec.num_partitions > len(labels):
        raise ValueError(
            f"federation.num_clients must be <= the {len(labels)} training examples, "
            f"got {spec.num_partitions}"
        )
    if spec.method == "iid":  # IidPartitioner keeps contiguous shards: shuffle first
        order = np.random.default_rng(spec.seed).permutation(len(labels))
        return [np.sort(order[p]) for p in _contiguous_shards(len(labels), spec.num_partitions)]
    import datasets

    table = datasets.Dataset.from_dict(
        {"label": labels.astype(np.int64), "row": np.arange(len(labels), dtype=np.int64)}
    )
    partitioner = PARTITIONERS[spec.method](spec)
    partitioner.dataset = table  # type: ignore[attr-defined]
    try:
        return _all_partitions(partitioner, spec.num_partitions)
    except ValueError as err:
        raise ValueError(
            f"federation.partitioner={spec.method!r} cannot split {len(labels)} examples into "
            f"{spec.num_partitions} partitions: {err}"
        ) from err


def _contiguous_shards(n: int, num_partitions: int) -> list[np.ndarray]:
    """Row numbers of ``IidPartitioner``'s partitions of ``n`` rows, without building them.

    ``IidPartitioner.load_partition(i)`` is ``Dataset.shard(num_partitions, i,
    contiguous=True)``: the first ``n % num_partitions`` shards hold one row more, exactly
    :func:`numpy.array_split` (``tests/tasks/data/test_partition_speed.py`` compares the two).
    Asking flwr-datasets for 1,000 shards took 2-3 s of every process that partitions.
    """
    return np.array_split(np.arange(n, dtype=np.int64), num_partitions)


def _all_partitions(partitioner: object, num_partitions: int) -> list[np.ndarray]:
    """Every partition's ``row`` column: one ``load_partition`` where the partitioner allows.

    The Dirichlet and pathological partitioners compute all partitions on the first
    ``load_partition`` and keep each one's row positions (``_partition_id_to_indices``);
    the ``row`` column is the position itself, so those lists are read directly instead of
    selecting (and converting) a dataset per partition, 1,000 times for 1,000 clients.
    """
    first = np.asarray(partitioner.load_partition(0)["row"], dtype=np.int64)  # type: ignore[attr-defined]
    positions = getattr(partitioner, "_partition_id_to_indices", None)
    if isinstance(positions, dict) and len(positions) == num_partitions:
        parts = [np.asarray(positions[i], dtype=np.int64) for i in range(num_partitions)]
        if np.array_equal(parts[0], first):  # the attribute still means what it meant
            return parts
    return [first] + [
        np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)  # type: ignore[attr-defined]
        for i in range(1, num_partitions)
    ]


def _natural_parts(owners: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    import datasets

    table = datasets.Dataset.from_dict(
        {"owner": owners.astype(np.int64), "row": np.arange(len(owners), dtype=np.int64)}
    )
    partitioner = PARTITIONERS[NATURAL](spec)
    partitioner.dataset = table  # type: ignore[attr-defined]
    count = int(partitioner.num_partitions)  # type: ignore[attr-defined]
    return [
        np.sort(np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64))  # type: ignore[attr-defined]
        for i in range(count)
    ]


@dataclass(frozen=True)
class ClientData:
    """One client's local data: its train and validation arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int


def split_train_val(
    indices: np.ndarray, val_fraction: float, seed: int, partition_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle a partition's indices and cut off ``val_fraction`` for validation.

    Deterministic from ``(seed, partition_id)``. At least one example stays for training;
    validation may be empty for tiny partitions.
    """
    rng = np.random.default_rng([seed, partition_id])
    idx = rng.permutation(indices)
    n_val = min(int(round(val_fraction * len(idx))), len(idx) - 1)
    return np.sort(idx[n_val:]), np.sort(idx[:n_val])


def holdout_split(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(client pool, server root data) row indices: ``holdout`` rows drawn with ``seed``."""
    if not 0 <= holdout < n:
        raise ValueError(
            f"aggregation.server_data_size must be in [0, {n}) for this dataset, got {holdout}"
        )
    server = np.sort(np.random.default_rng([seed, 0x5E4]).permutation(n)[:holdout])
    return np.setdiff1d(np.arange(n), server), server


@functools.lru_cache(maxsize=2)
def _cached_partitions(dspec: DatasetSpec, pspec: PartitionSpec) -> tuple[np.ndarray, ...]:
    bundle = load_dataset(dspec)
    labels = bundle.y_train
    pool, _ = holdout_split(len(labels), pspec.server_holdout, pspec.seed)
    owners = None if bundle.owner_train is None else bundle.owner_train[pool]
    return tuple(pool[idx] for idx in partition_indices(labels[pool], pspec, owners))


def split_client(
    bundle: DataBundle, indices: np.ndarray, val_fraction: float, seed: int, partition_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """A client's (train, validation) rows.

    The dataset's own split where it declares one (:attr:`DataBundle.val_train`, by series),
    else :func:`split_train_val`.
    """
    if bundle.val_train is not None:
        held = bundle.val_train[indices]
        return np.sort(indices[~held]), np.sort(indices[held])
    return split_train_val(indices, val_fraction, seed, partition_id)


def client_test(bundle: DataBundle, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's own test part ``(x, y)`` under the ``natural`` partition (owner = client).

    Raises
    ------
    ValueError
        For a dataset without owners (its test split is the server's, not a client's).
    """
    if bundle.owner_test is None:
        raise ValueError(
            f"dataset.name={bundle.name!r} has no per-client test parts (only naturally "
            "federated datasets do: dataset=watch, dataset=table)"
        )
    rows = bundle.owner_test == partition_id
    return bundle.x_test[rows], bundle.y_test[rows]


def server_indices(dspec: DatasetSpec, pspec: PartitionSpec) -> np.ndarray:
    """Rows of the training pool kept for the server (empty when ``server_holdout`` is 0)."""
    n = len(load_dataset(dspec).y_train)
    return holdout_split(n, pspec.server_holdout, pspec.seed)[1]


def client_partitions(dspec: DatasetSpec, pspec: PartitionSpec) -> tuple[np.ndarray, ...]:
    """All partitions' indices for a dataset (cached per process)."""
    return _cached_partitions(dspec, pspec)


def load_client_data(
    dspec: DatasetSpec, pspec: PartitionSpec, partition_id: int, val_fraction: float
) -> ClientData:
    """Data of client ``partition_id``: its partition, split into train and validation."""
    if not 0 <= partition_id < pspec.num_partitions:
        raise ValueError(f"partition-id must be in [0, {pspec.num_partitions}), got {partition_id}")
    bundle: DataBundle = load_dataset(dspec)
    indices = client_partitions(dspec, pspec)[partition_id]
    train, val = split_client(bundle, indices, val_fraction, pspec.seed, partition_id)
    return ClientData(
        bundle.x_train[train],
        bundle.y_train[train],
        bundle.x_train[val],
        bundle.y_train[val],
        bundle.input_shape,
        bundle.num_classes,
    )


def specs_from_settings(
    settings: RunSettings, num_partitions: int | None = None
) -> tuple[DatasetSpec, PartitionSpec]:
    """The dataset and partition specs a run's settings describe."""
    dspec = DatasetSpec(
        settings.dataset_name,
        settings.seed,
        settings.dataset_hf_name,
        settings.dataset_feature_key,
        settings.dataset_label_key,
        settings.dataset_path,
        settings.dataset_label,
        settings.dataset_partition_by,
        settings.dataset_features,
        settings.dataset_task,
        settings.dataset_bounds,
        settings.dataset_normalization,
        settings.dataset_test_fraction,
        settings.dataset_pipeline,
    )
    pspec = PartitionSpec(
        settings.partitioner,
        settings.num_clients if num_partitions is None else num_partitions,
        settings.seed,
        settings.dirichlet_alpha,
        settings.classes_per_client,
        settings.aggregation_server_data_size,
    )
    return dspec, pspec
