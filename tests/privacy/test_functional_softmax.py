"""The softmax expansion released once for all classes (privacy/functional/softmax.py, heads.py)."""

import math

import numpy as np
import pytest
import torch

from privacy.functional import (
    HEAD_KINDS,
    SoftmaxMechanism,
    SoftmaxStatistics,
    head_kind,
    make_noise_generator,
    softmax_ridge,
    softmax_sensitivity,
    softmax_sensitivity_l2,
    solve_softmax,
)


def _ball(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Rows in the L2 unit ball: random directions, many on the sphere, some sparse/equal-entry."""
    x = rng.normal(size=(n, d))
    x[rng.random(n) < 0.3] = np.sign(rng.normal(size=(1, d)))  # equal |x_j|: max ||x||_1
    x[rng.random(n) < 0.2, : max(1, d // 2)] = 0.0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    radius = np.where(rng.random((n, 1)) < 0.6, 1.0, rng.random((n, 1)))
    return x / np.maximum(norms, 1e-12) * radius


def _released(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    return SoftmaxStatistics.from_records(x, y, k).released()


@pytest.mark.parametrize(("d", "k"), [(1, 2), (3, 10), (8, 3), (17, 10), (30, 26)])
def test_sensitivity_holds_on_random_and_adversarial_neighbouring_datasets(d: int, k: int) -> None:
    rng = np.random.default_rng(d * 100 + k)
    delta_1, delta_2 = softmax_sensitivity(d), softmax_sensitivity_l2(d)
    changed = SoftmaxStatistics.num_released(2, d)
    worst_1 = worst_2 = 0.0
    for trial in range(1500):
        n = 1 + trial % 9
        x = _ball(rng, n, d)
        y = rng.integers(0, k, n)
        i = trial % n
        x2, y2 = x.copy(), y.copy()
        x2[i] = _ball(rng, 1, d)[0] if trial % 4 else -x[i] * (0.5 if trial % 8 else 1.0)
        y2[i] = y[i] if trial % 3 == 0 else rng.integers(0, k)
        diff = _released(x, y, k) - _released(x2, y2, k)
        worst_1 = max(worst_1, float(np.abs(diff).sum()))
        worst_2 = max(worst_2, float(np.linalg.norm(diff)))
        # the grid's rounding is paid for the coordinates that can change only: 2 rows + triu(S)
        assert np.count_nonzero(diff) <= changed
    # adversarial pairs: equal-entry unit rows (||x||_1 = sqrt d) swapped for their negatives,
    # class changed; and x' = -x/2 in the same class (the L2 worst case t = -1/2)
    u = np.ones(d) / math.sqrt(d)
    base = _ball(rng, 4, d)
    for a, b, ya, yb in [(u, -u, 0, 1), (u, -u, 0, 0), (u, -u / 2, 0, 0), (u, u, 0, 1)]:
        x, y = base.copy(), np.array([ya, 1, 0, 1 % k])
        x2, y2 = x.copy(), y.copy()
        x[0], x2[0], y2[0] = a, b, yb
        diff = _released(x, y, k) - _released(x2, y2, k)
        worst_1 = max(worst_1, float(np.abs(diff).sum()))
        worst_2 = max(worst_2, float(np.linalg.norm(diff)))
    assert worst_1 <= delta_1 + 1e-9
    assert worst_2 <= delta_2 + 1e-9
    # tight enough that a missing coefficient or a wrong formula would show
    assert worst_1 >= 0.55 * delta_1
    assert worst_2 >= 0.9 * delta_2


def test_sensitivity_formulas_do_not_grow_with_the_classes() -> None:
    assert softmax_sensitivity(16) == pytest.approx(2 * 4 + 16 + 1)
    assert softmax_sensitivity_l2(16) == softmax_sensitivity_l2(1) == pytest.approx(3 / 2**0.5)
    with pytest.raises(ValueError, match="got 0"):
        softmax_sensitivity(0)


def test_noise_scale_does_not_depend_on_the_number_of_classes() -> None:
    mech = SoftmaxMechanism(1.0)
    scales = {mech.snapped(k, 17).noise_scale for k in (2, 3, 10, 100, 1000)}
    assert len(scales) == 1
    (scale,) = scales
    assert softmax_sensitivity(17) <= scale <= 1.03 * softmax_sensitivity(17)
    kind = head_kind("softmax")
    assert {kind.noise_scale(1.0, "l2", 17, k) for k in (2, 10, 100)} == {mech.noise_scale(17)}
    # the one-vs-rest heads it replaces: K releases at epsilon / K, K times the noise
    ovr = head_kind("logistic")
    assert ovr.noise_scale(1.0, "l2", 17, 10) == pytest.approx(
        10 * ovr.noise_scale(1.0, "l2", 17, 1)
    )


def test_release_is_the_upper_triangle_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    x, y = _ball(rng, 50, 5), rng.integers(0, 4, 50)
    stats = SoftmaxStatistics.from_records(x, y, 4)
    vec = stats.released()
    assert vec.size == 4 * 5 + 15 == SoftmaxStatistics.num_released(4, 5)
    back = SoftmaxStatistics.from_released(vec, 4, 5)
    np.testing.assert_array_equal(back.gram, stats.gram)
    np.testing.assert_array_equal(back.class_sums, stats.class_sums)
    noisy = SoftmaxMechanism(1.0).perturb(stats, make_noise_generator(3))
    np.testing.assert_array_equal(noisy.gram, noisy.gram.T)
    assert not np.allclose(noisy.gram, stats.gram)
    with pytest.raises(ValueError, match="length 35, got 34"):
        SoftmaxStatistics.from_released(vec[:-1], 4, 5)
    with pytest.raises(ValueError, match="symmetric"):
        SoftmaxStatistics(stats.class_sums, stats.gram + np.triu(np.ones((5, 5)), 1))
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        SoftmaxStatistics.from_records(x, y + 1, 4)
    with pytest.raises(ValueError, match=r"\|\|x\|\|_2 <= 1"):
        SoftmaxStatistics.from_records(2 * np.ones((3, 5)), np.zeros(3, int), 4)


def test_expansion_is_the_softmax_cross_entropy_to_second_order() -> None:
    rng = np.random.default_rng(1)
    x, y = _ball(rng, 300, 6), rng.integers(0, 5, 300)
    stats = SoftmaxStatistics.from_records(x, y, 5)
    for scale in (1e-2, 1e-3):
        w = scale * rng.normal(size=(5, 6))
        logits = torch.tensor(x @ w.T)
        ce = torch.nn.functional.cross_entropy(logits, torch.tensor(y), reduction="sum")
        exact = float(ce) - 300 * math.log(5)
        assert stats.value(w) == pytest.approx(exact, rel=50 * scale, abs=1e-9)


def test_minimiser_is_the_least_squares_classifier_and_zeroes_the_gradient() -> None:
    rng = np.random.default_rng(2)
    x, y = _ball(rng, 400, 7), rng.integers(0, 3, 400)
    stats = SoftmaxStatistics.from_records(x, y, 3)
    w = stats.minimiser()
    for _ in range(20):  # a minimum: no direction goes down
        assert stats.value(w + 1e-3 * rng.normal(size=w.shape)) >= stats.value(w) - 1e-12
    onehot = np.eye(3)[y]
    ls = np.linalg.lstsq(x, onehot, rcond=None)[0].T  # least squares on one-hot targets
    np.testing.assert_array_equal((x @ w.T).argmax(1), (x @ ls.T).argmax(1))


def test_local_gradient_steps_converge_to_the_minimiser() -> None:
    rng = np.random.default_rng(3)
    x, y = _ball(rng, 500, 5), rng.integers(0, 4, 500)
    kind = head_kind("softmax")
    arrays = kind.release(
        x, [(y == k).astype(float) for k in range(4)], 4.0, "l2", make_noise_generator(5)
    )
    exact = kind.local_head(arrays, 4.0, "l2", np.zeros((4, 5)), 0)
    steps = kind.local_head(arrays, 4.0, "l2", np.zeros((4, 5)), 3000)
    centred = steps - steps.mean(axis=0, keepdims=True)
    np.testing.assert_allclose(centred, exact, rtol=1e-4, atol=1e-6)
    assert kind.loss(arrays, exact) <= kind.loss(arrays, 0.5 * exact)


def test_federated_sum_of_releases_learns_a_separable_problem() -> None:
    rng = np.random.default_rng(4)
    k, d, n = 10, 11, 20_000
    centres = rng.normal(size=(k, d - 1))
    y = rng.integers(0, k, n)
    raw = centres[y] + 0.3 * rng.normal(size=(n, d - 1))
    x = np.hstack([np.tanh(raw), np.ones((n, 1))]) / math.sqrt(d)
    mech = SoftmaxMechanism(1.0)
    parts = np.array_split(np.arange(n), 10)
    releases = [
        mech.perturb(SoftmaxStatistics.from_records(x[p], y[p], k), make_noise_generator(i))
        for i, p in enumerate(parts)
    ]
    w = solve_softmax(releases, mech.noise_scale(d))
    acc = float(((x @ w.T).argmax(1) == y).mean())
    w0 = SoftmaxStatistics.from_records(x, y, k).minimiser()
    ceiling = float(((x @ w0.T).argmax(1) == y).mean())
    assert acc >= ceiling - 0.02 and ceiling > 0.9
    # weights scale each client's release; ridge is calibrated to the weighted noise
    assert softmax_ridge(2.0, 4, [1.0, 1.0]) == pytest.approx(2.0 * math.sqrt(8))
    with pytest.raises(ValueError, match="weights must be 10 finite numbers >= 0"):
        solve_softmax(releases, 1.0, -np.ones(10))


def test_every_registered_head_kind_releases_checks_and_solves() -> None:
    rng = np.random.default_rng(6)
    x, y = _ball(rng, 200, 4), rng.integers(0, 2, 200)
    for name, kind in HEAD_KINDS.items():
        targets = (
            [(y == 1).astype(float)] if name != "softmax" else [(y == c) * 1.0 for c in (0, 1)]
        )
        if name == "linear":
            targets = [np.where(y == 1, 1.0, -1.0)]
        arrays = kind.release(x, targets, 1.0, "l2", make_noise_generator(1))
        outputs = len(targets)
        assert {k: v.shape for k, v in arrays.items()} == kind.shapes(outputs, 4)
        kind.check(arrays)
        head = kind.solve([arrays, arrays], kind.noise_scale(1.0, "l2", 4, outputs), np.ones(2))
        assert head.shape == (outputs, 4) and np.isfinite(head).all()
    with pytest.raises(ValueError, match="must be one of"):
        head_kind("probit")
