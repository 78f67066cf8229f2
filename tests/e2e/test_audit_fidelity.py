"""The audit's in-process federation releases what a real run of the Flower apps releases.

``experiments.audit`` attacks a federation run in process (:mod:`tasks.audit.simulate`), not
through a SuperLink. That is only an audit of fedpriv if the two compute the same thing: here a
real ``python -m experiments.run`` (SuperLink, ServerApp, ClientApps on Flower's simulation
engine) and :func:`tasks.audit.simulate.run_federation`, given the run's own settings (read back
from its checkpoint) and the audit's server rule, must end with the same global model. With
``privacy.reproducible_noise=true`` every draw (Poisson sampling, Gaussian or Laplace noise)
derives from the run's seed, so the two agree to float rounding; with secret noise they would
differ by their draws only, which this cannot check and need not: the draws are the
mechanism's, the code around them is what is compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from e2e_cli import run_cli

from experiments.audit_plan import audit_clients, server_rule
from protocol.checkpoint import load_checkpoint
from protocol.settings import RunSettings
from tasks.audit import AuditFederation, run_federation
from tasks.training import TrainConfig

COMMON = (
    "dataset=digits",
    "federation.num_clients=3",
    "federation.rounds=2",
    "federation.fraction_evaluate=0",
    "privacy.reproducible_noise=true",
    "privacy.target_epsilon=4",
)


def _in_process(settings: RunSettings) -> dict[str, np.ndarray]:
    spec, data = audit_clients(settings)
    fed = AuditFederation(
        TrainConfig.from_settings(settings), spec, settings.seed, 0, server_rule(settings)
    )
    return run_federation(fed, data).final


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(("privacy=dpsgd",), id="dpsgd"),
        pytest.param(("privacy=functional", "model=fm_network"), id="functional-objective"),
    ],
)
def test_in_process_federation_ends_with_the_real_runs_model(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    res = run_cli(tmp_path, *COMMON, *mode, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    real = load_checkpoint(tmp_path)
    assert real.round == 2
    settings = RunSettings.from_run_config(real.run_config)
    assert settings.privacy_reproducible_noise and settings.num_clients == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"

    mine = _in_process(settings)
    assert sorted(mine) == sorted(real.weights)
    for name, value in real.weights.items():
        assert np.allclose(mine[name], value, rtol=1e-4, atol=1e-5), name
    # and the comparison can fail: another seed's federation ends elsewhere
    other = _in_process(RunSettings.from_run_config({**real.run_config, "seed": 1}))
    assert not all(np.allclose(other[k], v, rtol=1e-4, atol=1e-5) for k, v in real.weights.items())
