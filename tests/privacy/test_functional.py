import json
import math

import numpy as np
import pytest

from privacy import PrivacyLedger, PureDpEvent
from privacy.functional import (
    OBJECTIVES,
    FeatureBounds,
    FunctionalMechanism,
    PublicFeatureNetwork,
    QuadraticObjective,
    TargetBounds,
    fit_private,
    gradient_steps,
    linear_regression_objective,
    linear_sensitivity,
    linear_sensitivity_l2,
    logistic_regression_objective,
    logistic_sensitivity,
    logistic_sensitivity_l2,
    make_noise_generator,
    minimise,
    stabilise,
)

BUILDERS = {"linear": linear_regression_objective, "logistic": logistic_regression_objective}


def _bounds(d: int, *, intercept: bool = False, rows: str = "scale") -> FeatureBounds:
    lower = -np.arange(1, d + 1, dtype=float)
    upper = 2.0 * np.arange(1, d + 1, dtype=float)
    names = tuple(f"f{j}" for j in range(d))
    return FeatureBounds(lower, upper, names, intercept=intercept, rows=rows)


def _records(rng: np.random.Generator, bounds: FeatureBounds, n: int) -> np.ndarray:
    """Normalised records: random raw values (many clipped), corners and the ball's boundary."""
    k = len(bounds.names)
    raw = rng.normal(0.0, 3.0, size=(n, k)) * bounds.upper
    corner = rng.random((n, k)) < 0.5
    extreme = rng.random(n) < 0.4
    raw[extreme] = np.where(corner, bounds.lower, bounds.upper)[extreme]
    return bounds.normalise(raw)


def _labels(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    if kind == "logistic":
        return rng.integers(0, 2, size=n).astype(float)
    y = rng.uniform(-1.0, 1.0, size=n)
    y[rng.random(n) < 0.5] = rng.choice([-1.0, 1.0])
    return y


def _adversarial_pairs(d: int, kind: str):
    """Records on the boundary that move many coefficients in opposite directions."""
    u = np.ones(d) / math.sqrt(d)
    v = np.where(np.arange(d) % 2 == 0, 1.0, -1.0) / math.sqrt(d)
    labels = (0.0, 1.0) if kind == "logistic" else (-1.0, 1.0)
    for a in (u, -u, v):
        for b in (u, -u, v, -v, np.zeros(d)):
            for ya in labels:
                for yb in labels:
                    yield a, ya, b, yb


def _distance(kind, x, y, i, x_new, y_new) -> float:
    build = BUILDERS[kind]
    x2, y2 = x.copy(), y.copy()
    x2[i], y2[i] = x_new, y_new
    released = np.abs(build(x, y).released_coefficients() - build(x2, y2).released_coefficients())
    return float(released.sum())


# ------------------------------------------------------------------ sensitivity
@pytest.mark.parametrize("kind", ["linear", "logistic"])
@pytest.mark.parametrize("d", [1, 2, 5, 13])
def test_sensitivity_bounds_hold_on_neighbouring_datasets(kind: str, d: int) -> None:
    rng = np.random.default_rng(d)
    paper = FunctionalMechanism(1.0, kind).sensitivity(d)
    tight = FunctionalMechanism(1.0, kind, bound="l2").sensitivity(d)
    assert tight <= paper
    worst = 0.0
    for trial in range(2000):
        bounds = _bounds(d - 1, intercept=True) if d > 1 and trial % 2 else _bounds(d)
        if trial % 3 == 0:
            bounds = FeatureBounds(
                bounds.lower, bounds.upper, bounds.names, bounds.intercept, "project"
            )
        x = _records(rng, bounds, 8)
        y = _labels(rng, kind, 8)
        new = _records(rng, bounds, 1)[0]
        worst = max(worst, _distance(kind, x, y, trial % 8, new, _labels(rng, kind, 1)[0]))
    x0 = _records(rng, _bounds(d), 4)
    y0 = _labels(rng, kind, 4)
    for a, ya, b, yb in _adversarial_pairs(d, kind):
        x0[0], y0[0] = a, ya
        worst = max(worst, _distance(kind, x0, y0, 0, b, yb))
    assert worst <= tight + 1e-9 <= paper + 1e-9
    # Tight-ish: the adversarial pairs reach a fair share of the exact-norm bound, so a
    # wildly wrong Delta (or a coefficient missing from the vector) would show.
    assert worst >= 0.35 * tight


def test_sensitivity_formulas() -> None:
    assert linear_sensitivity(3) == 2 * 16
    assert logistic_sensitivity(4) == 4 + 12
    assert linear_sensitivity_l2(4) == pytest.approx(2 * (2 * 2 + 4))
    assert logistic_sensitivity_l2(4) == pytest.approx(2 + 1)
    for d in range(1, 50):
        assert linear_sensitivity_l2(d) <= linear_sensitivity(d)
        assert logistic_sensitivity_l2(d) <= logistic_sensitivity(d)
    with pytest.raises(ValueError, match="got 0"):
        linear_sensitivity(0)


def test_objectives_are_the_stated_polynomials() -> None:
    rng = np.random.default_rng(0)
    x = _records(rng, _bounds(4, intercept=True), 50)
    y = rng.uniform(-1, 1, 50)
    w = rng.normal(size=5)
    lin = linear_regression_objective(x, y)
    assert lin.value(w) == pytest.approx(np.sum((y - x @ w) ** 2))
    labels = rng.integers(0, 2, 50)
    log = logistic_regression_objective(x, labels)
    z = x @ w
    taylor = np.sum(math.log(2) + z / 2 + z**2 / 8 - labels * z)
    assert log.value(w) == pytest.approx(taylor)
    small = 1e-2 * w
    exact = np.sum(np.log1p(np.exp(x @ small)) - labels * (x @ small))
    assert log.value(small) == pytest.approx(exact, rel=1e-5)
    # coefficient vector round trip, including 2*M_jk for the off-diagonal monomials
    coef = log.coefficients()
    assert len(coef) == QuadraticObjective.num_coefficients(5) == 1 + 5 + 15
    assert coef[1 + 2 * 5] == pytest.approx(2 * log.M[0, 1])
    back = QuadraticObjective.from_coefficients(coef, 5)
    np.testing.assert_allclose(back.M, log.M)
    np.testing.assert_allclose(back.alpha, log.alpha)
    # the release leaves the constant out: same minimiser, c = 0
    released = QuadraticObjective.from_released(log.released_coefficients(), 5)
    np.testing.assert_array_equal(log.released_coefficients(), coef[1:])
    assert released.c == 0.0 and log.c == pytest.approx(50 * math.log(2))
    np.testing.assert_allclose(minimise(released), minimise(log))


def test_objectives_reject_unnormalised_records() -> None:
    with pytest.raises(ValueError, match=r"\|\|x\|\|_2 <= 1"):
        linear_regression_objective(np.ones((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        linear_regression_objective(np.full((3, 2), 0.5), np.array([0.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        logistic_regression_objective(np.full((3, 2), 0.5), np.array([0, 1, 2]))


# ------------------------------------------------------------------ noise
@pytest.mark.parametrize(
    "kind,bound", [("linear", "paper"), ("logistic", "paper"), ("logistic", "l2")]
)
def test_noise_is_laplace_with_scale_delta_over_epsilon(kind: str, bound: str) -> None:
    d, eps, draws = 3, 2.0, 5000
    mech = FunctionalMechanism(eps, kind, bound=bound)
    b = mech.sensitivity(d) / eps
    assert mech.noise_scale(d) == b
    zero = QuadraticObjective(np.zeros(d), np.zeros((d, d)))
    gen = make_noise_generator(1)
    released = [mech.perturb(zero, gen) for _ in range(draws)]
    assert all(r.c == 0.0 for r in released)  # the constant is not released
    noise = np.stack([r.released_coefficients() for r in released])
    assert noise.shape == (draws, 9)
    # snapped (Mironov 2012): every coefficient lies on the power-of-two grid, and the grid's
    # rounding costs at most 1.5% of the scale
    snapped = mech.snapped(d, 9)
    assert np.all(noise / snapped.gamma == np.rint(noise / snapped.gamma))
    assert b <= snapped.noise_scale <= 1.015 * b
    b = snapped.noise_scale
    # every released monomial coefficient (alpha, M_jj and 2 M_jk) carries Laplace(b): var 2 b^2
    assert noise.var() == pytest.approx(2 * b**2, rel=0.04)
    assert np.abs(noise).mean() == pytest.approx(b, rel=0.03)  # E|Laplace(b)| = b, not 1/b
    assert np.abs(noise.mean()) < 0.05 * b
    per_coef = noise.var(axis=0) / (2 * b**2)
    assert np.all((per_coef > 0.85) & (per_coef < 1.15))


def test_perturb_keeps_m_symmetric_and_needs_an_integer_source() -> None:
    mech = FunctionalMechanism(0.5, "linear")
    rng = np.random.default_rng(0)
    x = _records(rng, _bounds(4), 30)
    noisy = mech.perturb(mech.objective(x, rng.uniform(-1, 1, 30)), make_noise_generator(0))
    np.testing.assert_array_equal(noisy.M, noisy.M.T)
    with pytest.raises(TypeError, match="integer source"):
        mech.perturb(noisy, rng)  # type: ignore[arg-type]


def test_mechanism_validates_settings() -> None:
    with pytest.raises(ValueError, match=r"privacy\.epsilon must be > 0, got -1"):
        FunctionalMechanism(-1, "linear")
    with pytest.raises(ValueError, match=r"privacy\.epsilon must be a finite number > 0"):
        FunctionalMechanism(float("inf"), "linear")
    with pytest.raises(ValueError, match=r"privacy\.functional_kind must be one of .*'svm'"):
        FunctionalMechanism(1.0, "svm")
    with pytest.raises(ValueError, match=r"privacy\.functional_bound must be one of"):
        FunctionalMechanism(1.0, "linear", bound="loose")
    assert set(OBJECTIVES) >= {"linear", "logistic"}


def test_noise_generator() -> None:
    def draw(source) -> list[int]:
        return [source.randbelow(2**62) for _ in range(4)]

    a = draw(make_noise_generator(3))
    assert a == draw(make_noise_generator(3))
    s1 = draw(make_noise_generator(None, secure=True))
    s2 = draw(make_noise_generator(3, secure=True))  # secure ignores the seed
    assert s1 != s2 and s2 != a
    assert make_noise_generator(3, secure=True).secret and not make_noise_generator(3).secret
    with pytest.raises(ValueError, match=r"privacy\.seed must be set .*got None"):
        make_noise_generator(None)
    with pytest.raises(ValueError, match="got -2"):
        make_noise_generator(-2)


# ------------------------------------------------------------------ minimisers
def _regression_data(rng: np.random.Generator, n: int = 4000, d: int = 4):
    bounds = _bounds(d, intercept=True)
    raw = rng.uniform(bounds.lower, bounds.upper, size=(n, d))
    z = bounds.normalise(raw)
    w_true = rng.normal(size=d + 1)
    y = np.clip(z @ w_true + rng.normal(0, 0.05, n), -1, 1)
    return z, y


@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_private_minimiser_converges_to_non_private_as_epsilon_grows(kind: str) -> None:
    rng = np.random.default_rng(0)
    z, y = _regression_data(rng)
    if kind == "logistic":
        y = (y > np.median(y)).astype(float)
    exact = BUILDERS[kind](z, y)
    w_star = minimise(exact)
    dists = []
    for eps in (0.1, 1.0, 10.0, 100.0, 1e4):
        mech = FunctionalMechanism(eps, kind)
        runs = [
            np.linalg.norm(minimise(mech.perturb(exact, make_noise_generator(s))) - w_star)
            for s in range(10)
        ]
        dists.append(float(np.median(runs)))
    assert all(a > b for a, b in zip(dists, dists[1:], strict=False)), dists
    assert dists[-1] < 0.01 * np.linalg.norm(w_star)


def test_noise_drawn_once_and_reused_across_rounds() -> None:
    rng = np.random.default_rng(2)
    z, y = _regression_data(rng, n=500)
    mech = FunctionalMechanism(2.0, "linear")
    noisy = mech.perturb(mech.objective(z, y), make_noise_generator(7))
    saved = json.loads(json.dumps(noisy.to_dict()))
    restored = QuadraticObjective.from_dict(saved)
    np.testing.assert_array_equal(restored.coefficients(), noisy.coefficients())
    assert restored.value(np.ones(5)) == noisy.value(np.ones(5))
    # two "rounds" from different global weights minimise the same stabilised objective
    ridge = 5.0
    stable = stabilise(restored, ridge=ridge)
    target = minimise(restored, ridge=ridge)
    w_a = gradient_steps(stable, np.zeros(5), steps=3000)
    w_b = gradient_steps(stable, rng.normal(0, 10, 5), steps=3000)
    np.testing.assert_allclose(w_a, target, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(w_b, target, rtol=1e-6, atol=1e-8)
    assert stable.value(target) <= stable.value(w_a) + 1e-9
    with pytest.raises(ValueError, match="missing 'M'"):
        QuadraticObjective.from_dict({"alpha": [1.0]})


def test_minimise_is_finite_when_noise_makes_m_indefinite() -> None:
    rng = np.random.default_rng(3)
    z, y = _regression_data(rng, n=50, d=6)
    indefinite = 0
    for kind in ("linear", "logistic"):
        labels = y if kind == "linear" else (y > 0).astype(float)
        mech = FunctionalMechanism(1e-3, kind)
        exact = mech.objective(z, labels)
        for s in range(50):
            noisy = mech.perturb(exact, make_noise_generator(s))
            indefinite += np.linalg.eigvalsh(noisy.M)[0] < 0
            for ridge in (0.0, 1.0):
                w = minimise(noisy, ridge=ridge)
                assert w.shape == (7,) and np.isfinite(w).all()
                # the trimmed objective is bounded below and w is its minimiser
                st = stabilise(noisy, ridge=ridge)
                assert np.linalg.eigvalsh(st.M)[0] > 0
                assert np.allclose(st.gradient(w), 0, atol=1e-6 * (1 + np.abs(st.alpha).max()))
    assert indefinite > 50
    noisy = mech.perturb(exact, make_noise_generator(0))
    with pytest.raises(ValueError, match="unbounded below"):
        minimise(noisy, trim=False)
    with pytest.raises(ValueError, match="convex"):
        gradient_steps(noisy, np.zeros(7))
    zero = QuadraticObjective(np.zeros(2), np.zeros((2, 2)))
    np.testing.assert_array_equal(minimise(zero), np.zeros(2))


def test_fit_private_linear_with_target_bounds() -> None:
    rng = np.random.default_rng(4)
    bounds = _bounds(3, intercept=True)
    raw = rng.uniform(bounds.lower, bounds.upper, size=(5000, 3))
    target = TargetBounds(0.0, 100.0, "price")
    y = 50 + 10 * bounds.normalise(raw)[:, 0] + rng.normal(0, 1, 5000)
    w, noisy = fit_private(
        raw,
        y,
        kind="linear",
        epsilon=1e4,
        bounds=bounds,
        generator=make_noise_generator(0),
        target_bounds=target,
    )
    assert noisy.dim == 4
    pred = target.denormalise(bounds.normalise(raw) @ w)
    assert np.sqrt(np.mean((pred - y) ** 2)) < 1.5
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        fit_private(
            raw, y, kind="linear", epsilon=1.0, bounds=bounds, generator=make_noise_generator(0)
        )
    with pytest.raises(ValueError, match="target 'price' contains NaN"):
        target.normalise([np.nan])


# ------------------------------------------------------------------ normalisation
@pytest.mark.parametrize("rows", ["scale", "project"])
@pytest.mark.parametrize("intercept", [False, True])
def test_normalise_rows_in_unit_ball(rows: str, intercept: bool) -> None:
    bounds = _bounds(6, intercept=intercept, rows=rows)
    rng = np.random.default_rng(5)
    raw = rng.normal(0, 100, size=(2000, 6))
    raw[:10] = bounds.upper
    raw[10:20] = bounds.lower
    raw[20, 0] = np.inf
    z = bounds.normalise(raw)
    assert z.shape == (2000, bounds.dim)
    assert np.linalg.norm(z, axis=1).max() <= 1.0
    assert np.abs(z).max() <= 1.0
    if intercept and rows == "scale":
        np.testing.assert_allclose(z[:, -1], 1 / math.sqrt(7))
    # per record: a row's image does not depend on the other rows
    np.testing.assert_array_equal(bounds.normalise(raw[:1]), z[:1])


def test_normalise_names_bad_columns() -> None:
    bounds = FeatureBounds(np.array([0.0, 0.0]), np.array([1.0, 5.0]), ("age", "hours"))
    with pytest.raises(ValueError, match="column 'hours' contains NaN"):
        bounds.normalise(np.array([[0.5, np.nan], [0.2, 1.0]]))
    with pytest.raises(ValueError, match="column 'hours' is constant"):
        FeatureBounds(np.array([0.0, 3.0]), np.array([1.0, 3.0]), ("age", "hours"))
    with pytest.raises(ValueError, match="column 'age'.*lower < upper"):
        FeatureBounds(np.array([2.0, 0.0]), np.array([1.0, 3.0]), ("age", "hours"))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        bounds.normalise(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="bounds.rows"):
        FeatureBounds(np.array([0.0]), np.array([1.0]), ("a",), rows="sphere")  # type: ignore[arg-type]


# ------------------------------------------------------------------ neural network mode
def _blobs(rng: np.random.Generator, n: int, classes: int):
    centres = rng.uniform(-3, 3, size=(classes, 2))
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(0, 0.6, size=(n, 2))
    # a non-linear binary task for K=2: inside vs outside a ring
    if classes == 2:
        x = rng.uniform(-4, 4, size=(n, 2))
        y = (np.linalg.norm(x, axis=1) < 2.5).astype(np.int64)
    return x, y


def test_public_feature_network_features_bounded() -> None:
    bounds = FeatureBounds(np.array([-4.0, -4.0]), np.array([4.0, 4.0]), ("a", "b"))
    net = PublicFeatureNetwork(bounds, hidden=32, seed=1)
    feats = net.features(np.random.default_rng(0).normal(0, 50, size=(1000, 2)))
    assert feats.shape == (1000, 33) and net.feature_dim == 33
    assert np.linalg.norm(feats, axis=1).max() <= 1.0
    same = PublicFeatureNetwork(bounds, hidden=32, seed=1)
    np.testing.assert_array_equal(same.hidden_weights, net.hidden_weights)  # public config
    with pytest.raises(ValueError, match="not fitted"):
        net.predict(np.zeros((1, 2)))


@pytest.mark.parametrize("classes", [2, 4])
def test_public_feature_network_learns_privately(classes: int) -> None:
    rng = np.random.default_rng(classes)
    x, y = _blobs(rng, 20000, classes)
    bounds = FeatureBounds(np.array([-4.0, -4.0]), np.array([4.0, 4.0]), ("a", "b"))
    net = PublicFeatureNetwork(bounds, hidden=32, seed=0)
    net.fit_private(x, y, epsilon=1e4, generator=make_noise_generator(0), num_classes=classes)
    acc = float((net.predict(x) == y).mean())
    chance = max(np.bincount(y)) / len(y)
    assert acc > chance + 0.1, (acc, chance)
    assert net.event(3) == PureDpEvent(1e4, 3)
    assert len(net.objectives) == (1 if classes == 2 else classes)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        net.fit_private(x, y + 1, epsilon=1.0, generator=make_noise_generator(0))


def test_events_compose_in_ledger() -> None:
    mech = FunctionalMechanism(0.7, "logistic")
    assert mech.event() == PureDpEvent(0.7)
    assert mech.event(round=2) == PureDpEvent(0.7, round=2)
    ledger = PrivacyLedger(delta=1e-5, events=[mech.event(0), FunctionalMechanism(0.3).event(1)])
    assert ledger.epsilon() == pytest.approx(1.0)
    back = PrivacyLedger.from_json(ledger.to_json())
    assert back.epsilon() == pytest.approx(1.0)
