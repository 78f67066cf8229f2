"""Inference-privacy mechanisms: privacy loss at distance alpha, fresh draws, composition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privacy.inference import (
    OutputLaplace,
    QueryBudget,
    QueryLimitError,
    analytic_gaussian_sigma,
    basic_composition,
    gaussian_composed_epsilon,
    gaussian_delta,
    input_key,
    lipschitz_bound,
    make_mechanism,
)
from tasks.models import ModelSpec, build_model

EPS, DELTA, ALPHA = 1.0, 1e-3, 0.5
DRAWS = 100_000


def worst_pair() -> tuple[torch.nn.Module, np.ndarray, np.ndarray, float]:
    """A model and two inputs at distance alpha along its steepest direction at x."""
    model = build_model(ModelSpec("mlp", (6,), 3, hidden=16), seed=7).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # a steeper model: a larger bound, a larger shift
    x = torch.full((6,), 0.3)
    jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x)
    direction = torch.linalg.svd(jac).Vh[0]
    x2 = x + ALPHA * direction
    bound = lipschitz_bound(model, (6,)).bound
    return model, x.numpy(), x2.numpy(), bound


def scores(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)[None])[0].double().numpy()


def histogram_delta(a: np.ndarray, b: np.ndarray, eps: float, bins: int = 40) -> float:
    """sum over bins of max(0, P(bin) - e^eps Q(bin)): an estimate of delta at eps."""
    edges = np.quantile(np.concatenate([a, b]), np.linspace(0, 1, bins + 1))
    p = np.histogram(a, edges)[0] / len(a)
    q = np.histogram(b, edges)[0] / len(b)
    return float(np.maximum(0.0, p - math.exp(eps) * q).sum())


def test_output_gaussian_histogram_and_likelihood_ratio_within_epsilon_delta() -> None:
    model, x, x2, bound = worst_pair()
    mech = make_mechanism(
        "output_gaussian", epsilon=EPS, delta=DELTA, radius=ALPHA, lipschitz=bound, outputs=3
    )
    f1, f2 = scores(model, x), scores(model, x2)
    shift = float(np.linalg.norm(f1 - f2))
    assert 0 < shift <= mech.sensitivity
    y1 = mech.release(np.tile(f1, (DRAWS, 1)))
    y2 = mech.release(np.tile(f2, (DRAWS, 1)))
    u = (f1 - f2) / shift  # the likelihood ratio depends on the output only through u . y
    for a, b in ((y1 @ u, y2 @ u), (y2 @ u, y1 @ u)):
        assert histogram_delta(a, b, EPS) <= DELTA + 0.01
    # likelihood ratio: privacy loss L = log p(y|x)/p(y|x'); delta = E_p[(1 - e^(eps - L))_+]
    s2 = mech.noise_scale**2
    loss = (np.sum((y1 - f2) ** 2, axis=1) - np.sum((y1 - f1) ** 2, axis=1)) / (2 * s2)
    delta_hat = np.maximum(0.0, 1 - np.exp(EPS - loss))
    assert delta_hat.mean() <= DELTA + 4 * delta_hat.std() / math.sqrt(DRAWS)
    # the same estimator flags noise calibrated for delta 0.1 at this shift (so it can fail)
    weak = analytic_gaussian_sigma(EPS, 0.1, shift) / mech.noise_scale
    w1 = f1 + (mech.release(np.tile(f1, (DRAWS, 1))) - f1) * weak
    w2 = f2 + (mech.release(np.tile(f2, (DRAWS, 1))) - f2) * weak
    assert histogram_delta(w1 @ u, w2 @ u, EPS) > 0.05


def test_output_laplace_privacy_loss_never_exceeds_epsilon() -> None:
    model, x, x2, bound = worst_pair()
    mech = make_mechanism(
        "output_laplace", epsilon=EPS, delta=0.0, radius=ALPHA, lipschitz=bound, outputs=3
    )
    f1, f2 = scores(model, x), scores(model, x2)
    assert np.abs(f1 - f2).sum() <= mech.sensitivity
    y = mech.release(np.tile(f1, (20_000, 1)))
    assert isinstance(mech, OutputLaplace)
    snap = mech.snapped
    r1, r2 = np.rint(f1 / snap.gamma), np.rint(f2 / snap.gamma)
    t = snap.integer_sensitivity / EPS  # discrete Laplace: P(z) ~ exp(-|z| / t)
    z = y / snap.gamma
    loss = (np.abs(z - r2).sum(axis=1) - np.abs(z - r1).sum(axis=1)) / t
    assert loss.max() <= EPS + 1e-9
    assert loss.max() > 0.2 * EPS  # the pair is a real test, not two identical outputs


def test_input_gaussian_class_histograms_within_epsilon_delta() -> None:
    model, x, x2, _ = worst_pair()
    mech = make_mechanism("input_gaussian", epsilon=EPS, delta=DELTA, radius=ALPHA)
    n = 40_000
    with torch.no_grad():
        c1 = model(torch.as_tensor(mech.release(np.tile(x, (n, 1))), dtype=torch.float32)).argmax(1)
        c2 = model(torch.as_tensor(mech.release(np.tile(x2, (n, 1))), dtype=torch.float32)).argmax(
            1
        )
    p = np.bincount(c1.numpy(), minlength=3) / n
    q = np.bincount(c2.numpy(), minlength=3) / n
    tol = 4 * math.sqrt(0.25 / n) * (1 + math.e)
    assert np.all(p <= math.exp(EPS) * q + DELTA + tol)
    assert np.all(q <= math.exp(EPS) * p + DELTA + tol)
    noise = mech.release(np.zeros((n, 6)))
    assert noise.std() == pytest.approx(mech.noise_scale, rel=0.02)


def test_every_release_draws_fresh_noise() -> None:
    mech = make_mechanism(
        "output_gaussian", epsilon=1.0, delta=1e-5, radius=0.5, lipschitz=1.0, outputs=4
    )
    a, b = mech.release(np.zeros((2, 4))), mech.release(np.zeros((2, 4)))
    assert not np.allclose(a, b) and not np.allclose(a[0], a[1])
    lap = make_mechanism(
        "output_laplace", epsilon=1.0, delta=0, radius=0.5, lipschitz=1.0, outputs=4
    )
    assert not np.allclose(lap.release(np.zeros(4)), lap.release(np.zeros(4)))


def test_repeated_queries_compose() -> None:
    mech = make_mechanism(
        "output_gaussian", epsilon=1.0, delta=1e-5, radius=0.5, lipschitz=2.0, outputs=3
    )
    assert basic_composition(1.0, 1e-5, 5) == (5.0, pytest.approx(5e-5))
    # k Gaussian releases are a Gaussian mechanism of sensitivity sqrt(k) D: never worse
    # than basic composition, equal to one query at k = 1
    one = gaussian_composed_epsilon(mech.noise_scale, mech.sensitivity, 1, 1e-5)
    assert one == pytest.approx(1.0, rel=1e-6)
    five = gaussian_composed_epsilon(mech.noise_scale, mech.sensitivity, 5, 5e-5)
    assert 1.0 < five < 5.0
    assert gaussian_delta(mech.noise_scale, five, math.sqrt(5) * mech.sensitivity) <= 5e-5
    # averaging k answers shrinks the noise by sqrt(k): why the epsilons must add up
    answers = np.stack([mech.release(np.zeros((4000, 3))) for _ in range(9)])
    assert answers.mean(axis=0).std() == pytest.approx(mech.noise_scale / 3, rel=0.05)


def test_query_budget_caps_and_persists(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mech = make_mechanism("input_gaussian", epsilon=0.5, delta=1e-6, radius=1.0)
    path = tmp_path / "queries.json"
    budget = QueryBudget(mech, max_queries=3, path=path)
    key = input_key(np.array([0.1, 0.2]))
    assert key == input_key(np.array([0.1, 0.2])) and key != input_key(np.array([0.1, 0.3]))
    budget.charge([key, key])
    assert budget.spent(key) == (1.0, pytest.approx(2e-6))
    restarted = QueryBudget(mech, max_queries=3, path=path)  # a restart keeps the counts
    restarted.charge([key])
    with pytest.raises(QueryLimitError, match="max_queries=3 per input reached"):
        restarted.charge([key])
    assert restarted.counts[key] == 3  # the refused query was not counted
    other = make_mechanism("input_gaussian", epsilon=2.0, delta=1e-6, radius=1.0)
    with pytest.raises(ValueError, match="was written for mechanism"):
        QueryBudget(other, path=path)
