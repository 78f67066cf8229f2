"""Dirac gradient canaries for the white-box audit of DP-SGD (``audit.canary_kind=gradient``).

Canary ``i`` is a record whose per-sample gradient is ``+C e_{c_i}`` when its secret coin is
heads and ``-C e_{c_i}`` when it is tails: ``C`` is ``privacy.max_grad_norm`` and ``c_i`` one
coordinate of the flattened trainable parameters, a different one per canary, drawn from the
run's (public) seed. Nasr et al. (S&P 2021; USENIX Security 2023) show that such canaries make
a white-box audit of DP-SGD tight; Steinke, Nasr and Jagielski (NeurIPS 2023) use them for
their one-run white-box bound.

**The mechanism the claim covers.** In the audited client's DP-SGD (this module's trainer, used
by ``tasks.audit.simulate`` only, never by ``fl_client`` or :func:`tasks.training.dpsgd.
train_dpsgd`), every canary slot is one record of the Poisson subsampled Gaussian mechanism:
at each noised step it is in the batch with the plan's sampling probability ``q``, drawn
independently of everything else, and when it is, its gradient joins the sum of clipped
per-sample gradients before the Gaussian noise (the optimizer's ``add_noise`` is wrapped to
add it to ``p.summed_grad``, after ``clip_and_accumulate``). The optimizer divides by the
expected batch size, never the drawn one, so a sampled slot counts in the step exactly as a
sampled record does. The two values of a slot are records of gradient norm ``C`` (clipping
leaves them as they are) and the same number of slots exists on both sides: the two datasets
of one coin are replace-one neighbours, the relation the ledger accounts (``docs/privacy.md``),
and ``+C e`` against ``-C e`` differ by ``2C``, its worst case. The ledger's epsilon is that of
``q``, the noise multiplier and the steps (:func:`privacy.plan_dpsgd`), which hold for any
record, whatever the number of records: the claim covers each slot. (``q`` comes from the
client's own ``n`` records; the slots are not counted in ``n``, which changes ``q`` only.)

The attack (:func:`whitebox_gradient`) is the server's: it sees each round's reply, not the
steps inside a round, and sums the audited client's per-round update at each canary's
coordinate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from privacy import derive_seed, make_generator
from tasks.audit.attacks import ATTACK_CANARIES, ATTACKS, AttackView
from tasks.audit.canaries import DiracCanaries
from tasks.training import LocalResult, LocalTask
from tasks.training.dpsgd import dpsgd_plan, train_dpsgd
from tasks.training.local import Trainer, noise_secret

Weights = dict[str, np.ndarray]


def install(
    optimizer: torch.optim.Optimizer,
    canaries: DiracCanaries,
    coins: np.ndarray,
    clip: float,
    sample_rate: float,
    generator: torch.Generator,
) -> list[int]:
    """Make ``optimizer`` (an Opacus DPOptimizer) add the canary slots' gradients each step.

    Before each ``add_noise`` every slot is drawn into the batch with probability
    ``sample_rate`` from ``generator``, and the drawn ones add ``+clip`` (heads) or ``-clip``
    (tails) at their coordinate of ``p.summed_grad``. Returns a list that counts the noised
    steps taken (one entry per step: how many slots were drawn).
    """
    params: Sequence[torch.Tensor] = optimizer.params  # type: ignore[attr-defined]
    if tuple(p.numel() for p in params) != canaries.sizes:
        raise ValueError(
            "the gradient canaries were drawn for parameters of sizes "
            f"{canaries.sizes}, the optimizer has {tuple(p.numel() for p in params)}"
        )
    sign = torch.where(torch.as_tensor(coins), clip, -clip).to(torch.float64)
    bounds = np.cumsum((0, *canaries.sizes))
    owner = np.searchsorted(bounds, canaries.index, side="right") - 1
    per_param = [
        (
            torch.as_tensor(np.flatnonzero(owner == j)),
            torch.as_tensor(canaries.index[owner == j] - bounds[j]),
        )
        for j in range(len(params))
    ]
    add_noise = optimizer.add_noise  # type: ignore[attr-defined]
    drawn: list[int] = []

    def add_canaries_then_noise() -> None:
        mask = torch.rand(len(canaries), generator=generator) < sample_rate
        value = sign * mask
        for p, (slots, offsets) in zip(params, per_param, strict=True):
            if len(slots):
                flat = p.summed_grad.view(-1)  # type: ignore[attr-defined]
                flat.index_add_(0, offsets, value[slots].to(flat.dtype))
        drawn.append(int(mask.sum()))
        add_noise()

    optimizer.add_noise = add_canaries_then_noise  # type: ignore[attr-defined]
    return drawn


def dirac_dpsgd(canaries: DiracCanaries, coins: np.ndarray) -> Trainer:
    """The audited client's DP-SGD with the canary slots: :func:`train_dpsgd`'s round, plus them.

    The same plan, ledger check, loader, noise and Poisson sampling as
    :func:`tasks.training.dpsgd.train_dpsgd`; the slots' own sampling generator is secret
    (OS entropy) unless ``privacy.reproducible_noise``, like the rest.
    """
    if len(coins) != len(canaries):
        raise ValueError(f"need one coin per canary, got {len(coins)} for {len(canaries)}")

    def train(task: LocalTask) -> LocalResult:
        secure = noise_secret(task)
        slots = make_generator(None if secure else derive_seed(task.seed, 0xCA), secure=secure)

        def plant(private: Any) -> None:
            plan = dpsgd_plan(task)  # the plan train_dpsgd uses (read back from its file)
            c = task.config
            install(private.optimizer, canaries, coins, c.max_grad_norm, plan.sample_rate, slots)

        return train_dpsgd(task, on_private=plant)

    return train


def update_sums(
    canaries: DiracCanaries,
    global_weights: Sequence[Weights],
    replies: Sequence[Weights | None],
) -> np.ndarray:
    """``sum over rounds of (reply - global)`` at each canary's coordinate (declines skipped)."""
    total = np.zeros(len(canaries))
    for g, w in zip(global_weights, replies, strict=True):
        if w is not None:
            total += canaries.at(w) - canaries.at(g)
    return total


def whitebox_gradient(view: AttackView) -> np.ndarray:
    """The server's score of each Dirac canary: minus the audited client's summed update there.

    ``-(sum over rounds of (reply - global))`` at ``c_i``: a heads slot pushes its coordinate
    down by ``lr C / B`` each step it is drawn, a tails slot up, so larger means heads. The
    client's own data moves the coordinates too; so does the other clients' (they hold no
    canary), which the server also sees. The score subtracts ``beta`` times the other clients'
    mean summed update there, ``beta`` the least-squares coefficient over the canaries'
    coordinates (``Cov(own, others) / Var(others)``, clipped to ``[0, 1]``): the canaries'
    signal is independent of the other clients' updates, so ``beta`` removes the shared data
    drift as far as it is linear, without the full noise of the others that ``beta = 1`` would
    add, and reads no coin. Reads the public coordinates and the released weights only.
    """
    if view.dirac is None:
        raise ValueError(
            "whitebox_gradient scores gradient canaries: set audit.canary_kind=gradient"
        )
    d = view.dirac
    own = update_sums(d, view.global_weights, view.client_weights)
    clients = len(view.others[0]) if view.others else 0
    if clients:
        others = np.mean(
            [
                update_sums(d, view.global_weights, [rnd[j] for rnd in view.others])
                for j in range(clients)
            ],
            axis=0,
        )
        spread = float(np.var(others))
        beta = float(np.cov(own, others)[0, 1]) / spread if spread > 0 else 0.0
        own = own - min(max(beta, 0.0), 1.0) * others
    return -own


ATTACKS["whitebox_gradient"] = whitebox_gradient
ATTACK_CANARIES["whitebox_gradient"] = "gradient"
