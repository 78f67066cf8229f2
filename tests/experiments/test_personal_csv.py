"""personal.csv after a simulated run: a row per subject; global model and ledgers unchanged."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.config import natural_federation
from experiments.personal import check_personalization, summary_line, write_personal
from privacy import PrivacyLedger
from protocol.settings import RunSettings
from tasks.data import DatasetSpec, load_dataset
from tasks.models import build_model, get_weights, model_spec

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("seglearn") is None,
    reason="pip install --no-deps seglearn==1.2.5",
)


def _settings(**kw: object) -> RunSettings:
    base = RunSettings(
        dataset_name="watch",
        model_name="cnn1d",
        model_hidden=16,
        personalization_mode="finetune",
        personalization_epochs=1,
        device="cpu",
    )
    return natural_federation(dataclasses.replace(base, **kw).validate())  # type: ignore[arg-type]


def test_fine_tuning_leaves_the_global_model_and_every_ledger_unchanged(tmp_path: Path) -> None:
    settings = _settings(output_dir=str(tmp_path))
    bundle = load_dataset(DatasetSpec("watch"))
    weights = get_weights(
        build_model(model_spec(settings, bundle.input_shape, bundle.num_classes), 0)
    )
    buf = io.BytesIO()
    np.savez(buf, **weights)
    (tmp_path / "final_model.npz").write_bytes(buf.getvalue())
    (tmp_path / "ledgers").mkdir()
    ledger = PrivacyLedger(delta=1e-5)
    for pid in range(3):
        (tmp_path / "ledgers" / f"client-{pid}.json").write_text(ledger.to_json())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    table = write_personal(settings, tmp_path)

    for path, data in before.items():
        assert path.read_bytes() == data, f"{path.name} changed"
    assert (tmp_path / "personal.png").stat().st_size > 0
    written = pd.read_csv(tmp_path / "personal.csv")
    assert list(written["partition_id"]) == list(range(10))  # one row per subject
    assert (written["epochs"] == 1).all() and (written["examples"] > 0).all()
    assert written["federated"].all()
    assert (written["personal_accuracy"] != written["global_accuracy"]).any()
    assert "of 10 clients" in summary_line(table)


def test_initial_clients_federate_the_first_k_and_personalise_everyone() -> None:
    settings = _settings(personalization_initial_clients=3)
    assert (settings.num_clients, settings.partitioner) == (3, "natural")
    assert settings.min_replies <= 3
    with pytest.raises(ValueError, match="personalization.initial_clients must be <= the 10"):
        _settings(personalization_initial_clients=11)


def test_a_natural_dataset_sets_the_federation_and_refuses_other_counts() -> None:
    assert _settings().num_clients == 10
    with pytest.raises(ValueError, match="federation.num_clients is set by dataset.name='watch'"):
        _settings(num_clients=5)
    with pytest.raises(ValueError, match="federation.partitioner must be 'natural'"):
        _settings(partitioner="dirichlet")
    with pytest.raises(ValueError, match="aggregation.server_data_size must be 0 for dataset"):
        _settings(aggregation_server_data_size=50)  # the server would take owners' rows
    with pytest.raises(ValueError, match="needs a naturally federated dataset"):
        natural_federation(RunSettings(partitioner="natural"))
    with pytest.raises(ValueError, match="personalization.initial_clients needs a naturally"):
        natural_federation(RunSettings(personalization_initial_clients=2))


def test_personalization_is_checked_before_the_run() -> None:
    digits = RunSettings(personalization_mode="finetune")
    with pytest.raises(ValueError, match="needs a naturally federated dataset"):
        check_personalization(digits, "simulation")
    watch = _settings()
    check_personalization(watch, "simulation")
    # a deployment's nodes fine-tune on their own files and keep the result: any dataset
    check_personalization(digits, "deployment")
    with pytest.raises(ValueError, match="personalization.epochs must be > 0"):
        check_personalization(dataclasses.replace(digits, personalization_epochs=0), "deployment")
    none = dataclasses.replace(digits, personalization_mode="none")
    check_personalization(none, "deployment")
