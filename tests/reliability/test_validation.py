import numpy as np
import pytest

from reliability import validate_count, validate_update

REF = {
    "fc.weight": np.zeros((4, 3), dtype=np.float32),
    "fc.bias": np.zeros(4, dtype=np.float32),
}


def good() -> dict[str, np.ndarray]:
    return {k: np.ones_like(v) for k, v in REF.items()}


def test_good_update_passes() -> None:
    assert validate_update(good(), REF) is None
    # other float precision is the same kind: accepted (the caller casts)
    assert validate_update({k: v.astype(np.float64) for k, v in good().items()}, REF) is None


def test_nan_and_inf_are_counted() -> None:
    w = good()
    w["fc.weight"][0, :3] = np.nan
    assert validate_update(w, REF) == "parameter 'fc.weight' has 3 NaN/Inf values"
    w = good()
    w["fc.bias"][1] = -np.inf
    assert validate_update(w, REF) == "parameter 'fc.bias' has 1 NaN/Inf values"


def test_wrong_shape() -> None:
    w = good()
    w["fc.weight"] = np.ones((3, 4), dtype=np.float32)
    reason = validate_update(w, REF)
    assert reason is not None and "'fc.weight'" in reason and "(3, 4)" in reason


def test_missing_and_extra_keys() -> None:
    w = good()
    del w["fc.bias"]
    reason = validate_update(w, REF)
    assert reason is not None and "missing" in reason and "'fc.bias'" in reason
    w = good()
    w["evil"] = np.ones(2, dtype=np.float32)
    reason = validate_update(w, REF)
    assert reason is not None and "unexpected" in reason and "'evil'" in reason


def test_int_dtype_against_float_reference() -> None:
    w = good()
    w["fc.bias"] = np.ones(4, dtype=np.int64)
    reason = validate_update(w, REF)
    assert reason is not None and "'fc.bias'" in reason and "int64" in reason


def test_non_array_and_non_mapping() -> None:
    w: dict = good()
    w["fc.bias"] = [1.0] * 4
    reason = validate_update(w, REF)
    assert reason is not None and "'fc.bias'" in reason and "not a numpy array" in reason
    assert "got list" in str(validate_update([1, 2], REF))  # type: ignore[arg-type]


def test_integer_reference_buffers_need_integer_updates() -> None:
    ref = {"steps": np.zeros((), dtype=np.int64)}
    assert validate_update({"steps": np.array(3, dtype=np.int32)}, ref) is None
    assert "'steps'" in str(validate_update({"steps": np.array(3.0)}, ref))


@pytest.mark.parametrize("n", [1, 404, np.int64(7), 12.0])
def test_valid_counts(n) -> None:
    assert validate_count(n) is None


@pytest.mark.parametrize("n", [0, -3, 2.5, float("nan"), float("inf"), True, "10", None])
def test_invalid_counts(n) -> None:
    reason = validate_count(n)
    assert reason is not None and repr(n) in reason
