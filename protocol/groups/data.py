"""The ``dataset`` and ``model`` groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import SENSOR_PIPELINES, TABLE_NORMALIZATIONS, TABLE_TASKS, Group


@dataclass
class DatasetGroup(Group):
    """``dataset=``: which data, and for Hugging Face sources the hub name and columns.

    ``name`` is checked against the dataset registry by ``experiments.config.check_data``.
    """

    NAME: ClassVar[str] = "dataset"

    name: str = "digits"
    hf_name: str = ""
    """``dataset=huggingface``: the hub dataset (``ylecun/mnist``)."""
    feature_key: str = "image"
    label_key: str = "label"
    path: str = ""
    """``dataset=table``: the user's CSV or Parquet file."""
    label: str = ""
    """``dataset=table``: the label column."""
    partition_by: str = ""
    """``dataset=table``: the column naming each row's owner (one client per owner)."""
    features: str = ""
    """``dataset=table``: feature columns, comma-separated ("": every other column)."""
    task: str = "classification"
    """``dataset=table``: ``classification`` | ``regression``."""
    bounds: str = ""
    """``dataset=table``: declared public bounds, ``col:lower:upper,...`` (never the data's)."""
    normalization: str = "client"
    """``dataset=table``: ``bounds`` (declared) | ``client`` (each owner's own statistics,
    kept local) | ``none``; never statistics of the pooled data."""
    test_fraction: float = 0.2
    """``dataset=table``: share of each owner's rows kept for its own test part."""
    pipeline: str = ""
    """``dataset=watch|hapt``: the feature pipeline of the sensor windows, ``windows`` (raw, for
    ``model=cnn1d``) | ``stats`` (per-window channel statistics, each client's own
    standardisation); "": ``windows``."""

    def validate(self) -> None:
        """Option names and ranges: ``task``, ``normalization``, ``test_fraction``, ``pipeline``."""
        self._one_of("task", TABLE_TASKS)
        self._one_of("normalization", TABLE_NORMALIZATIONS)
        self._require("test_fraction", 0 < self.test_fraction < 1, "must be in (0, 1)")
        if self.pipeline:
            self._one_of("pipeline", SENSOR_PIPELINES)


@dataclass
class ModelGroup(Group):
    """``model=``: a registered model and its hidden width (registry names: ``tasks``)."""

    NAME: ClassVar[str] = "model"

    name: str = "mlp"
    hidden: int = 64

    def validate(self) -> None:
        """``hidden`` > 0."""
        self._require("hidden", self.hidden > 0, "must be > 0")
