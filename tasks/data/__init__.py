"""Data: the dataset registry and its sources, public bounds, partitioning and node files.

:mod:`tasks.data.registry` defines :class:`DataBundle` and the registry; the sources
:mod:`tasks.data.images` (digits, MNIST, Hugging Face), :mod:`tasks.data.tabular` (Adult,
wage), :mod:`tasks.data.sensors` (``watch``) and :mod:`tasks.data.hapt` (``hapt``), naturally
federated sensor data through the feature pipelines of :mod:`tasks.data.features`, and
:mod:`tasks.data.table` (a user's own table) register themselves on import, here.
:mod:`tasks.data.bounds` holds the datasets' declared public bounds, :mod:`tasks.data.partition`
the simulation's partitioning and :mod:`tasks.data.node_files` the files a real participant's
node reads.
"""

from tasks.data import hapt, images, sensors, table, tabular  # noqa: F401  (plug-ins: register datasets)
from tasks.data.bounds import PUBLIC_BOUNDS, PublicBounds, public_bounds, register_public_bounds
from tasks.data.node_files import (
    TaskShape,
    load_node_data,
    read_node_file,
    task_shape,
    write_node_file,
)
from tasks.data.partition import (
    NATURAL,
    ClientData,
    PartitionSpec,
    client_partitions,
    client_test,
    load_client_data,
    partition_indices,
    server_indices,
    specs_from_settings,
    split_client,
    split_train_val,
)
from tasks.data.registry import (
    DATASETS,
    NATURAL_DATASETS,
    DataBundle,
    DatasetSpec,
    cache_dir,
    is_natural,
    load_dataset,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "NATURAL",
    "NATURAL_DATASETS",
    "PUBLIC_BOUNDS",
    "ClientData",
    "DataBundle",
    "DatasetSpec",
    "PartitionSpec",
    "PublicBounds",
    "TaskShape",
    "cache_dir",
    "client_partitions",
    "client_test",
    "load_client_data",
    "is_natural",
    "load_dataset",
    "load_node_data",
    "partition_indices",
    "public_bounds",
    "read_node_file",
    "register_dataset",
    "register_public_bounds",
    "server_indices",
    "specs_from_settings",
    "split_client",
    "split_train_val",
    "task_shape",
    "write_node_file",
]
