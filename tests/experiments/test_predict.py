"""``experiments.predict``: private predictions and --evaluate from a run directory."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from experiments.inference import QuerySpace, load_run, private_predict, run_test_split
from experiments.predict import main
from protocol.checkpoint import dumps
from protocol.settings import RunSettings
from tasks.data import DatasetSpec, load_dataset
from tasks.data.tabular import ADULT_FEATURES
from tasks.models import ModelSpec, build_model, get_weights


def make_run(root: Path, dataset: str, model_name: str, steps: int = 40) -> Path:
    """A run directory as the ServerApp leaves it: checkpoint index and final model."""
    settings = RunSettings(dataset_name=dataset, model_name=model_name, model_hidden=32, seed=0)
    bundle = load_dataset(DatasetSpec(dataset, seed=0))
    model = build_model(ModelSpec(model_name, bundle.input_shape, bundle.num_classes, 32, dataset))
    x, y = torch.as_tensor(bundle.x_train[:512]), torch.as_tensor(bundle.y_train[:512])
    if dataset == "adult":
        x = x / torch.tensor([90.0, 16, 99, 12, 9, 1, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    run = root / f"run-{dataset}"
    (run / "checkpoint").mkdir(parents=True)
    index = {"format": 1, "round": 1, "run_config": settings.to_run_config()}
    (run / "checkpoint" / "checkpoint.json").write_text(dumps(index))
    buf = io.BytesIO()
    np.savez(buf, **get_weights(model))  # type: ignore[arg-type]
    (run / "final_model.npz").write_bytes(buf.getvalue())
    return run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("predict"), "digits", "mlp")


def test_predict_writes_one_row_per_query(digits_run: Path, tmp_path: Path) -> None:
    x, _ = run_test_split(digits_run)
    names = [f"pixel_{i}" for i in range(64)]
    queries = pd.DataFrame(x[:7], columns=names)
    queries.insert(0, "id", [f"q{i}" for i in range(7)])
    queries.to_csv(tmp_path / "q.csv", index=False)
    out = tmp_path / "p.csv"
    args = [str(digits_run), "--input", str(tmp_path / "q.csv"), "--out", str(out)]
    rc = main(
        args + ["--mechanism", "output_gaussian", "--epsilon", "1", "--radius", "0.5", "--scores"]
    )
    assert rc == 0
    pred = pd.read_csv(out)
    assert list(pred["id"]) == [f"q{i}" for i in range(7)]
    assert set(pred["prediction"]) <= set(range(10)) and "score_9" in pred
    cert = json.loads((digits_run / "lipschitz.json").read_text())
    assert cert["bound"] > 0 and cert["weights_sha256"]
    stamp = (digits_run / "lipschitz.json").stat().st_mtime_ns
    assert main(args + ["--mechanism", "output_laplace", "--delta", "0"]) == 0
    assert (digits_run / "lipschitz.json").stat().st_mtime_ns == stamp  # computed once


def test_evaluate_prints_accuracy_and_writes_the_table(
    digits_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(digits_run), "--evaluate", "--mechanism", "none"]) == 0
    exact = float(capsys.readouterr().out.split("accuracy ")[1].split()[0])
    assert exact > 0.8
    rc = main(
        [
            str(digits_run),
            "--evaluate",
            "--mechanism",
            "input_gaussian",
            "--epsilon",
            "0.5",
            "50",
            "--radius",
            "1",
        ]
    )
    assert rc == 0
    table = pd.read_csv(digits_run / "inference_privacy.csv")
    rows = table[table["mechanism"] == "input_gaussian"].set_index("epsilon")
    assert rows.loc[50.0, "accuracy"] > rows.loc[0.5, "accuracy"]  # more epsilon, less noise
    assert rows.loc[0.5, "accuracy"] < exact
    assert set(table["mechanism"]) == {"none", "input_gaussian"}


def test_bad_inputs_name_what_is_wrong(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path), "--evaluate"]) == 2
    assert "has no final_model.npz" in capsys.readouterr().err
    bad = pd.DataFrame(np.zeros((2, 63)), columns=[f"pixel_{i}" for i in range(63)])
    bad.to_csv(tmp_path / "short.csv", index=False)
    assert main([str(digits_run), "--input", str(tmp_path / "short.csv")]) == 2
    assert "column 'pixel_63' is missing" in capsys.readouterr().err
    bad["pixel_63"] = 0.0
    bad["colour"] = 1.0
    bad.to_csv(tmp_path / "extra.csv", index=False)
    assert main([str(digits_run), "--input", str(tmp_path / "extra.csv")]) == 2
    assert "column 'colour' is not a feature" in capsys.readouterr().err
    ok = tmp_path / "ok.csv"
    bad.drop(columns="colour").to_csv(ok, index=False)
    for flag, value, message in [
        ("--epsilon", "0", "epsilon must be finite and > 0, got 0.0"),
        ("--radius", "-1", "radius must be finite and > 0, got -1.0"),
        ("--delta", "1", "delta must be in"),
    ]:
        assert (
            main(
                [str(digits_run), "--input", str(ok), flag, value, "--out", str(tmp_path / "o.csv")]
            )
            == 2
        )
        assert message in capsys.readouterr().err


def test_adult_query_space_is_the_public_range(tmp_path: Path) -> None:
    run = make_run(tmp_path, "adult", "mlp", steps=20)
    model = load_run(run)
    assert model.space.names == ADULT_FEATURES
    assert model.space.scale[0] == pytest.approx(73.0)  # age 17..90
    x, y = run_test_split(run)
    pred = private_predict(model, x[:50], "none")
    raw = build_model(ModelSpec("mlp", (7,), 2, 32, "adult"))
    with np.load(run / "final_model.npz") as npz:
        raw.load_state_dict({k: torch.as_tensor(npz[k]) for k in npz.files})
    with torch.no_grad():
        direct = raw(torch.as_tensor(x[:50])).argmax(1).numpy()
    assert np.array_equal(pred.labels, direct)  # the folded query-space model is the same function
    assert QuerySpace.for_dataset("huggingface", (3,)).bounded is False


def test_output_mechanisms_refuse_a_model_without_a_certified_bound(tmp_path: Path) -> None:
    run = make_run(tmp_path, "adult", "logistic", steps=0)
    model = load_run(run)
    x, _ = run_test_split(run)
    assert (
        len(
            private_predict(
                model, x[:5], "input_gaussian", epsilon=1, delta=1e-5, radius=0.1
            ).labels
        )
        == 5
    )
    with pytest.raises(ValueError, match=r"layer 1 \(_Logistic"):
        private_predict(model, x[:5], "output_gaussian", epsilon=1, delta=1e-5, radius=0.1)


def test_a_tampered_certificate_is_refused(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_run(digits_run).certificate()  # computed and stored
    path = digits_run / "lipschitz.json"
    original = path.read_text()
    data = json.loads(original)
    data["bound"] /= 10  # ten times less noise than the layers justify
    path.write_text(json.dumps(data))
    try:
        assert main([str(digits_run), "--evaluate", "--mechanism", "output_gaussian"]) == 2
        assert "does not fit the model" in capsys.readouterr().err
    finally:
        path.write_text(original)
