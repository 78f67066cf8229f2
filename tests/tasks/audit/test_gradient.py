"""Dirac gradient canaries (tasks.audit.gradient): the mechanism they enter, the server's attack."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from privacy import make_generator, make_private
from privacy.audit import audit_scores
from privacy.dpsgd import DpSgdPlan
from tasks.audit import make_gradient_canaries, whitebox_gradient
from tasks.audit.attacks import AttackView
from tasks.audit.gradient import install
from tasks.models import get_weights
from tasks.training.loops import make_loader, train_epochs

N, B, LR, CLIP = 256, 64, 0.5, 1.0


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10))


def _train(noise: float, coins: np.ndarray, m: int, epochs: int = 5) -> tuple[AttackView, list]:
    """One client, one round of DP-SGD over zero inputs (no weight gradient of its own)."""
    model = _model()
    canaries = make_gradient_canaries(model, m, seed=3)
    start = get_weights(model)
    x = np.zeros((N, 16), dtype=np.float32)
    y = np.random.default_rng(0).integers(0, 10, N).astype(np.int64)
    gen = make_generator(1)
    plan = DpSgdPlan(1.0, 1e-5, B / N, N // B, 1, noise, "pld")
    private = make_private(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR),
        data_loader=make_loader(x, y, B, gen),
        plan=plan,
        max_grad_norm=CLIP,
        generator=gen,
    )
    drawn = install(private.optimizer, canaries, coins, CLIP, plan.sample_rate, make_generator(2))
    train_epochs(
        private.module,
        private.data_loader,
        private.optimizer,
        epochs,
        torch.device("cpu"),
        empty_step=private.empty_step,
        reduce=private.loss,
    )
    after = {k: v.numpy().copy() for k, v in private.plain_state_dict().items()}
    return AttackView(_model, [start], [after], after, dirac=canaries), drawn


def test_canaries_are_public_distinct_coordinates() -> None:
    a, b = make_gradient_canaries(_model(), 200, 0), make_gradient_canaries(_model(), 200, 0)
    assert np.array_equal(a.index, b.index) and len(np.unique(a.index)) == 200
    assert a.sizes == (512, 32, 320, 10) and a.index.max() < sum(a.sizes)
    with pytest.raises(ValueError, match="audit.canaries must be at most the model's 874"):
        make_gradient_canaries(_model(), 875, 0)


def test_without_noise_the_server_reads_every_drawn_coin() -> None:
    """Noise 0 (no privacy): each canary moves its coordinate by exactly -lr (+-C) draws / B."""
    m = 300
    coins = np.random.default_rng(5).random(m) < 0.5
    view, drawn = _train(0.0, coins, m)
    assert len(drawn) == 5 * N // B  # one draw per noised step
    assert abs(np.mean(drawn) / m - B / N) < 0.05  # each slot in a step with probability q
    scores = whitebox_gradient(view)
    assert view.dirac is not None
    first = view.dirac.index < 16 * 32  # zero inputs: the data leaves the first weights alone
    s = scores[first]
    draws = np.rint(np.abs(s) * B / (LR * CLIP))
    assert first.sum() > 100 and np.allclose(np.abs(s), draws * LR * CLIP / B, atol=1e-6)
    seen = draws > 0
    assert seen.mean() > 0.9 and np.all((s[seen] > 0) == coins[first][seen])
    bound = audit_scores(scores, coins, 0.95, 0.0).epsilon_lower_bound
    assert bound > 3.0  # no privacy: a large lower bound


def test_with_noise_the_scores_stay_noisy() -> None:
    m = 300
    coins = np.random.default_rng(6).random(m) < 0.5
    view, _ = _train(20.0, coins, m)
    scores = whitebox_gradient(view)
    assert 0.3 < np.mean((scores > 0) == coins) < 0.75
    bound = audit_scores(scores, coins, 0.95, 1e-5).epsilon_lower_bound
    assert bound < 1.0


def test_other_clients_updates_centre_the_scores_without_coins() -> None:
    coins = np.random.default_rng(7).random(300) < 0.5
    view, _ = _train(0.0, coins, 300)
    rng = np.random.default_rng(8)
    shared = {k: rng.normal(0, 1.0, v.shape) for k, v in view.global_weights[0].items()}
    moved = dataclasses.replace(  # a data drift every client's update shares
        view,
        client_weights=[{k: v + shared[k] for k, v in view.client_weights[0].items()}],
        others=[[{k: v + shared[k] for k, v in view.global_weights[0].items()}]],
    )
    raw = dataclasses.replace(moved, others=())
    clean = whitebox_gradient(view)
    assert np.corrcoef(whitebox_gradient(moved), clean)[0, 1] > 0.95  # the drift removed
    assert np.corrcoef(whitebox_gradient(raw), clean)[0, 1] < 0.5  # unless no one else is seen
    assert not {f.name for f in dataclasses.fields(AttackView)} & {"coins", "coin"}
    assert view.dirac is not None
    with pytest.raises(ValueError, match="audit.canary_kind=gradient"):
        whitebox_gradient(dataclasses.replace(view, dirac=None))
