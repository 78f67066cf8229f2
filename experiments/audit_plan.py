"""What ``python -m experiments.audit`` can audit, and how its canaries and server are set up.

The checks run before any training (:func:`check_engine`, :func:`check_audit_run`); the
planters (:data:`PLANTERS`) hide the canaries of each ``audit.canary_kind`` in the audited
client's training; the server rules (:data:`SERVER_RULES`) combine the replies as the
ServerApp's strategy for the mode's release would; :func:`claimed_epsilon` and
:func:`audit_delta` give the claim under test and the delta of its null hypothesis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from experiments.audit_schema import AuditGroup
from fl_server.objective import model_head_kind, noise_scale_of
from privacy import get_mode, is_private
from protocol.settings import RunSettings
from tasks.audit import (
    Canaries,
    DiracCanaries,
    dirac_dpsgd,
    fedavg,
    insert_canaries,
    make_canaries,
    make_gradient_canaries,
    objective_sum,
)
from tasks.audit.simulate import Aggregator
from tasks.data import (
    PUBLIC_BOUNDS,
    load_client_data,
    load_dataset,
    public_bounds,
    specs_from_settings,
)
from tasks.data.partition import ClientData
from tasks.models import build_model, model_spec
from tasks.models.registry import ModelSpec
from tasks.training.local import Trainer

REPLAYS = {"replay": "weights", "replay_objective": "objective"}
"""The seed-knowing auditors, and what the audited client must release for each."""
NEEDS_RELEASE = {**REPLAYS, "whitebox_objective": "objective"}
"""Every attack that reads one kind of release, and that kind."""

SERVER_RULES: dict[str, Callable[[RunSettings], Aggregator]] = {
    "weights": lambda settings: fedavg,
    "objective": lambda settings: objective_sum(
        model_head_kind(settings), noise_scale_of(settings)
    ),
}
"""Per release (:attr:`privacy.PrivacyMode.release`): the server's rule under
``aggregation.strategy=fedavg``, as ``fl_server.registry.RELEASES`` picks its strategy
(:class:`fl_server.weighted.WeightedFedAvg` or :class:`fl_server.objective.ObjectiveFedAvg`),
built from the same head kind and noise scale the ServerApp's strategy uses."""


def server_rule(settings: RunSettings) -> Aggregator:
    """How the audit's server combines the replies of this run (see :data:`SERVER_RULES`)."""
    return SERVER_RULES[get_mode(settings.privacy_mode).release(settings)](settings)


def check_engine(audit: AuditGroup, engine: str) -> None:
    """Simulation only; a deployment's real data only when asked (and then not supported yet)."""
    if engine == "deployment":
        if not audit.allow_deployment:
            raise ValueError(
                "federation.engine='deployment': an audit would run on the deployment's real "
                "data; set audit.allow_deployment=true to ask for it, got audit.allow_deployment"
                "=false"
            )
        raise ValueError(
            "audit.allow_deployment=true: auditing a deployment is not supported yet (the audit "
            "runs its federation in process); use federation=simulation"
        )


def check_audit_run(settings: RunSettings, audit: AuditGroup, engine: str) -> None:
    """What the audit can run: simulation (deployment only if asked), one known client.

    And canaries the dataset can hold: labels, and declared public feature bounds.
    """
    check_engine(audit, engine)
    if not 0 <= audit.client < settings.num_clients:
        raise ValueError(
            f"audit.client must be in [0, federation.num_clients={settings.num_clients}), "
            f"got {audit.client}"
        )
    if settings.central_dp_mode != "none":
        raise ValueError(
            "the audit measures the clients' sample-level guarantee: set central_dp=none, got "
            f"central_dp.mode={settings.central_dp_mode!r}"
        )
    if settings.aggregation_strategy != "fedavg":
        raise ValueError(
            "the audit's server aggregates as FedAvg (or sums the functional objectives): set "
            f"aggregation=fedavg, got aggregation.strategy={settings.aggregation_strategy!r}"
        )
    modes = KIND_MODES[audit.canary_kind]
    if modes is not None and settings.privacy_mode not in modes:
        raise ValueError(
            f"audit.canary_kind={audit.canary_kind} adds its canaries to DP-SGD's clipped sum: it "
            f"needs privacy.mode in {list(modes)}, got privacy.mode={settings.privacy_mode!r}"
        )
    release = get_mode(settings.privacy_mode).release(settings)
    for name in (a for a in audit.attacks if a in NEEDS_RELEASE):
        if name in REPLAYS and not settings.privacy_reproducible_noise:
            raise ValueError(
                f"audit.attacks={name} replays the noise from the seed: it needs "
                "privacy.reproducible_noise=true, got false"
            )
        if NEEDS_RELEASE[name] != release:
            same = [
                a
                for a, r in NEEDS_RELEASE.items()
                if r == release and (a in REPLAYS) == (name in REPLAYS)
            ]
            raise ValueError(
                f"audit.attacks={name} attacks a {NEEDS_RELEASE[name]!r} release, but "
                f"privacy.mode={settings.privacy_mode!r} here releases {release!r} (use "
                f"{same})"
            )
    if settings.participants_unreliable_fraction > 0:
        raise ValueError(
            "the audit simulates reliable clients only: set participants=reliable, got "
            f"participants.unreliable_fraction={settings.participants_unreliable_fraction:g}"
        )
    bundle = load_dataset(specs_from_settings(settings)[0])  # cached: prepare loaded it
    if bundle.num_classes < 2:
        raise ValueError(
            "the audit's canaries carry labels: it needs a classification dataset, got "
            f"dataset.name={settings.dataset_name!r} with {bundle.num_classes} classes"
        )
    if settings.dataset_name not in PUBLIC_BOUNDS:
        raise ValueError(
            "the audit's canaries lie within the dataset's declared public feature bounds: "
            f"dataset.name={settings.dataset_name!r} declares none (datasets with bounds: "
            f"{sorted(PUBLIC_BOUNDS)})"
        )


@dataclass(frozen=True)
class Planted:
    """The canaries of one run, hidden: the audited client's data and trainer, the public design."""

    data: ClientData
    trainers: dict[int, Trainer] = field(default_factory=dict)
    canaries: Canaries | None = None
    dirac: DiracCanaries | None = None
    reference: ClientData | None = None
    """The audited client's data with every slot its replacement (the replay auditors')."""


Planter = Callable[[RunSettings, AuditGroup, ModelSpec, ClientData, np.ndarray], Planted]


def plant_input(
    settings: RunSettings, audit: AuditGroup, spec: ModelSpec, own: ClientData, coins: np.ndarray
) -> Planted:
    """Crafted records in the audited client's data (:mod:`tasks.audit.canaries`)."""
    bundle = load_dataset(specs_from_settings(settings)[0])  # cached
    features = public_bounds(settings.dataset_name).features  # the canaries' public range
    canaries = make_canaries(
        audit.canaries,
        bundle.input_shape,
        bundle.num_classes,
        features.lower,
        features.upper,
        settings.seed,
    )
    reference = insert_canaries(own, canaries, np.zeros(audit.canaries, dtype=bool))
    return Planted(insert_canaries(own, canaries, coins), canaries=canaries, reference=reference)


def plant_gradient(
    settings: RunSettings, audit: AuditGroup, spec: ModelSpec, own: ClientData, coins: np.ndarray
) -> Planted:
    """Dirac gradient canaries in the audited client's DP-SGD (:mod:`tasks.audit.gradient`)."""
    dirac = make_gradient_canaries(build_model(spec, settings.seed), audit.canaries, settings.seed)
    return Planted(own, trainers={audit.client: dirac_dpsgd(dirac, coins)}, dirac=dirac)


PLANTERS: dict[str, Planter] = {"input": plant_input, "gradient": plant_gradient}
"""Per ``audit.canary_kind``: how its canaries enter the audited client's training."""
KIND_MODES: dict[str, tuple[str, ...] | None] = {"input": None, "gradient": ("dpsgd",)}
"""Per ``audit.canary_kind``: the privacy modes it can audit (None: all)."""


def audit_clients(settings: RunSettings) -> tuple[ModelSpec, dict[int, ClientData]]:
    """The model every client builds and every client's data, loaded as the ClientApps load it."""
    dspec, pspec = specs_from_settings(settings)
    bundle = load_dataset(dspec)
    spec = model_spec(settings, bundle.input_shape, bundle.num_classes)
    data = {
        pid: load_client_data(dspec, pspec, pid, settings.val_fraction)
        for pid in range(settings.num_clients)
    }
    return spec, data


def claimed_epsilon(settings: RunSettings) -> float:
    """The per-client budget the run claims (inf without privacy)."""
    return settings.privacy_target_epsilon if is_private(settings.privacy_mode) else math.inf


def audit_delta(settings: RunSettings) -> float:
    """The delta of the null hypothesis: 0 for a pure-DP mode, else ``privacy.delta``."""
    mode = get_mode(settings.privacy_mode)
    return settings.privacy_delta if (mode.delta_spent(settings) or not mode.private) else 0.0
