"""DP-SGD planning and wrapping (Abadi et al. 2016, "Deep Learning with Differential Privacy").

:func:`plan_dpsgd` calibrates one noise multiplier for a client's whole participation in the
federation; :func:`make_private` wraps a model/optimizer/loader with Opacus for one round.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader

from privacy.accounting import get_accountant
from privacy.calibration_cache import calibrated_noise
from privacy.ghost import GhostLoss, require_clipped_steps
from privacy.ledger import PrivacyLedger, SampledGaussianEvent, _check_accountant, _check_delta
from privacy.modes import PrivacyMode, register_mode
from privacy.rng import make_generator

__all__ = [
    "DpSgdPlan",
    "PrivateTraining",
    "make_private",
    "plan_dpsgd",
    "planned_round_event",
    "would_exceed",
]


GRAD_SAMPLE_MODES = ("hooks", "ew", "functorch", "ghost")
"""Opacus' exact per-sample-gradient modes: ``hooks``, ``ew`` and ``functorch`` materialise the
per-sample gradients for the standard DP optimizer; ``ghost`` (fast gradient and ghost
clipping, Li et al. ICLR 2022, Bu et al. 2022) computes only their norms, then a second
backward pass of the clipping-weighted loss gives the sum of clipped gradients. All four
give the same clipped, noised step (``tests/privacy/test_grad_sample_modes.py``)."""


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class DpSgdPlan:
    """A calibrated DP-SGD budget for one client over the whole federated run.

    Attributes
    ----------
    target_epsilon, delta : float
        The ``(epsilon, delta)`` the client may spend over ``rounds`` rounds.
    sample_rate : float
        Poisson sampling rate, exactly as Opacus uses it: ``1 / ceil(n_train / batch_size)``.
    steps_per_round : int
        Noisy steps per round: ``local_epochs * int(1 / sample_rate)``.
    rounds : int
        Maximum number of rounds the client may take part in.
    noise_multiplier : float
        Calibrated noise std / clipping norm.
    accountant : str
        Registered accountant (:mod:`privacy.accounting`) used for calibration and accounting.

    """

    target_epsilon: float
    delta: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    noise_multiplier: float
    accountant: str

    @property
    def total_steps(self) -> int:
        """Steps over all planned rounds."""
        return self.steps_per_round * self.rounds


@functools.lru_cache(maxsize=256)
def plan_dpsgd(
    *,
    target_epsilon: float,
    delta: float,
    n_train: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    accountant: str = "pld",
) -> DpSgdPlan:
    """Calibrate the DP-SGD noise multiplier for a client's whole run.

    The guarantee is that of ``total_steps`` compositions of the Poisson subsampled Gaussian
    mechanism (DP-SGD, Abadi et al. 2016) under replace-one neighbours, accounted by the
    registered ``accountant`` (default ``pld``: dp_accounting's privacy loss distributions,
    pessimistic; see :mod:`privacy.accounting`).

    The sample rate and steps match what Opacus actually does with ``poisson_sampling=True``:
    ``DPDataLoader.from_data_loader`` uses ``sample_rate = 1 / len(data_loader)``, with
    ``len = ceil(n_train / batch_size)`` for a loader without ``drop_last``, and
    ``UniformWithReplacementSampler`` yields ``int(1 / sample_rate)`` batches per epoch. This
    equals ``batch_size / n_train`` when ``batch_size`` divides ``n_train``, and is slightly
    smaller otherwise. ``batch_size > n_train`` thus clamps the sample rate to 1.0.

    Memoised: the plan is a pure function of its arguments. The noise multiplier is
    calibrated once (:func:`privacy.accounting.calibrate_noise`: bisection to 1% of the
    target), and once per machine rather than per process: the search's result is kept in a
    cache of public numbers (:func:`privacy.calibration_cache.calibrated_noise`), so the
    pre-start check and every client process reuse one search. Cached or searched, it is
    then verified with the same accountant, so the plan's epsilon is at or just under
    ``target_epsilon``.

    Raises
    ------
    ValueError
        On invalid inputs (message names the setting and the value found), or if the
        budget is too small to be reached by any noise multiplier.
    RuntimeError
        If the verified epsilon exceeds the target (should not happen).

    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"privacy.target_epsilon must be > 0, got {target_epsilon}")
    _check_delta(delta)
    _positive_int("n_train", n_train)
    _positive_int("federation.batch_size", batch_size)
    _positive_int("federation.local_epochs", local_epochs)
    _positive_int("federation.rounds", rounds)
    _check_accountant(accountant)

    sample_rate = 1.0 / math.ceil(n_train / batch_size)
    steps_per_round = local_epochs * int(1 / sample_rate)
    total_steps = steps_per_round * rounds
    try:
        noise_multiplier = calibrated_noise(
            accountant, float(target_epsilon), float(delta), sample_rate, total_steps
        )
    except ValueError as err:
        raise ValueError(
            f"privacy.target_epsilon={target_epsilon:g} cannot be certified by the "
            f"{accountant!r} accountant at privacy.delta={delta:g} for {total_steps} steps at "
            f"sample rate {sample_rate:.4g} ({err}); raise the epsilon"
        ) from err
    eps = get_accountant(accountant).epsilon(((noise_multiplier, sample_rate, total_steps),), delta)
    if eps > target_epsilon:
        raise RuntimeError(
            f"calibrated noise_multiplier {noise_multiplier} gives epsilon {eps} > "
            f"privacy.target_epsilon {target_epsilon}"
        )
    return DpSgdPlan(
        target_epsilon=float(target_epsilon),
        delta=float(delta),
        sample_rate=sample_rate,
        steps_per_round=steps_per_round,
        rounds=rounds,
        noise_multiplier=noise_multiplier,
        accountant=accountant,
    )


def planned_round_event(plan: DpSgdPlan, round: int) -> SampledGaussianEvent:
    """Return the event one full round of ``plan`` adds to the ledger."""
    return SampledGaussianEvent(
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=plan.steps_per_round,
        round=round,
    )


def would_exceed(ledger: PrivacyLedger, event: SampledGaussianEvent, target_epsilon: float) -> bool:
    """Whether recording ``event`` would push the ledger's epsilon over ``target_epsilon``.

    A relative slack of 1e-9 absorbs floating-point noise in the accountant.
    """
    return ledger.epsilon_if(event) > target_epsilon * (1 + 1e-9)


@dataclass
class PrivateTraining:
    """The Opacus-wrapped objects of one private training session.

    Attributes
    ----------
    module : torch.nn.Module
        The ``GradSampleModule`` wrapper to train with.
    optimizer : DPOptimizer
        Clips per-example gradients and adds Gaussian noise.
    data_loader : DataLoader
        Poisson-sampling ``DPDataLoader``.
    engine : PrivacyEngine
        The engine whose accountant records the steps taken.

    """

    module: torch.nn.Module
    optimizer: DPOptimizer
    data_loader: DPDataLoader
    engine: PrivacyEngine

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copies of the original module's weights (no ``_module.`` prefix)."""
        inner = getattr(self.module, "_module", self.module)
        return {k: v.detach().clone() for k, v in inner.state_dict().items()}

    def loss(self, per_sample: torch.Tensor) -> Any:
        """The step's loss from the batch's per-sample losses: call ``.backward()`` on it.

        The mean for the modes that materialise per-sample gradients; under ``ghost`` Opacus'
        ``DPTensorFastGradientClipping``, whose ``backward`` runs the norm pass and then the
        clipped pass (what ``DPLossFastGradientClipping`` returns, without its criterion).
        """
        if isinstance(self.optimizer, DPOptimizerFastGradientClipping):
            return GhostLoss(self.module, self.optimizer, per_sample, "mean")
        return per_sample.mean()

    def empty_step(self) -> None:
        """The noised step of an empty Poisson batch: zero clipped sum plus Gaussian noise.

        The sampled Gaussian mechanism releases ``sum of clipped gradients + N(0, sigma^2 C^2)``
        at every step, including steps whose Poisson sample is empty (the sum is then 0);
        skipping them would make the number of noised steps depend on the sample and break
        the accounting's assumption. Opacus' ``ew`` mode cannot run an empty batch through the
        model, so the (empty) per-sample gradients are set directly; the optimizer then clips,
        noises, scales by the expected batch size, steps, and its accountant counts the step.
        """
        self.optimizer.zero_grad(set_to_none=True)
        ghost = isinstance(self.optimizer, DPOptimizerFastGradientClipping)
        for p in self.optimizer.params:
            if ghost:  # its optimizer noises p.grad, the already clipped sum
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        if ghost:
            self.optimizer._fedpriv_clipped = True  # the sum of no gradients: clipped
        self.optimizer.step()

    def event(self, round: int) -> SampledGaussianEvent:
        """Return the privacy event of the steps actually taken, from the engine's accountant.

        Raises
        ------
        ValueError
            If the accountant's history mixes noise multipliers or sample rates.

        """
        history = list(self.engine.accountant.history)
        if not history:
            return SampledGaussianEvent(
                noise_multiplier=float(self.optimizer.noise_multiplier),
                sample_rate=float(self.data_loader.sample_rate),
                steps=0,
                round=round,
            )
        keys = {(float(nm), float(q)) for nm, q, _ in history}
        if len(keys) != 1:
            raise ValueError(
                "accountant history mixes (noise_multiplier, sample_rate) pairs, "
                f"got {sorted(keys)}"
            )
        ((nm, q),) = keys
        steps = sum(int(s) for _, _, s in history)
        return SampledGaussianEvent(noise_multiplier=nm, sample_rate=q, steps=steps, round=round)


def make_private(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    plan: DpSgdPlan,
    max_grad_norm: float,
    generator: torch.Generator,
    secure: bool = False,
    grad_sample_mode: str = "hooks",
) -> PrivateTraining:
    """Wrap model, optimizer and loader for DP-SGD (Abadi et al. 2016) with Opacus.

    Parameters
    ----------
    model : torch.nn.Module
        Opacus-compatible model in training mode (no BatchNorm etc.).
    optimizer : torch.optim.Optimizer
        Optimizer over ``model``'s parameters.
    data_loader : DataLoader
        Loader with ``batch_size`` and ``n_train`` as given to :func:`plan_dpsgd` (no
        ``drop_last``); it is replaced by a Poisson-sampling ``DPDataLoader``.
    plan : DpSgdPlan
        Supplies the noise multiplier and accountant.
    max_grad_norm : float
        Per-example clipping norm, > 0.
    generator : torch.Generator
        CPU generator driving both Poisson sampling and (via a generator seeded from one
        draw of it, on the model's device) the Gaussian noise. Same seed, same result.
        Ignored when ``secure`` is True.
    secure : bool, default False
        Use OS-entropy-seeded generators and Opacus' floating-point-attack-resistant noise
        (Holohan & Braghin 2021, arXiv:2107.10138); see :func:`privacy.rng.make_generator`
        for why this is not a CSPRNG. Not reproducible.
    grad_sample_mode : str, default "hooks"
        How Opacus computes per-sample gradients: ``hooks`` (module hooks), ``ew`` (PyTorch
        expanded weights), ``functorch`` (vmap) or ``ghost`` (per-sample norms only, then a
        second backward pass; train with :meth:`PrivateTraining.loss`). The clipped sum, the
        noise and so the guarantee are the same; only the speed differs
        (``bench/dp_overhead.py``).

    Raises
    ------
    ValueError
        If ``max_grad_norm <= 0``, the model is not Opacus-compatible, the generator is not
        on the CPU, or the loader does not match the plan's sample rate.

    """
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"privacy.max_grad_norm must be > 0, got {max_grad_norm}")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        problems = "; ".join(str(e) for e in errors)
        raise ValueError(f"model is not compatible with Opacus DP-SGD: {problems}")

    params = [p for p in model.parameters()]
    param_device = params[0].device if params else torch.device("cpu")
    if secure:
        sampling_gen = make_generator(None, secure=True)
        noise_gen = make_generator(None, secure=True, device=param_device)
    else:
        if generator.device.type != "cpu":
            raise ValueError(
                f"make_private generator must be on the CPU (Opacus' Poisson sampler draws "
                f"on the CPU), got device {generator.device}"
            )
        sampling_gen = generator
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        noise_gen = make_generator(seed, device=param_device)

    # secure_mode=False: Opacus' secure mode needs torchcsprng (no build for torch 2.x).
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"privacy.grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}, "
            f"got {grad_sample_mode!r}"
        )
    # The engine's accountant only keeps the history of steps taken (PrivateTraining.event);
    # the guarantee is composed by the ledger's accountant (plan.accountant), not by Opacus.
    with warnings.catch_warnings():
        # Opacus warns that its torchcsprng secure mode is off; our noise is still secret
        # (OS-entropy seeds, 4-Gaussian sampling: see privacy.rng), so the warning misleads.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    # Opacus' _prepare_data_loader builds the DPDataLoader with generator=engine.secure_rng,
    # which is None outside secure mode, so DPDataLoader would fall back to the original
    # loader's generator (normally None -> torch's global RNG). Setting secure_rng routes our
    # generator into the Poisson sampler; _prepare_optimizer only reads secure_rng when
    # secure_mode is True, so the noise generator is passed separately as noise_generator.
    engine.secure_rng = sampling_gen
    # Under ghost Opacus also returns a criterion wrapper; PrivateTraining.loss builds the
    # same DPTensorFastGradientClipping from the trainer's own per-sample loss instead.
    dp_module, dp_optimizer, *_, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_gen,
        grad_sample_mode=grad_sample_mode,
    )
    if isinstance(dp_optimizer, DPOptimizerFastGradientClipping):
        require_clipped_steps(dp_optimizer)
    if secure:
        # DPOptimizer.add_noise reads self.secure_mode on every step and then calls
        # _generate_noise(..., secure_mode=True): sum of 4 Gaussians / 2 (arXiv:2107.10138).
        dp_optimizer.secure_mode = True
    if not math.isclose(dp_loader.sample_rate, plan.sample_rate, rel_tol=1e-12):
        raise ValueError(
            f"data loader gives Opacus sample rate {dp_loader.sample_rate} but the plan was "
            f"calibrated for {plan.sample_rate}; build the plan from the loader's n_train "
            f"and batch_size (and do not use drop_last)"
        )
    return PrivateTraining(
        module=dp_module, optimizer=dp_optimizer, data_loader=dp_loader, engine=engine
    )


def _check_dpsgd(settings: Any, train_sizes: Sequence[int]) -> None:
    """The budget must be certifiable for every client: calibrate for the extreme sizes."""
    for n in sorted({min(train_sizes), max(train_sizes)}):
        plan_dpsgd(
            target_epsilon=settings.training_epsilon,
            delta=settings.privacy_delta,
            n_train=n,
            batch_size=settings.batch_size,
            local_epochs=settings.local_epochs,
            rounds=settings.num_rounds,
            accountant=settings.privacy_accountant,
        )


DPSGD = register_mode(
    PrivacyMode(
        name="dpsgd",
        summary="Opacus DP-SGD: sample-level (epsilon, delta)-DP over the whole run, PLD-accounted",
        private=True,
        spends_delta=True,
        trainer="tasks.training.dpsgd:train_dpsgd",
        check=_check_dpsgd,
    )
)
"""DP-SGD (Abadi et al. 2016) with Poisson sampling, replace-one relation, PLD accountant."""
