"""The audit's in-process federation combines replies exactly as the ServerApp's strategy does."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from fl_messages import server_identity, trained

from experiments.audit_plan import audit_clients, server_rule
from fl_server.objective import ObjectiveFedAvg, model_head_kind, noise_scale_of
from fl_server.registry import make_strategy
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.audit import AuditFederation, Reply, fedavg, replay_round, run_federation
from tasks.models import get_weights
from tasks.models.functional import FUNCTIONAL_HEAD
from tasks.models.registry import build_model
from tasks.training import TrainConfig


def _functional(**extra: object) -> RunSettings:
    return RunSettings(
        dataset_name="digits",
        model_name="fm_network",
        model_hidden=16,
        privacy_mode="functional",
        privacy_target_epsilon=8.0,
        num_clients=2,
        num_rounds=2,
        **extra,  # type: ignore[arg-type]
    ).validate()


def _federation(settings: RunSettings) -> tuple[AuditFederation, dict]:
    spec, data = audit_clients(settings)
    config = TrainConfig.from_settings(settings)
    return AuditFederation(config, spec, settings.seed, 0, server_rule(settings)), data


@pytest.fixture
def _identity() -> Iterator[None]:
    with server_identity():
        yield


@pytest.mark.usefixtures("_identity")
def test_objective_releases_are_combined_as_objective_fedavg_combines_them() -> None:
    settings = _functional()
    fed, data = _federation(settings)
    g = get_weights(build_model(fed.spec, fed.seed))
    results = [replay_round(fed, data[pid], g, 1) for pid in data]
    replies = [Reply(r.num_examples, r.weights, r.release) for r in results]  # type: ignore[arg-type]
    assert all(r.release is not None for r in replies)
    ours = fed.aggregate(g, replies)

    strategy = make_strategy(settings)
    assert isinstance(strategy, ObjectiveFedAvg)
    strategy.current = to_record(g)
    msgs = []
    for node, r in enumerate(replies, start=1):
        msg = trained(node, 0.0, r.num_examples, weights=r.weights)
        msg.content[keys.FM_OBJECTIVES] = to_record(r.release)  # type: ignore[arg-type]
        msgs.append(msg)
    record, _ = strategy.aggregate_train(1, msgs)
    assert record is not None
    theirs = from_record(record)
    assert set(ours) == set(theirs)
    for k in theirs:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6)
    # FedAvg of the clients' heads (the audit's old rule) is another model.
    averaged = fedavg(g, replies)[FUNCTIONAL_HEAD]
    assert not np.allclose(averaged, theirs[FUNCTIONAL_HEAD], rtol=1e-3, atol=1e-4)


def test_the_federation_ends_at_the_minimiser_of_the_summed_releases() -> None:
    settings = _functional(privacy_reproducible_noise=True)  # releases can be redrawn
    fed, data = _federation(settings)
    out = run_federation(fed, data)
    assert len(out.client_releases) == settings.num_rounds
    assert all(r is not None for r in out.client_releases)
    g0 = out.global_weights[0]
    releases = [
        replay_round(dataclasses.replace(fed, audited=pid), data[pid], g0, 1).release
        for pid in data
    ]
    head = out.final[FUNCTIONAL_HEAD]
    expected = model_head_kind(settings).solve(
        releases,  # type: ignore[arg-type]
        noise_scale_of(settings)(head.shape[1], head.shape[0]),
        np.ones(len(releases)),
    )
    np.testing.assert_allclose(head, expected, rtol=1e-5, atol=1e-6)


def test_an_objective_release_is_never_averaged_as_weights() -> None:
    fed, data = _federation(_functional())
    with pytest.raises(ValueError, match="functional_aggregation='objective'"):
        run_federation(dataclasses.replace(fed, aggregate=fedavg), data)
    average = _functional(privacy_functional_aggregation="average")
    assert server_rule(average) is fedavg
    assert server_rule(dataclasses.replace(average, privacy_mode="none")) is fedavg
