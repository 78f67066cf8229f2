"""The seed-knowing auditor of the functional mechanism's released objectives (replay_objective)."""

from __future__ import annotations

import numpy as np
import pytest

from privacy.functional import head_kind, make_noise_generator
from tasks.audit import Canaries, canary_directions, make_canaries, objective_scores
from tasks.audit.attacks import AttackView
from tasks.audit.objective import replay_objective, whitebox_objective
from tasks.data import public_bounds
from tasks.models import ModelSpec, build_model
from tasks.models.functional import FunctionalModel

SPEC = ModelSpec(
    name="fm_network", input_shape=(1, 8, 8), num_classes=10, hidden=64, dataset="digits"
)


def _model() -> FunctionalModel:
    model = build_model(SPEC, 0)
    assert isinstance(model, FunctionalModel)
    return model


def _canaries(m: int) -> Canaries:
    f = public_bounds("digits").features
    return make_canaries(m, (1, 8, 8), 10, f.lower, f.upper, seed=0)


def _release(
    model: FunctionalModel, x: np.ndarray, y: np.ndarray, seed: int | None, epsilon: float = 1.0
) -> dict:
    kind = head_kind(model.objective_kind)
    source = make_noise_generator(seed, secure=seed is None)
    return kind.release(model.fm_features(x), model.fm_targets(y), epsilon, "l2", source)


def _slots(c: Canaries, coins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    own_x = rng.random((50, 1, 8, 8))
    own_y = rng.integers(0, 10, 50)
    labels = np.where(coins, c.y_in, c.y_out)
    return np.concatenate([own_x, c.x]), np.concatenate([own_y, labels])


def test_directions_are_the_exact_change_of_one_slot() -> None:
    model, c = _model(), _canaries(3)
    d = canary_directions(model, c)
    kind = head_kind(model.objective_kind)
    base = kind.release(
        model.fm_features(c.x[:1]),
        model.fm_targets(c.y_out[:1]),
        1e9,
        "l2",
        make_noise_generator(7),
    )
    hit = kind.release(
        model.fm_features(c.x[:1]), model.fm_targets(c.y_in[:1]), 1e9, "l2", make_noise_generator(7)
    )
    flat = np.concatenate([hit[k].ravel() - base[k].ravel() for k in sorted(hit)])
    np.testing.assert_allclose(d[0], flat, atol=5e-4)  # one grid step of the snapping


def test_known_noise_gives_the_coins_away_and_secret_noise_does_not() -> None:
    model, c = _model(), _canaries(200)
    coins = np.random.default_rng(1).random(len(c)) < 0.5
    x, y = _slots(c, coins)
    ref_x, ref_y = _slots(c, np.zeros(len(c), dtype=bool))

    def view(released: dict, replayed: dict) -> AttackView:
        return AttackView(
            build=_model,
            global_weights=[],
            client_weights=[],
            final={},
            canaries=c,
            client_releases=[released],
            replayed_release=replayed,
        )

    known = replay_objective(view(_release(model, x, y, 11), _release(model, ref_x, ref_y, 11)))
    assert known[coins].min() > known[~coins].max()  # every coin read back
    secret = replay_objective(
        view(_release(model, x, y, None), _release(model, ref_x, ref_y, None))
    )
    top = np.argsort(secret)[-20:]
    assert coins[top].mean() < 0.9  # the noise hides them


def test_objective_scores_need_matching_shapes_and_the_release() -> None:
    with pytest.raises(ValueError, match="coefficients"):
        objective_scores({"a": np.zeros(3)}, np.zeros((2, 4)))
    empty = AttackView(lambda: _model(), [], [], {}, _canaries(2))
    with pytest.raises(ValueError, match="privacy.reproducible_noise=true"):
        replay_objective(empty)


def test_the_attacker_who_knows_every_other_record_reads_a_weak_release() -> None:
    """``whitebox_objective``: secret noise, but an epsilon so large that the noise is tiny."""
    model, c = _model(), _canaries(200)
    coins = np.random.default_rng(2).random(len(c)) < 0.5
    x, y = _slots(c, coins)
    own_x, own_y = x[: -len(c)], y[: -len(c)]

    def scores(epsilon: float) -> np.ndarray:
        view = AttackView(
            build=_model,
            global_weights=[],
            client_weights=[],
            final={},
            canaries=c,
            known=(own_x, own_y),
            client_releases=[_release(model, x, y, None, epsilon)],
        )
        return whitebox_objective(view)

    weak = scores(1e6)
    assert weak[coins].min() > weak[~coins].max()
    strong = scores(0.1)
    assert coins[np.argsort(strong)[-20:]].mean() < 0.9
