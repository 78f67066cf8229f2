import json

import numpy as np
import pytest
from reliability_cases import attacked_round

from reliability import ReliabilityWeighting, Reputation, aggregation_weights, make_scorer


def test_persistent_bad_client_loses_reputation_every_round() -> None:
    rep = Reputation(decay=0.5, initial=1.0)
    history = [float(rep.update([7], [0.05])[0]) for _ in range(5)]
    assert all(b < a for a, b in zip(history, history[1:], strict=False))
    assert history[-1] < 0.1


def test_honest_client_recovers_from_one_bad_round() -> None:
    rep = Reputation(decay=0.5)
    for _ in range(3):
        rep.update([1], [1.0])
    before = rep[1]
    assert rep.update([1], [0.0])[0] < 0.6 * before
    after = [float(rep.update([1], [1.0])[0]) for _ in range(3)]
    assert after[-1] > 0.9 * before
    assert after == sorted(after)


def test_new_client_starts_at_first_score_or_prior() -> None:
    assert Reputation(decay=0.5).update([3], [0.2])[0] == pytest.approx(0.2)
    assert Reputation(decay=0.5, initial=1.0).update([3], [0.2])[0] == pytest.approx(0.6)


def test_absent_client_keeps_its_reputation() -> None:
    rep = Reputation(decay=0.5)
    rep.update([0, 1], [1.0, 0.5])
    rep.update([0], [0.0])
    assert rep[1] == pytest.approx(0.5)
    assert rep[0] == pytest.approx(0.5)
    assert 2 not in rep


@pytest.mark.parametrize("decay", [1.5, 1.0, -0.1, float("nan"), True, "0.5"])
def test_invalid_decay_names_the_setting(decay) -> None:
    with pytest.raises(ValueError, match=r"aggregation\.decay must be in \[0, 1\), got"):
        Reputation(decay=decay)
    with pytest.raises(ValueError, match=r"aggregation\.decay"):
        ReliabilityWeighting(make_scorer("uniform"), decay=decay)


def test_reputation_rejects_bad_scores() -> None:
    rep = Reputation()
    with pytest.raises(ValueError, match="finite and >= 0"):
        rep.update([0, 1], [1.0, float("nan")])
    with pytest.raises(ValueError, match="one value per client"):
        rep.update([0, 1], [1.0])
    with pytest.raises(ValueError, match="unique"):
        rep.update([0, 0], [1.0, 1.0])


def test_reputation_round_trips_through_json() -> None:
    rep = Reputation(decay=0.3, initial=1.0)
    rep.update([0, 5, 12], [0.9, 0.1, 0.5])
    rep.update([5], [0.2])
    state = json.loads(json.dumps(rep.to_dict()))
    again = Reputation.from_dict(state)
    assert again.to_dict() == rep.to_dict()
    np.testing.assert_allclose(again.update([5, 12], [1.0, 1.0]), rep.update([5, 12], [1.0, 1.0]))


def test_aggregation_weights_normalise_and_never_nan() -> None:
    w = aggregation_weights(np.array([1.0, 0.5, 0.0]), [100, 200, 300])
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0])
    assert w.sum() == pytest.approx(1.0)
    w = aggregation_weights(np.array([1.0, 0.5]), [100, 300], use_examples=False)
    np.testing.assert_allclose(w, [2 / 3, 1 / 3])
    tiny = aggregation_weights(np.array([1e-300, 1e-300]), [1, 1])
    assert not np.any(np.isnan(tiny)) and tiny.sum() == pytest.approx(1.0)


def test_aggregation_weights_all_zero_gives_zeros() -> None:
    w = aggregation_weights(np.zeros(3), [10, 20, 30])
    np.testing.assert_array_equal(w, np.zeros(3))
    assert aggregation_weights(np.zeros(0), []).shape == (0,)


def test_aggregation_weights_threshold_zeroes_low_reputations() -> None:
    w = aggregation_weights(np.array([0.9, 0.2, 0.6]), [1, 1, 1], threshold=0.5)
    assert w[1] == 0.0
    np.testing.assert_allclose(w, [0.6, 0.0, 0.4])
    assert aggregation_weights(np.array([0.1, 0.2]), [1, 1], threshold=0.5).sum() == 0.0
    with pytest.raises(ValueError, match=r"aggregation\.threshold must be .* got -1"):
        aggregation_weights(np.ones(2), [1, 1], threshold=-1)


def test_relative_threshold_excludes_below_a_share_of_the_median() -> None:
    rep = np.array([0.05, 0.04, 0.002, 0.06, 0.0])  # median 0.04
    w = aggregation_weights(rep, [1] * 5, relative_threshold=0.5)
    np.testing.assert_allclose(w, np.array([0.05, 0.04, 0.0, 0.06, 0.0]) / 0.15)
    # scale-free: the same clients are kept whatever the scorer's scale
    w2 = aggregation_weights(rep * 1000, [1] * 5, relative_threshold=0.5)
    np.testing.assert_allclose(w, w2)
    # the absolute threshold still applies on top
    w3 = aggregation_weights(rep, [1] * 5, relative_threshold=0.5, threshold=0.045)
    assert np.flatnonzero(w3).tolist() == [0, 3]
    msg = r"aggregation\.relative_threshold must be in \[0, 1\], got 2"
    with pytest.raises(ValueError, match=msg):
        aggregation_weights(rep, [1] * 5, relative_threshold=2)


def test_by_reputation_false_weighs_kept_clients_by_examples_only() -> None:
    rep = np.array([0.05, 0.01, 0.002, 0.06, 0.0])
    w = aggregation_weights(
        rep, [100, 200, 300, 400, 500], relative_threshold=0.5, by_reputation=False
    )
    np.testing.assert_allclose(w, np.array([100, 200, 0, 400, 0]) / 700)
    with pytest.raises(ValueError, match=r"aggregation\.by_reputation must be a bool"):
        ReliabilityWeighting(make_scorer("uniform"), by_reputation=1)  # type: ignore[arg-type]


def test_aggregation_weights_rejects_mismatched_or_bad_inputs() -> None:
    with pytest.raises(ValueError, match="one value per client"):
        aggregation_weights(np.ones(3), [1, 2])
    with pytest.raises(ValueError, match="finite and >= 0"):
        aggregation_weights(np.array([1.0, np.nan]), [1, 2])


@pytest.mark.parametrize("name", ["fltrust", "median_agreement", "output_agreement"])
def test_persistent_attacker_falls_below_half_uniform_weight_by_round_3(name) -> None:
    weighting = ReliabilityWeighting(make_scorer(name), decay=0.5, initial=1.0)
    for rnd in (1, 2, 3):
        r = attacked_round(seed=4, rnd=rnd)
        weights, updates, details = weighting(r)
        assert len(updates) == len(r)
        assert {"score", "reputation", "weight"} <= set(details)
        n = len(r)
    assert max(weights[8:]) < 1 / (2 * n)
    assert min(weights[:8]) > 1 / (2 * n)


def test_state_dict_round_trip_and_scorer_mismatch() -> None:
    a = ReliabilityWeighting(make_scorer("median_agreement"), decay=0.5)
    a(attacked_round(0, rnd=1, server=False))
    state = json.loads(json.dumps(a.state_dict()))
    b = ReliabilityWeighting(make_scorer("median_agreement"), decay=0.5)
    b.load_state_dict(state)
    r2 = attacked_round(0, rnd=2, server=False)
    np.testing.assert_allclose(a(r2)[0], b(r2)[0])
    c = ReliabilityWeighting(make_scorer("uniform"))
    with pytest.raises(ValueError, match="checkpoint is 'median_agreement'"):
        c.load_state_dict(state)


def test_weighting_rejects_a_scorer_with_bad_scores() -> None:
    class Broken:
        name = "broken"
        needs_server_data = False
        privacy_note = "Reads nothing; no privacy cost."

        def score(self, r):
            from reliability import Scores

            return Scores(np.full(len(r), -1.0), r.updates)

    with pytest.raises(ValueError, match="scores of aggregation.scorer='broken'"):
        ReliabilityWeighting(Broken())(attacked_round(0))
