import functools
import math

import pytest
import torch
from pld_reference import reference_epsilon
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privacy import (
    DpSgdPlan,
    PrivacyLedger,
    make_generator,
    make_private,
    plan_dpsgd,
    planned_round_event,
    would_exceed,
)

DELTA = 1e-5
N, BATCH = 48, 16


def _plan_eps(plan: DpSgdPlan, steps: int) -> float:
    return reference_epsilon([(plan.noise_multiplier, plan.sample_rate, steps)], plan.delta)


@pytest.mark.parametrize(
    ("eps", "delta", "n", "batch", "epochs", "rounds"),
    [
        (1.0, 1e-5, 1000, 50, 1, 5),
        (4.0, 1e-5, 600, 32, 2, 3),
        (8.0, 1e-6, 100, 100, 1, 10),
        (0.5, 1e-3, 256, 64, 1, 2),
    ],
)
def test_calibration_lands_just_under_target(eps, delta, n, batch, epochs, rounds) -> None:
    plan = plan_dpsgd(
        target_epsilon=eps,
        delta=delta,
        n_train=n,
        batch_size=batch,
        local_epochs=epochs,
        rounds=rounds,
    )
    assert plan.sample_rate == 1 / math.ceil(n / batch)
    assert plan.steps_per_round == epochs * math.ceil(n / batch)
    assert plan.total_steps == plan.steps_per_round * rounds
    got = _plan_eps(plan, plan.total_steps)
    assert 0.98 * eps <= got <= eps


def test_batch_larger_than_data_clamps_rate() -> None:
    plan = plan_dpsgd(
        target_epsilon=2.0, delta=DELTA, n_train=10, batch_size=64, local_epochs=3, rounds=2
    )
    assert plan.sample_rate == 1.0
    assert plan.steps_per_round == 3


def test_following_plan_stays_within_budget() -> None:
    target = 2.0
    plan = plan_dpsgd(
        target_epsilon=target, delta=DELTA, n_train=500, batch_size=25, local_epochs=1, rounds=4
    )
    ledger = PrivacyLedger(delta=DELTA, accountant=plan.accountant)
    eps = []
    for rnd in range(1, plan.rounds + 1):
        ev = planned_round_event(plan, rnd)
        assert not would_exceed(ledger, ev, target)
        ledger.record(ev)
        eps.append(ledger.epsilon())
        assert eps[-1] <= target
    assert eps == sorted(eps) and eps[-1] > eps[0]
    assert would_exceed(ledger, planned_round_event(plan, plan.rounds + 1), target)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"target_epsilon": -1}, r"privacy\.target_epsilon must be > 0, got -1"),
        ({"target_epsilon": 0}, r"privacy\.target_epsilon must be > 0, got 0"),
        ({"delta": 2}, r"privacy\.delta must be in \(0, 1\), got 2"),
        ({"delta": 0}, r"privacy\.delta must be in \(0, 1\), got 0"),
        ({"batch_size": 0}, r"federation\.batch_size must be > 0, got 0"),
        ({"local_epochs": -2}, r"federation\.local_epochs must be > 0, got -2"),
        ({"rounds": 0}, r"federation\.rounds must be > 0, got 0"),
        ({"n_train": 0}, r"n_train must be > 0, got 0"),
        ({"accountant": "moments"}, r"privacy\.accountant .*got 'moments'"),
    ],
)
def test_plan_rejects_bad_inputs(kwargs, msg) -> None:
    args = {
        "target_epsilon": 1.0,
        "delta": DELTA,
        "n_train": 100,
        "batch_size": 10,
        "local_epochs": 1,
        "rounds": 1,
    } | kwargs
    with pytest.raises(ValueError, match=msg):
        plan_dpsgd(**args)


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(123)
    return TensorDataset(torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@functools.cache  # calibration costs seconds at q = 1/3; compute it once
def _plan() -> DpSgdPlan:
    return plan_dpsgd(
        target_epsilon=3.0, delta=DELTA, n_train=N, batch_size=BATCH, local_epochs=1, rounds=3
    )


def _train(seed: int | None, secure: bool = False, epochs: int = 1):
    model, plan = _model(), _plan()
    gen = make_generator(seed, secure=secure)
    private = make_private(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        data_loader=DataLoader(_data(), batch_size=BATCH),
        plan=plan,
        max_grad_norm=1.0,
        generator=gen,
        secure=secure,
    )
    for _ in range(epochs):
        for xb, yb in private.data_loader:
            private.optimizer.zero_grad()
            nn.functional.cross_entropy(private.module(xb), yb).backward()
            private.optimizer.step()
    return private, plan


def test_make_private_trains_and_reports_event() -> None:
    original_keys = set(_model().state_dict())
    private, plan = _train(seed=5)
    state = private.plain_state_dict()
    assert set(state) == original_keys
    assert not any(k.startswith("_module.") for k in state)
    ev = private.event(round=2)
    assert ev.steps == plan.steps_per_round > 0
    assert ev.noise_multiplier == plan.noise_multiplier
    assert ev.sample_rate == plan.sample_rate
    assert ev.round == 2
    assert ev == planned_round_event(plan, 2)


def test_same_seed_same_weights_different_seed_differs() -> None:
    a = _train(seed=11)[0].plain_state_dict()
    b = _train(seed=11)[0].plain_state_dict()
    c = _train(seed=12)[0].plain_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_global_rng_does_not_affect_result() -> None:
    torch.manual_seed(1)
    a = _train(seed=3)[0].plain_state_dict()
    torch.manual_seed(2)
    b = _train(seed=3)[0].plain_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_secure_mode_runs_and_is_not_reproducible() -> None:
    p1, _ = _train(seed=11, secure=True)
    p2, _ = _train(seed=11, secure=True)
    assert p1.optimizer.secure_mode is True
    a, b = p1.plain_state_dict(), p2.plain_state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert p1.event(1).steps > 0


@pytest.mark.parametrize("norm", [0.0, -1.0])
def test_make_private_rejects_bad_clip_norm(norm) -> None:
    model = _model()
    with pytest.raises(ValueError, match=rf"privacy\.max_grad_norm must be > 0, got {norm}"):
        make_private(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=BATCH),
            plan=_plan(),
            max_grad_norm=norm,
            generator=make_generator(0),
        )


def test_make_private_rejects_batchnorm() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="BatchNorm"):
        make_private(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=BATCH),
            plan=_plan(),
            max_grad_norm=1.0,
            generator=make_generator(0),
        )


def test_make_private_rejects_loader_not_matching_plan() -> None:
    model = _model()
    with pytest.raises(ValueError, match="sample rate"):
        make_private(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=8),
            plan=_plan(),
            max_grad_norm=1.0,
            generator=make_generator(0),
        )
