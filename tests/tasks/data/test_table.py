"""dataset=table: a user's own file, one client per owner, checked with errors naming the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.config import check_data, natural_federation
from protocol.settings import RunSettings
from tasks.data import DatasetSpec, PartitionSpec, client_partitions, client_test, load_dataset


def _frame(owners: int = 3, rows: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for h in range(owners):
        x = rng.normal(h, 1 + h, size=rows)
        parts.append(
            pd.DataFrame(
                {
                    "site": f"S{h}",
                    "age": 30 + 10 * x,
                    "dose": rng.uniform(0, 5, size=rows),
                    "outcome": np.where(x + rng.normal(size=rows) > h, "yes", "no"),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _spec(path: Path, **kw: str) -> DatasetSpec:
    args = {"path": str(path), "label": "outcome", "partition_by": "site"} | kw
    return DatasetSpec("table", **args)  # type: ignore[arg-type]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "visits.parquet"
    _frame().to_parquet(path)
    return path


def test_every_owners_rows_land_in_exactly_one_client(table: Path) -> None:
    spec = _spec(table)
    b = load_dataset(spec)
    assert (b.owners, b.num_classes, b.input_shape) == (3, 2, (2,))
    parts = client_partitions(spec, PartitionSpec("natural", 3))
    rows = np.concatenate(parts)
    assert len(rows) == len(np.unique(rows)) == len(b.y_train)
    for pid, idx in enumerate(parts):
        assert set(b.owner_train[idx]) == {pid}
        assert len(idx) + len(client_test(b, pid)[1]) == 40  # 40 rows an owner, all its own
        assert len(client_test(b, pid)[1]) == 8  # dataset.test_fraction=0.2


def test_client_normalisation_uses_each_owners_own_rows_only(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    frame = _frame()
    frame.to_csv(a, index=False)
    changed = frame.copy()
    changed.loc[changed["site"] == "S2", "age"] *= 100  # another owner's data changes
    changed.to_csv(b, index=False)
    one, two = load_dataset(_spec(a)), load_dataset(_spec(b))
    for pid in (0, 1):
        mine = one.owner_train == pid
        assert np.array_equal(one.x_train[mine], two.x_train[two.owner_train == pid])
    for bundle in (one, two):  # every owner standardised by the statistics of its own rows
        for pid in range(3):
            x = bundle.x_train[bundle.owner_train == pid]
            assert np.allclose(x.mean(axis=0), 0, atol=1e-5)
            assert np.allclose(x.std(axis=0), 1, atol=1e-4)


def test_declared_bounds_scale_and_clip(table: Path) -> None:
    b = load_dataset(_spec(table, normalization="bounds", bounds="age:0:100,dose:0:5"))
    assert b.x_train.min() >= 0 and b.x_train.max() <= 1
    with pytest.raises(ValueError, match=r"has none for column\(s\) \['dose'\]"):
        load_dataset(_spec(table, normalization="bounds", bounds="age:0:100"))
    with pytest.raises(ValueError, match="'age:5:1' must be column:lower:upper"):
        load_dataset(_spec(table, normalization="bounds", bounds="age:5:1,dose:0:5"))
    with pytest.raises(ValueError, match=r"names column\(s\) \['dse'\] that are neither"):
        load_dataset(_spec(table, normalization="bounds", bounds="age:0:100,dose:0:5,dse:0:5"))


@pytest.mark.parametrize(
    ("change", "kw", "message"),
    [
        (None, {"partition_by": "hospital"}, "dataset.partition_by='hospital' is not a column"),
        (None, {"label": "income"}, "dataset.label='income' is not a column"),
        ("one_owner", {}, "column 'site' (dataset.partition_by) has a single value ('S0'"),
        ("nan_label", {}, "column 'outcome' (dataset.label) has 1 missing (NaN) label(s), first"),
        ("nan_owner", {}, "column 'site' (dataset.partition_by) has 1 missing owner(s), first"),
        ("text_feature", {}, "feature column 'ward' must be numeric, got dtype"),
        ("nan_feature", {}, "feature column 'dose' has 1 missing, NaN or infinite value(s)"),
        (None, {"features": "age,weight"}, "dataset.features='weight' is not a column"),
    ],
)
def test_bad_tables_are_refused_naming_file_and_column(
    tmp_path: Path, change: str | None, kw: dict[str, str], message: str
) -> None:
    frame = _frame()
    if change == "one_owner":
        frame["site"] = "S0"
    elif change == "nan_owner":
        frame.loc[3, "site"] = None
    elif change == "nan_label":
        frame.loc[5, "outcome"] = None
    elif change == "text_feature":
        frame["ward"] = "A"
    elif change == "nan_feature":
        frame.loc[7, "dose"] = np.nan
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError) as err:
        load_dataset(_spec(path, **kw))
    assert str(path) in str(err.value) and message in str(err.value)


def test_an_owner_with_fewer_rows_than_a_batch_is_refused_before_the_run(tmp_path: Path) -> None:
    frame = _frame()
    frame = frame[(frame["site"] != "S1") | (frame.index < 50)]  # S1 keeps 10 rows
    path = tmp_path / "small.csv"
    frame.to_csv(path, index=False)
    settings = natural_federation(
        RunSettings(
            dataset_name="table",
            dataset_path=str(path),
            dataset_label="outcome",
            dataset_partition_by="site",
            privacy_mode="none",
            model_name="mlp",
            batch_size=16,
        ).validate()
    )
    assert (settings.num_clients, settings.partitioner) == (3, "natural")
    expected = r"federation.batch_size must be at most .*owner 'S1' of column 'site'"
    with pytest.raises(ValueError, match=expected):
        check_data(settings)


def test_missing_path_and_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset.path must name a CSV or Parquet file"):
        load_dataset(DatasetSpec("table", label="y", partition_by="o"))
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(_spec(tmp_path / "none.csv"))
    with pytest.raises(ValueError, match="must end in one of .csv, .parquet"):
        load_dataset(_spec(tmp_path / "x.json"))
