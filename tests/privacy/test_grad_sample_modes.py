"""Every Opacus mode of ``privacy.grad_sample_mode`` takes the same clipped, noised DP-SGD step.

The reference is computed here without Opacus: one example at a time, each gradient clipped
to ``C`` (factor ``min(1, C / (norm + 1e-6))``, Opacus' flat clipping), summed and divided by
the expected batch size. With zero noise and learning rate 1 the weight change of one step
through :func:`privacy.make_private` and :func:`tasks.training.train_epochs` must equal
minus that mean, for ``hooks``, ``ew``, ``functorch`` and ``ghost`` alike.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from privacy import make_generator, make_private
from privacy.dpsgd import GRAD_SAMPLE_MODES, DpSgdPlan, PrivateTraining
from tasks.models import MODEL_INFO, ModelSpec, build_model, model_info
from tasks.training import make_loader, train_epochs
from tasks.training.dpsgd import grad_sample_mode
from tasks.training.loops import _loss

CLIP = 0.05  # small enough that every example's gradient is clipped
N = 24
SHAPES = {
    "softmax": (1, 8, 8),
    "mlp": (1, 8, 8),
    "cnn": (1, 8, 8),
    "dpcnn": (1, 14, 14),
    "cnn1d": (3, 16),
}


def _zero_noise_plan(n: int) -> DpSgdPlan:
    return DpSgdPlan(math.inf, 1e-5, 1.0, 1, 1, 0.0, "pld")


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _reference_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minus the mean (over the expected batch, here ``len(y)``) of the clipped gradients."""
    total = torch.zeros_like(_flat(model))
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        _loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        g = _grads(model)
        total += g * min(1.0, CLIP / (float(g.norm()) + 1e-6))
    return -total / len(y)


def _noiseless(model: nn.Module, x: np.ndarray, y: np.ndarray, mode: str) -> PrivateTraining:
    """``make_private`` with zero noise, one full batch (sample rate 1) and SGD at lr 1."""
    gen = make_generator(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_private(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            data_loader=make_loader(x, y, len(y), gen),
            plan=_zero_noise_plan(len(y)),
            max_grad_norm=CLIP,
            generator=gen,
            grad_sample_mode=mode,
        )


def _private_step(model: nn.Module, x: np.ndarray, y: np.ndarray, mode: str) -> torch.Tensor:
    """The weight change of one full-batch, noiseless DP-SGD step in ``mode`` (lr 1)."""
    before = _flat(model)
    pt = _noiseless(model, x, y, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = train_epochs(
            pt.module,
            pt.data_loader,
            pt.optimizer,
            1,
            torch.device("cpu"),
            empty_step=pt.empty_step,
            reduce=pt.loss,
        )
    assert stats.steps == 1 and stats.examples_seen == len(y)  # sample rate 1: everyone
    assert len(pt.engine.accountant.history) == 1  # the accountant saw the step
    return _flat(model) - before


def _data(shape: tuple[int, ...], regression: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, *shape)).astype(np.float32)
    y = rng.normal(size=N).astype(np.float32) if regression else rng.integers(0, 3, N)
    return x, y


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_mode_takes_the_clipped_mean_step(name: str, mode: str) -> None:
    x, y = _data(SHAPES[name])
    spec = ModelSpec(name, SHAPES[name], 3, hidden=8)
    ref_model = build_model(spec, 0)
    reference = _reference_step(ref_model, torch.as_tensor(x), torch.as_tensor(y))
    # the clipping binds: the clipped mean is far from the unclipped mean gradient
    ref_model.zero_grad(set_to_none=True)
    _loss(ref_model(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    unclipped = _grads(ref_model)
    assert float((reference + unclipped).norm()) > 0.5 * float(unclipped.norm())

    step = _private_step(build_model(spec, 0), x, y, mode)
    np.testing.assert_allclose(step.numpy(), reference.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_each_mode_clips_a_regression_loss(mode: str) -> None:
    x, y = _data((5,), regression=True)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    ref = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    ref.load_state_dict(model.state_dict())
    reference = _reference_step(ref, torch.as_tensor(x), torch.as_tensor(y))
    step = _private_step(model, x, y, mode)
    np.testing.assert_allclose(step.numpy(), reference.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_empty_poisson_batch_is_a_noised_counted_step(mode: str) -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    before = _flat(model)
    x = np.zeros((8, 4), np.float32)
    y = np.zeros(8, np.int64)
    gen = make_generator(3)
    plan = DpSgdPlan(math.inf, 1e-5, 1 / 2, 2, 1, 1.0, "pld")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pt = make_private(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            data_loader=make_loader(x, y, 4, gen),
            plan=plan,
            max_grad_norm=1.0,
            generator=gen,
            grad_sample_mode=mode,
        )
        pt.empty_step()
    assert pt.event(1).steps == 1 and pt.event(1).noise_multiplier == 1.0
    moved = _flat(model) - before
    assert float(moved.abs().max()) > 0  # noise only: the clipped sum of nothing is zero


def test_auto_takes_the_models_measured_mode_and_every_model_names_an_exact_one() -> None:
    for name, info in MODEL_INFO.items():
        assert info.grad_sample_mode in GRAD_SAMPLE_MODES, name
        assert grad_sample_mode("auto", name) == info.grad_sample_mode
    assert grad_sample_mode("ghost", "mlp") == "ghost"  # a setting other than auto wins
    assert model_info("dpcnn").grad_sample_mode == grad_sample_mode("auto", "dpcnn")


def test_ghost_refuses_a_step_whose_gradient_was_not_clipped() -> None:
    x, y = _data((5,))
    model = nn.Sequential(nn.Linear(5, 3))
    pt = _noiseless(model, x, y, "ghost")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = _flat(model)
        with pytest.raises(RuntimeError, match="grad_sample_mode=ghost.*not clipped"):
            # a plain mean loss: Opacus would noise the unclipped gradient
            train_epochs(pt.module, pt.data_loader, pt.optimizer, 1, torch.device("cpu"))
    assert torch.equal(_flat(model), before)  # no step taken
    assert len(pt.engine.accountant.history) == 0
