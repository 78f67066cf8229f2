"""Canaries (replace-one neighbours, secret coins) and the attacks' scores (tasks.audit)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tasks.audit import Canaries, draw_coins, gradient_scores, insert_canaries, make_canaries
from tasks.audit.attacks import AttackView, blackbox, centred
from tasks.data import ClientData
from tasks.models import get_weights, set_weights


def _canaries(m: int = 120) -> Canaries:
    return make_canaries(m, (1, 4, 4), 10, np.zeros(16), np.ones(16), seed=0)


def _data(n: int = 30) -> ClientData:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return ClientData(x, y, x[:3], y[:3], (1, 4, 4), 10)


def test_canaries_are_public_and_in_range_with_two_distinct_labels() -> None:
    c, again = _canaries(), _canaries()
    assert np.array_equal(c.x, again.x) and np.array_equal(c.y_in, again.y_in)  # from the seed
    assert c.x.min() >= 0 and c.x.max() <= 1 and c.x.shape == (120, 1, 4, 4)
    assert np.all(c.y_in != c.y_out)


def test_coins_are_fair_secret_and_not_seeded() -> None:
    a, b = draw_coins(2000), draw_coins(2000)
    assert a.dtype == bool and 0.45 < a.mean() < 0.55
    assert not np.array_equal(a, b)  # OS entropy: two draws differ


def test_each_coin_changes_one_record_and_never_the_size() -> None:
    c, data = _canaries(), _data()
    coins = draw_coins(len(c))
    flipped = coins.copy()
    flipped[7] = ~flipped[7]
    d1, d2 = insert_canaries(data, c, coins), insert_canaries(data, c, flipped)
    assert len(d1.y_train) == len(d2.y_train) == len(data.y_train) + len(c)  # replace-one
    assert np.array_equal(d1.x_train, d2.x_train)
    assert np.flatnonzero(d1.y_train != d2.y_train).tolist() == [len(data.y_train) + 7]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10))


def test_gradient_scores_separate_an_update_made_of_the_included_canaries() -> None:
    """An update that is one SGD step on the slots (no noise) is read back perfectly."""
    c = _canaries()
    coins = np.random.default_rng(1).random(len(c)) < 0.5
    model = _model()
    start = get_weights(model)
    x = torch.as_tensor(c.x)
    y = torch.as_tensor(np.where(coins, c.y_in, c.y_out))
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    update = {k: -0.01 * p.grad.numpy() for k, p in model.named_parameters()}
    scores = gradient_scores(_model(), start, update, c, clip=0.0)
    assert scores[coins].min() > scores[~coins].max()


def test_blackbox_scores_a_memorised_label_higher() -> None:
    c = _canaries(100)
    coins = np.zeros(len(c), dtype=bool)
    coins[:50] = True
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.as_tensor(c.x), torch.as_tensor(np.where(coins, c.y_in, c.y_out))
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    final = get_weights(model)
    view = AttackView(_model, [], [], final, c)
    scores = blackbox(view)
    assert scores[coins].mean() > scores[~coins].mean() + 1.0
    set_weights(model, final)


def test_centring_removes_a_per_label_offset() -> None:
    c = _canaries(200)
    offset = c.y_in.astype(float) * 10.0
    assert np.allclose(centred(offset, c), 0.0, atol=1e-9)
