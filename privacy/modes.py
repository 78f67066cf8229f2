"""The privacy-mode registry: one object per ``privacy.mode`` that carries its properties.

Every layer asks the mode, never its name: the settings checks (is the mode private, does
it spend delta, which models can it serve, what else must hold), the client (which local
training to run: :attr:`PrivacyMode.trainer`), the server (what it combines:
:attr:`PrivacyMode.release`) and the results (``_dp`` columns, ``noise_secret``). Adding a
mode is one :func:`register_mode` call plus its own files, as Opacus registers accountants.

The built-in modes register where they live: ``none`` here, ``dpsgd`` in
:mod:`privacy.dpsgd`, ``functional`` in :mod:`privacy.functional`; :mod:`privacy`'s
``__init__`` imports them. Their trainers live in :mod:`tasks.training` and are named as
``"module:function"`` strings (as Flower names its apps), so this package never imports the
layer above it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

RELEASES = ("weights", "objective")
"""What a client's reply releases for the server to combine: trained ``weights`` (FedAvg and
the robust strategies), or the functional mechanism's noisy ``objective`` (summed and
minimised once by the server)."""

Check = Callable[[Any, Sequence[int]], None]
"""``(settings, train_sizes) -> None``: raise ``ValueError`` naming the setting when a run's
settings (a :class:`protocol.settings.RunSettings`) and its clients' training-set sizes do
not fit the mode."""


def _releases_weights(settings: Any) -> str:
    return "weights"


def _no_check(settings: Any, train_sizes: Sequence[int]) -> None:
    return None


@dataclass(frozen=True)
class PrivacyMode:
    """A privacy mode and its properties.

    Attributes
    ----------
    name : str
        ``privacy.mode`` in the config.
    summary : str
        One line for ``--help`` texts and the docs.
    private : bool
        Its releases carry a DP guarantee: the client keeps a ledger and a budget, federated
        evaluation needs ``privacy.eval_epsilon``, released statistics are named ``_dp``, and
        the noise must be secret. ``False`` only for ``none``.
    spends_delta : bool or callable
        Its guarantee is approximate, ``(epsilon, delta)``-DP, so ``privacy.delta`` must be
        below ``1/n`` of the smallest client. Pure-DP mechanisms (the functional mechanism's
        Laplace noise) spend no delta. A callable ``settings -> bool`` when a setting decides
        (``privacy.functional_noise``); ask :meth:`delta_spent`, never this field.
    trainer : str or callable
        The client's local training, ``(tasks.training.LocalTask) -> LocalResult``, or its
        ``"module:function"`` name (resolved by :func:`tasks.training.train_local`).
    model_capability : str
        What a model must offer to be served (:attr:`tasks.models.ModelInfo.capabilities`,
        e.g. ``"objective"``); empty: any model.
    release : callable
        ``settings -> str``, one of :data:`RELEASES`: what the server combines (the client's
        trainer reads it as ``tasks.training.TrainConfig.release``, evaluated once from the
        settings).
    check : callable
        Further checks of the settings against the clients' training-set sizes (:data:`Check`).
    """

    name: str
    summary: str
    private: bool
    spends_delta: bool | Callable[[Any], bool]
    trainer: str | Callable[..., Any]
    model_capability: str = ""
    release: Callable[[Any], str] = field(default=_releases_weights)
    check: Check = field(default=_no_check)

    def delta_spent(self, settings: Any) -> bool:
        """Whether a run with ``settings`` spends ``privacy.delta`` (see :attr:`spends_delta`)."""
        if callable(self.spends_delta):
            return bool(self.spends_delta(settings))
        return bool(self.spends_delta)


MODES: dict[str, PrivacyMode] = {}


def register_mode(mode: PrivacyMode) -> PrivacyMode:
    """Register ``mode`` under ``mode.name``; registering a name twice is an error."""
    if mode.name in MODES and MODES[mode.name] != mode:
        raise ValueError(f"privacy mode {mode.name!r} is already registered")
    MODES[mode.name] = mode
    return mode


def unregister_mode(name: str) -> None:
    """Remove a registered mode (tests that register their own)."""
    MODES.pop(name, None)


def get_mode(name: str) -> PrivacyMode:
    """The registered mode ``name``; ``ValueError`` names the setting and lists the modes."""
    if name not in MODES:
        raise ValueError(f"privacy.mode must be one of {sorted(MODES)}, got {name!r}")
    return MODES[name]


def is_private(name: str) -> bool:
    """Whether mode ``name`` releases under DP (``False`` for an unknown name)."""
    return name in MODES and MODES[name].private


NONE = register_mode(
    PrivacyMode(
        name="none",
        summary="plain SGD, no privacy (epsilon = inf): a baseline, never for private data",
        private=False,
        spends_delta=False,
        trainer="tasks.training.plain:train_plain",
    )
)
