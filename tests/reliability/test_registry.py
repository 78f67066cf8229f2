import numpy as np
import pytest
from reliability_cases import attacked_round

from reliability import SCORERS, ReliabilityWeighting, RoundInput, Scores, make_scorer
from reliability import register_scorer as register


def test_unknown_scorer_lists_known_names() -> None:
    with pytest.raises(ValueError) as info:
        make_scorer("krumm")
    msg = str(info.value)
    assert msg.startswith("aggregation.scorer must be one of [")
    assert msg.endswith("got 'krumm'")
    for name in ("fltrust", "median_agreement", "uniform"):
        assert repr(name) in msg


def test_bad_parameters_name_the_scorer() -> None:
    with pytest.raises(ValueError, match=r"aggregation\.scorer='uniform' does not accept"):
        make_scorer("uniform", temperature=2.0)


def test_custom_scorer_is_found_and_used() -> None:
    @register("last_client_only")
    class LastOnly:
        name = "last_client_only"
        needs_server_data = False
        privacy_note = "Reads nothing; no privacy cost."

        def __init__(self, boost: float = 1.0) -> None:
            self.boost = boost

        def score(self, r: RoundInput) -> Scores:
            s = np.zeros(len(r))
            s[-1] = self.boost
            return Scores(s, r.updates)

    try:
        scorer = make_scorer("last_client_only", boost=3.0)
        assert isinstance(scorer, LastOnly) and scorer.boost == 3.0
        weights, _, _ = ReliabilityWeighting(scorer)(attacked_round(0))
        assert weights[-1] == 1.0 and weights[:-1].sum() == 0.0
        with pytest.raises(ValueError, match="already registered"):
            register("last_client_only")(LastOnly)
    finally:
        SCORERS.pop("last_client_only", None)
    assert "last_client_only" not in SCORERS
