"""The end-of-run warning when no round aggregated any client update (experiments.run)."""

from pathlib import Path

import pandas as pd

from experiments.run import untrained_warning


def _tables(out: Path, kept: list[bool], reasons: list[str]) -> None:
    rounds = range(len(kept) + 1)
    pd.DataFrame({"round": list(rounds), "kept_previous_model": [None, *kept]}).to_csv(
        out / "metrics.csv", index=False
    )
    pd.DataFrame(
        {"round": [1] * len(reasons), "status": ["rejected"] * len(reasons), "reason": reasons}
    ).to_csv(out / "clients.csv", index=False)


def test_warns_with_the_commonest_reason_and_a_hint_for_nan(tmp_path: Path) -> None:
    nan = "parameter 'head.weight' has 2 NaN/Inf values"
    _tables(tmp_path, [True, True], [nan, nan, "reply has no 'arrays' record"])
    text = untrained_warning(tmp_path)
    assert text is not None
    assert "no round of 2 aggregated" in text
    assert f"(2 replies): {nan}" in text
    assert "federation.learning_rate" in text


def test_no_hint_for_other_reasons(tmp_path: Path) -> None:
    _tables(tmp_path, [True], ["reply has no 'arrays' record"])
    text = untrained_warning(tmp_path)
    assert text is not None and "learning_rate" not in text


def test_silent_when_some_round_aggregated_or_tables_missing(tmp_path: Path) -> None:
    assert untrained_warning(tmp_path) is None
    _tables(tmp_path, [True, False], ["x"])
    assert untrained_warning(tmp_path) is None
