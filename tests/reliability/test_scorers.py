import numpy as np
import pytest
from reliability_cases import N_HONEST, attacked_round, direction, flat, non_iid_round

from reliability import (
    ReliabilityWeighting,
    RoundInput,
    Scores,
    make_scorer,
)

ROBUST = [
    ("fltrust", {}),
    ("median_agreement", {}),
    ("median_agreement", {"metric": "cosine"}),
    ("output_agreement", {}),
    ("output_agreement", {"center": "mean", "layers": 0}),
]


@pytest.mark.parametrize(("name", "params"), ROBUST)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrupted_clients_weigh_less_than_every_honest_one(name, params, seed) -> None:
    r = attacked_round(seed, server=name == "fltrust")
    weights, _, details = ReliabilityWeighting(make_scorer(name, **params))(r)
    honest, corrupted = weights[:N_HONEST], weights[N_HONEST:]
    assert corrupted.max() < honest.min(), (details["score"], weights)
    assert corrupted.sum() < 0.05
    assert weights.sum() == pytest.approx(1.0)


def test_robust_aggregate_follows_true_direction_and_fedavg_does_not() -> None:
    r = attacked_round(3)
    true = direction(3)

    def aggregate(name: str) -> np.ndarray:
        weights, updates, _ = ReliabilityWeighting(make_scorer(name))(r)
        return sum(a * flat(u) for a, u in zip(weights, updates, strict=True))

    def cos(v: np.ndarray) -> float:
        return float(v @ true / np.linalg.norm(v))

    assert cos(aggregate("fltrust")) > 0.95
    assert cos(aggregate("median_agreement")) > 0.95
    assert cos(aggregate("uniform")) < 0.8


def test_uniform_scores_are_equal_and_weights_follow_examples() -> None:
    r = attacked_round(0)
    scorer = make_scorer("uniform")
    result = scorer.score(r)
    np.testing.assert_array_equal(result.scores, np.ones(len(r)))
    assert result.updates is r.updates
    weights, _, _ = ReliabilityWeighting(scorer)(r)
    counts = np.asarray(r.num_examples, dtype=float)
    np.testing.assert_allclose(weights, counts / counts.sum())


@pytest.mark.parametrize(("name", "params"), ROBUST)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_honest_non_iid_clients_stay_close_to_uniform(name, params, seed) -> None:
    r = non_iid_round(seed, n=10, bias=0.5)
    weights, _, _ = ReliabilityWeighting(make_scorer(name, **params), use_examples=False)(r)
    n = len(r)
    assert np.all(weights > 0.5 / n) and np.all(weights < 2.0 / n), weights
    assert np.mean(np.abs(weights - 1 / n)) < 0.25 / n


@pytest.mark.parametrize("norm", ["server", "median"])
def test_fltrust_negative_cosine_gets_zero_trust_and_rescales_to_one_norm(norm) -> None:
    r = attacked_round(0)
    result = make_scorer("fltrust", norm=norm).score(r)
    assert result.details["cosine"][8] < 0
    assert result.scores[8] == 0.0
    assert result.scores[10] == 0.0  # zero update: cosine 0
    assert np.all(result.scores[:N_HONEST] > 0.8)
    if norm == "server":
        target = np.linalg.norm(flat(r.server_update))
    else:
        target = np.median([np.linalg.norm(flat(u)) for u in r.updates])
        assert target > 2 * np.linalg.norm(flat(r.server_update)) or target > 0
    for i, u in enumerate(result.updates[:10]):
        assert np.linalg.norm(flat(u)) == pytest.approx(target, rel=1e-5), i
        assert all(u[k].dtype == np.float32 for k in u)
        # direction is kept
        before = flat(r.updates[i])
        assert flat(u) @ before > 0
    np.testing.assert_array_equal(flat(result.updates[10]), 0.0)


def test_fltrust_median_norm_is_robust_to_a_minority_of_huge_updates() -> None:
    r = attacked_round(0)
    huge = tuple(
        {k: v * (1000 if i >= 9 else 1) for k, v in u.items()} for i, u in enumerate(r.updates)
    )
    big = RoundInput(r.round, r.client_ids, huge, r.num_examples, r.server_update)
    a = make_scorer("fltrust").score(r).updates
    b = make_scorer("fltrust").score(big).updates
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(flat(u), flat(v), rtol=1e-4, atol=1e-6)


def test_fltrust_norm_none_keeps_updates_and_bad_norm_is_rejected() -> None:
    r = attacked_round(0)
    assert make_scorer("fltrust", norm="none").score(r).updates is r.updates
    with pytest.raises(ValueError, match=r"reliability\.fltrust\.norm must be one of .*got 'l2'"):
        make_scorer("fltrust", norm="l2")


def test_output_agreement_reads_only_the_output_layers() -> None:
    r = attacked_round(0, server=False)
    # corrupt client 0 in the first array only: the output-layer score must not see it
    bent = list(r.updates)
    bent[0] = {**bent[0], "fc.weight": -50 * bent[0]["fc.weight"]}
    r2 = RoundInput(r.round, r.client_ids, tuple(bent), r.num_examples)
    a = make_scorer("output_agreement").score(r).scores
    b = make_scorer("output_agreement").score(r2).scores
    np.testing.assert_allclose(a, b)
    assert make_scorer("output_agreement", layers=0).score(r2).scores[0] < a[0] / 2


def test_output_agreement_leaves_the_client_out_of_its_centre() -> None:
    # two clients: each one's centre is the other's update
    u = ({"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 1.0])})
    scores = make_scorer("output_agreement").score(RoundInput(1, (0, 1), u, (1, 1))).scores
    np.testing.assert_allclose(scores, 0.0)
    one = make_scorer("output_agreement").score(RoundInput(1, (0,), u[:1], (1,)))
    np.testing.assert_array_equal(one.scores, [0.0])


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"layers": -1}, r"reliability\.output_agreement\.layers must be an int >= 0, got -1"),
        ({"center": "mode"}, r"reliability\.output_agreement\.center must be one of"),
    ],
)
def test_output_agreement_rejects_bad_params(params, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_scorer("output_agreement", **params)


def test_fltrust_without_server_update_raises() -> None:
    r = attacked_round(0, server=False)
    msg = (
        r"aggregation\.scorer='fltrust' needs server data "
        r"\(aggregation\.server_data_size > 0\), got none"
    )
    with pytest.raises(ValueError, match=msg):
        make_scorer("fltrust").score(r)
    assert make_scorer("fltrust").needs_server_data is True
    assert make_scorer("median_agreement").needs_server_data is False


def test_fltrust_zero_server_update_trusts_nobody() -> None:
    r = attacked_round(0)
    zero = {k: np.zeros_like(v) for k, v in r.server_update.items()}
    r0 = RoundInput(r.round, r.client_ids, r.updates, r.num_examples, zero)
    weights, _, details = ReliabilityWeighting(make_scorer("fltrust"))(r0)
    np.testing.assert_array_equal(details["score"], 0.0)
    np.testing.assert_array_equal(weights, 0.0)


def test_median_agreement_is_scale_free() -> None:
    r = attacked_round(5, server=False)
    scaled = RoundInput(
        r.round,
        r.client_ids,
        tuple({k: v * 1000 for k, v in u.items()} for u in r.updates),
        r.num_examples,
    )
    scorer = make_scorer("median_agreement")
    np.testing.assert_allclose(scorer.score(r).scores, scorer.score(scaled).scores, rtol=1e-5)
    details = scorer.score(r).details
    assert set(details) == {"dissimilarity", "relative"}
    assert np.median(details["relative"]) == pytest.approx(1.0)


def test_median_agreement_cosine_rejects_opposed_update() -> None:
    result = make_scorer("median_agreement", metric="cosine").score(attacked_round(0))
    assert result.scores[8] == 0.0


def test_scorers_handle_an_empty_round_and_identical_updates() -> None:
    empty = RoundInput(1, (), (), (), server_update={"w": np.ones(3)})
    for name in ("uniform", "fltrust", "median_agreement", "output_agreement"):
        assert make_scorer(name).score(empty).scores.shape == (0,)
    same = RoundInput(1, (0, 1, 2), ({"w": np.ones(3)},) * 3, (5, 5, 5))
    np.testing.assert_allclose(make_scorer("median_agreement").score(same).scores, 1.0)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"metric": "l1"}, r"reliability\.median_agreement\.metric must be one of .*got 'l1'"),
        ({"temperature": 0}, r"reliability\.median_agreement\.temperature must be > 0, got 0"),
    ],
)
def test_median_agreement_rejects_bad_params(params, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_scorer("median_agreement", **params)


def test_every_scorer_has_a_privacy_note() -> None:
    for name in ("uniform", "fltrust", "median_agreement", "output_agreement"):
        note = make_scorer(name).privacy_note
        assert "privacy" in note and note.endswith(".")


def test_round_input_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 client ids, 1 updates"):
        RoundInput(1, (0, 1), ({"w": np.ones(1)},), (1, 1))
    with pytest.raises(ValueError, match="unique"):
        RoundInput(1, (0, 0), ({"w": np.ones(1)},) * 2, (1, 1))
    assert isinstance(Scores(np.ones(1), ()).details, dict)
