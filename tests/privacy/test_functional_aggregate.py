"""Server-side sum of released functional-mechanism objectives (privacy/functional_aggregate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.functional import (
    FunctionalMechanism,
    QuadraticObjective,
    default_ridge,
    make_noise_generator,
    minimise,
    objectives_from_arrays,
    objectives_to_arrays,
    solve_summed,
    sum_objectives,
    summed_noise_ridge,
)


def unit_records(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    x[:, -1] = 1.0  # an intercept-like coordinate
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0) * 0.99


def logistic_data(
    rng: np.random.Generator, n: int, d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = unit_records(rng, n, d)
    w_true = rng.normal(0, 3, d)
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ w_true))).astype(np.float64)
    return x, y, w_true


@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_sum_of_client_objectives_is_the_objective_of_the_union(kind: str) -> None:
    rng = np.random.default_rng(0)
    x, y, _ = logistic_data(rng, 600, 5)
    if kind == "linear":
        y = np.clip(x @ rng.normal(size=5) * 0.3, -1, 1)
    mech = FunctionalMechanism(1.0, kind=kind, bound="l2")
    parts = np.array_split(rng.permutation(len(y)), 4)
    clients = [mech.objective(x[p], y[p]) for p in parts]
    total = sum_objectives(clients)
    union = mech.objective(x, y)
    np.testing.assert_allclose(total.coefficients(), union.coefficients(), rtol=1e-12, atol=1e-9)
    for _ in range(5):  # and, as a function of w, the sum of the clients' values
        w = rng.normal(size=5)
        assert total.value(w) == pytest.approx(sum(o.value(w) for o in clients), rel=1e-12)


def test_weighted_sum_scales_each_objective() -> None:
    rng = np.random.default_rng(1)
    objs = [
        QuadraticObjective(rng.normal(size=3), (lambda a: a @ a.T)(rng.normal(size=(3, 3))), 2.0)
        for _ in range(3)
    ]
    a = np.array([1.0, 0.5, 0.0])
    total = sum_objectives(objs, a)
    expected = sum(ai * o.coefficients() for ai, o in zip(a, objs, strict=True))
    np.testing.assert_allclose(total.coefficients(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="weights must be 3 finite numbers >= 0"):
        sum_objectives(objs, [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="share one dimension"):
        sum_objectives([objs[0], QuadraticObjective(np.zeros(2), np.eye(2))])


def test_release_arrays_round_trip_and_reject_malformed() -> None:
    rng = np.random.default_rng(2)
    mech = FunctionalMechanism(1.0, kind="logistic", bound="l2")
    x, y, _ = logistic_data(rng, 100, 4)
    noisy = [mech.perturb(mech.objective(x, t), make_noise_generator(3)) for t in (y, 1 - y)]
    arrays = objectives_to_arrays(noisy)
    assert {k: v.shape for k, v in arrays.items()} == {"alpha": (2, 4), "M": (2, 4, 4), "c": (2,)}
    back = objectives_from_arrays(arrays)
    for a, b in zip(noisy, back, strict=True):
        np.testing.assert_array_equal(a.coefficients(), b.coefficients())
    bad = dict(arrays, M=arrays["M"].copy())
    bad["M"][0, 0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        objectives_from_arrays(bad)
    with pytest.raises(ValueError, match="missing \\['c'\\]"):
        objectives_from_arrays({"alpha": arrays["alpha"], "M": arrays["M"]})
    with pytest.raises(ValueError, match="needs M of shape"):
        objectives_from_arrays(dict(arrays, M=arrays["M"][:, :3, :3]))


def test_ridge_of_one_client_is_the_default_and_grows_like_sqrt_k() -> None:
    mech = FunctionalMechanism(0.5, kind="logistic", bound="l2")
    d = 9
    b = mech.noise_scale(d)
    assert summed_noise_ridge(b, d, [1.0]) == pytest.approx(default_ridge(mech, d))
    assert summed_noise_ridge(b, d, np.ones(10)) == pytest.approx(
        math.sqrt(10) * default_ridge(mech, d)
    )


@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_summed_solution_converges_to_the_non_private_one(kind: str) -> None:
    rng = np.random.default_rng(4)
    d = 5
    x, y, _ = logistic_data(rng, 4000, d)
    if kind == "linear":
        y = np.clip(x @ rng.normal(size=d) * 0.5 + 0.05 * rng.normal(size=len(y)), -1, 1)
    parts = np.array_split(rng.permutation(len(y)), 8)
    exact = minimise(sum_objectives([FunctionalMechanism(1.0, kind).objective(x, y)]))
    errors = []
    for eps in (0.1, 1.0, 10.0, 1e3, 1e6):
        mech = FunctionalMechanism(eps, kind=kind, bound="l2")
        gen = make_noise_generator(5)
        released = [mech.perturb(mech.objective(x[p], y[p]), gen) for p in parts]
        w = solve_summed(released, mech.noise_scale(d))
        errors.append(float(np.linalg.norm(w - exact)))
    assert errors[-1] < 1e-4 * max(1.0, float(np.linalg.norm(exact)))
    assert errors[-1] < errors[2] < errors[0]


def test_summing_objectives_beats_averaging_minimisers() -> None:
    """The reason for objective aggregation: at the same epsilon, the sum is closer to exact."""
    rng = np.random.default_rng(6)
    d, k = 6, 10
    x, y, _ = logistic_data(rng, 10_000, d)
    parts = np.array_split(rng.permutation(len(y)), k)
    mech = FunctionalMechanism(1.0, kind="logistic", bound="l2")
    exact = minimise(mech.objective(x, y))
    b = mech.noise_scale(d)
    summed, averaged = [], []
    for seed in range(10):
        gen = make_noise_generator(seed)
        released = [mech.perturb(mech.objective(x[p], y[p]), gen) for p in parts]
        summed.append(np.linalg.norm(solve_summed(released, b) - exact))
        own = [minimise(o, ridge=default_ridge(mech, d)) for o in released]
        averaged.append(np.linalg.norm(np.mean(own, axis=0) - exact))
    assert np.mean(summed) < 0.75 * np.mean(averaged)
