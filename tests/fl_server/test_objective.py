"""ObjectiveFedAvg (privacy.functional_aggregation=objective) on hand-built Flower replies."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from fl_messages import server_identity, trained
from flwr.app import Message

from fl_server.objective import ObjectiveFedAvg, noise_scale_of
from fl_server.registry import make_strategy
from fl_server.weighted import WeightedFedAvg
from privacy.functional import (
    FunctionalMechanism,
    SoftmaxGaussianMechanism,
    SoftmaxMechanism,
    SoftmaxStatistics,
    head_kind,
    make_noise_generator,
    objectives_to_arrays,
    solve_softmax,
    solve_summed,
)
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.models import ModelSpec, build_model, model_info, models_with
from tasks.models.functional import FUNCTIONAL_HEAD, FunctionalModel


def functional_noise_scale(settings: RunSettings, dim: int, outputs: int) -> float:
    return noise_scale_of(settings)(dim, outputs)


D = 4
SETTINGS = RunSettings(
    dataset_name="adult",
    model_name="logistic",
    privacy_mode="functional",
    privacy_target_epsilon=1.0,
    num_clients=3,
)


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def releases(k: int, seed: int = 0) -> list[list]:
    rng = np.random.default_rng(seed)
    mech = FunctionalMechanism(1.0, kind="logistic", bound="l2")
    out = []
    for i in range(k):
        x = rng.normal(size=(200, D))
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
        y = (rng.random(200) < 0.3).astype(np.float64)
        out.append([mech.perturb(mech.objective(x, y), make_noise_generator(seed * 10 + i))])
    return out


def reply(node: int, n: int, release: list | None, head_value: float = 0.0) -> Message:
    weights = {
        FUNCTIONAL_HEAD: np.full((1, D), head_value, dtype=np.float32),
        "fixed": np.ones(3, dtype=np.float32),
    }
    msg = trained(node, 0.0, n, weights=weights)
    if release is not None:
        msg.content[keys.FM_OBJECTIVES] = to_record(objectives_to_arrays(release))
    return msg


def strategy(settings: RunSettings = SETTINGS) -> ObjectiveFedAvg:
    s = make_strategy(settings)
    assert isinstance(s, ObjectiveFedAvg)
    s.current = to_record(
        {FUNCTIONAL_HEAD: np.zeros((1, D), dtype=np.float32), "fixed": np.ones(3, np.float32)}
    )
    return s


def test_head_is_the_minimiser_of_the_summed_releases() -> None:
    rel = releases(3)
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(i + 1, 200 + 50 * i, r, i) for i, r in enumerate(rel)])
    assert arrays is not None
    got = from_record(arrays)
    b = functional_noise_scale(SETTINGS, D, 1)
    expected = solve_summed([r[0] for r in rel], b)  # plain sum: example weights give 1 each
    np.testing.assert_allclose(got[FUNCTIONAL_HEAD][0], expected, rtol=1e-5, atol=1e-6)
    assert got[FUNCTIONAL_HEAD].dtype == np.float32
    np.testing.assert_array_equal(got["fixed"], np.ones(3))  # other weights: FedAvg as usual
    assert [o.status for o in s.rounds[1].outcomes] == ["trained"] * 3


def test_noise_scale_is_the_clients_mechanism() -> None:
    mech = FunctionalMechanism(1.0 / 3, kind="logistic", bound="paper")
    settings = dataclasses.replace(SETTINGS, privacy_functional_bound="paper")
    assert functional_noise_scale(settings, 9, 3) == mech.noise_scale(9)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda a: None, "has no 'fm-objectives' record"),
        (lambda a: a["alpha"].__setitem__((0, 0), np.nan), "1 NaN/Inf values"),
        (lambda a: a.pop("c"), "missing parameters: 'c'"),
        (lambda a: a["M"].__setitem__((0, 0, 1), a["M"][0, 0, 1] + 1.0), "symmetric"),
    ],
)
def test_a_malformed_release_is_rejected_and_left_out(mutate, reason: str) -> None:
    rel = releases(3)
    s = strategy()
    msgs = [reply(i + 1, 200, r) for i, r in enumerate(rel[:2])]
    arrays = objectives_to_arrays(rel[2])
    bad = reply(3, 200, None)
    mutate(arrays)
    if "has no" not in reason:
        bad.content[keys.FM_OBJECTIVES] = to_record(arrays)
    result, metrics = s.aggregate_train(1, [*msgs, bad])
    outcome = s.rounds[1].outcomes[2]
    assert outcome.status == "rejected" and reason in outcome.reason
    assert result is not None and metrics is not None and metrics["rejected"] == 1
    b = functional_noise_scale(SETTINGS, D, 1)
    expected = solve_summed([r[0] for r in rel[:2]], b)
    np.testing.assert_allclose(from_record(result)[FUNCTIONAL_HEAD][0], expected, rtol=1e-5)


def test_average_aggregation_and_other_modes_keep_weighted_fedavg() -> None:
    for settings in (
        dataclasses.replace(SETTINGS, privacy_functional_aggregation="average"),
        dataclasses.replace(SETTINGS, privacy_mode="dpsgd"),
    ):
        s = make_strategy(settings)
        assert isinstance(s, WeightedFedAvg) and not isinstance(s, ObjectiveFedAvg)


def test_objective_aggregation_with_a_flower_baseline_is_a_config_error() -> None:
    bad = dataclasses.replace(SETTINGS, aggregation_strategy="krum")
    with pytest.raises(ValueError, match="aggregation.strategy must be one of"):
        bad.validate()
    dataclasses.replace(bad, privacy_functional_aggregation="average").validate()
    with pytest.raises(ValueError, match="privacy.functional_aggregation must be one of"):
        dataclasses.replace(SETTINGS, privacy_functional_aggregation="median").validate()


@pytest.mark.parametrize("name", sorted(models_with("objective")))
def test_kinds_and_head_name_match_the_models(name: str) -> None:
    dataset, classes = ("wage", 0) if name == "linear" else ("adult", 2)
    shape = (2,) if name == "linear" else (7,)
    model = build_model(ModelSpec(name, shape, classes, 8, dataset))
    assert isinstance(model, FunctionalModel)
    assert model_info(name).objective == model.objective_kind
    assert FUNCTIONAL_HEAD in model.state_dict()


def test_softmax_head_is_solved_once_for_all_classes_from_the_summed_releases() -> None:
    """fm_network: one softmax release per client; the server sums them and solves once."""
    k, d = 4, 5
    settings = dataclasses.replace(SETTINGS, dataset_name="digits", model_name="fm_network")
    kind = head_kind("softmax")
    rng = np.random.default_rng(0)
    rel = []
    for i in range(3):
        x = rng.normal(size=(100, d))
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
        y = rng.integers(0, k, 100)
        targets = [(y == c).astype(float) for c in range(k)]
        rel.append(kind.release(x, targets, 1.0, "l2", make_noise_generator(i)))
    s = make_strategy(settings)
    assert isinstance(s, ObjectiveFedAvg) and s.kind is kind
    fixed = np.ones(3, np.float32)
    s.current = to_record({FUNCTIONAL_HEAD: np.zeros((k, d), np.float32), "fixed": fixed})
    msgs = []
    for i, r in enumerate(rel):
        weights = {FUNCTIONAL_HEAD: np.zeros((k, d), np.float32), "fixed": fixed}
        msg = trained(i + 1, 0.0, 100, weights=weights)
        msg.content[keys.FM_OBJECTIVES] = to_record(r)
        msgs.append(msg)
    bad = trained(
        4, 0.0, 100, weights={FUNCTIONAL_HEAD: np.zeros((k, d), np.float32), "fixed": fixed}
    )
    asym = {key: v.copy() for key, v in rel[0].items()}
    asym["gram"][0, 1] += 1.0
    bad.content[keys.FM_OBJECTIVES] = to_record(asym)
    arrays, _ = s.aggregate_train(1, [*msgs, bad])
    assert arrays is not None
    b = noise_scale_of(settings)(d, k)
    assert b == SoftmaxMechanism(1.0).noise_scale(d) == noise_scale_of(settings)(d, 2)
    expected = solve_softmax([SoftmaxStatistics.from_arrays(r) for r in rel], b)
    np.testing.assert_allclose(from_record(arrays)[FUNCTIONAL_HEAD], expected, rtol=1e-5, atol=1e-6)
    outcome = s.rounds[1].outcomes[3]
    assert outcome.status == "rejected" and "symmetric" in outcome.reason


def test_the_weighting_scores_each_head_from_the_expansion_point_every_round() -> None:
    """A scorer sees w_i - 0, the same every round, not w_i minus the server's solution."""
    rel = releases(3)
    s = strategy()
    seen = []
    inner = s.weighting

    def capture(r):
        seen.append([u[FUNCTIONAL_HEAD].copy() for u in r.updates])
        return inner(r)

    s.weighting = capture
    msgs = [reply(i + 1, 200, r, head_value=0.5 + i) for i, r in enumerate(rel)]
    s.aggregate_train(1, msgs)
    s.current = to_record(
        {FUNCTIONAL_HEAD: np.full((1, D), 9.0, np.float32), "fixed": np.ones(3, np.float32)}
    )
    s.aggregate_train(2, [reply(i + 1, 200, r, head_value=0.5 + i) for i, r in enumerate(rel)])
    for i in range(3):
        np.testing.assert_array_equal(seen[0][i], np.full((1, D), 0.5 + i, np.float32))
        np.testing.assert_array_equal(seen[1][i], seen[0][i])


def test_the_gaussian_ridge_reads_the_clients_sigma_in_laplace_units() -> None:
    """functional_noise=gaussian: the server's scale is the clients' sigma / sqrt 2, at delta."""
    d = 5
    laplace = dataclasses.replace(
        SETTINGS, dataset_name="digits", model_name="fm_network", privacy_delta=1e-5
    )
    gaussian = dataclasses.replace(laplace, privacy_functional_noise="gaussian")
    mech = SoftmaxGaussianMechanism(1.0, 1e-5)
    b = noise_scale_of(gaussian)(d, 10)
    assert b == pytest.approx(mech.sigma(d) / np.sqrt(2.0), rel=1e-12)
    assert b == noise_scale_of(gaussian)(2 * d, 3)  # L2 sensitivity: no d, no K
    assert b != noise_scale_of(laplace)(d, 10)
    looser = dataclasses.replace(gaussian, privacy_delta=1e-3)
    assert noise_scale_of(looser)(d, 10) < b  # the run's delta reaches the calibration


def test_a_noise_the_head_kind_cannot_release_is_refused_when_the_strategy_is_built() -> None:
    gaussian = dataclasses.replace(SETTINGS, privacy_functional_noise="gaussian")
    with pytest.raises(ValueError, match=r"privacy\.functional_noise must be one of \['laplace'\]"):
        noise_scale_of(gaussian)
