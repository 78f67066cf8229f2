"""One contract over every registered reliability scorer (as dp_accounting tests each
accountant): a scorer added by one ``register_scorer`` call is held to the same rules.
"""

from __future__ import annotations

import numpy as np
import pytest
from reliability_cases import N_HONEST, SHAPES, attacked_round

from reliability import SCORERS, ReliabilityWeighting, make_scorer


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_every_scorer_keeps_the_contract(name: str) -> None:
    scorer = make_scorer(name)
    assert isinstance(scorer.needs_server_data, bool)
    assert isinstance(scorer.privacy_note, str) and scorer.privacy_note  # what it reads, said
    r = attacked_round(seed=3, server=scorer.needs_server_data)
    out = scorer.score(r)
    assert out.scores.shape == (len(r),)
    assert np.isfinite(out.scores).all() and (out.scores >= 0).all()
    assert len(out.updates) == len(r)
    for update in out.updates:  # same arrays, same shapes, finite
        assert set(update) == set(SHAPES)
        for key, shape in SHAPES.items():
            assert update[key].shape == shape and np.isfinite(update[key]).all()
    for key, values in out.details.items():
        assert len(values) == len(r), key
    # the same input gives the same verdict (no hidden randomness)
    np.testing.assert_array_equal(scorer.score(r).scores, out.scores)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_every_scorer_weights_sum_to_one_through_the_weighting(name: str) -> None:
    scorer = make_scorer(name)
    weighting = ReliabilityWeighting(scorer)
    r = attacked_round(seed=4, server=scorer.needs_server_data)
    weights, updates, _ = weighting(r)
    assert weights.shape == (len(r),) and (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0) or weights.sum() == 0
    assert len(updates) == len(r)
    if name != "uniform":  # a scorer that looks at the updates puts the honest majority first
        assert weights[:N_HONEST].sum() > weights[N_HONEST:].sum()
