"""From the composed Hydra config to Flower's flat run config, checked before anything starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from privacy import get_mode
from privacy.accounting import check_accountant
from privacy.central import plan_central
from privacy.functional.heads import head_kind
from protocol.groups import default_of
from protocol.settings import RunSettings
from reliability import make_scorer
from tasks.data import (
    NATURAL,
    client_partitions,
    is_natural,
    load_dataset,
    specs_from_settings,
    split_client,
)
from tasks.models import MODELS, build_model, model_info, model_spec, models_with
from tasks.participants import ParticipantsConfig, check_kind, unreliable_clients
from tasks.training import select_device

_NOT_IN_CFG = {"output_dir", "personalization_on_nodes"}


def to_settings(cfg: DictConfig, output_dir: str = "") -> RunSettings:
    """The one conversion from a composed config to :class:`RunSettings` (then validated).

    Every field of ``RunSettings`` names the Hydra key it reads (``privacy.target_epsilon``).
    """
    values: dict[str, Any] = {}
    for f in dataclasses.fields(RunSettings):
        if f.name in _NOT_IN_CFG:
            continue
        value = OmegaConf.select(cfg, f.metadata["key"], throw_on_missing=True)
        if value is None:
            raise ValueError(f"{f.metadata['key']} is missing from the config")
        values[f.name] = value
    on_nodes = OmegaConf.select(cfg, "federation.engine") == "deployment"  # nodes keep theirs
    settings = RunSettings(**values, output_dir=output_dir, personalization_on_nodes=on_nodes)
    return natural_federation(settings.validate())


def natural_federation(settings: RunSettings) -> RunSettings:
    """Naturally federated data decides the federation: one client per owner of its rows.

    For such a dataset (``watch``, ``table``) the partitioner is ``natural`` and
    ``federation.num_clients`` is the number of owners, or ``personalization.initial_clients``
    (the first K owners) when that is set; other datasets are returned as they are.

    Raises
    ------
    ValueError
        When the user set ``federation.num_clients`` or ``federation.partitioner`` to
        something else, ``aggregation.server_data_size`` > 0 (server rows taken from the
        owners), or ``personalization.initial_clients`` without natural data or above the
        number of owners.
    """
    k = settings.personalization_initial_clients
    if not is_natural(settings.dataset_name):
        if settings.partitioner == NATURAL:
            raise ValueError(
                f"federation.partitioner='natural' needs a naturally federated dataset "
                f"(dataset=watch, dataset=table), got dataset.name={settings.dataset_name!r}"
            )
        if k:
            raise ValueError(
                "personalization.initial_clients needs a naturally federated dataset "
                f"(dataset=watch, dataset=table), got {k} with dataset.name="
                f"{settings.dataset_name!r}"
            )
        return settings
    if settings.dataset_path:  # the clients' processes may start elsewhere
        settings = dataclasses.replace(
            settings, dataset_path=str(Path(settings.dataset_path).expanduser().resolve())
        )
    owners = load_dataset(specs_from_settings(settings)[0]).owners
    if k > owners:
        raise ValueError(
            f"personalization.initial_clients must be <= the {owners} owners of dataset.name="
            f"{settings.dataset_name!r}, got {k}"
        )
    n = k or owners
    if settings.num_clients not in (default_of("federation.num_clients"), n):
        raise ValueError(
            f"federation.num_clients is set by dataset.name={settings.dataset_name!r} (one "
            f"client per owner: {owners}; personalization.initial_clients=K for a federation "
            f"of the first K), got {settings.num_clients}"
        )
    if settings.partitioner not in (default_of("federation.partitioner"), NATURAL):
        raise ValueError(
            f"federation.partitioner must be 'natural' for dataset.name="
            f"{settings.dataset_name!r} (its rows have owners), got {settings.partitioner!r}"
        )
    if settings.aggregation_server_data_size > 0:  # it would take rows from the owners
        raise ValueError(
            f"aggregation.server_data_size must be 0 for dataset.name={settings.dataset_name!r} "
            "(every row belongs to an owner: the server has no data of its own), got "
            f"{settings.aggregation_server_data_size}"
        )
    replies = min(settings.min_replies, n)
    return dataclasses.replace(
        settings, partitioner=NATURAL, num_clients=n, min_replies=replies
    ).validate()


def check_central_dp(settings: RunSettings) -> None:
    """``central_dp``: the noise can be calibrated for the planned rounds (``ValueError``).

    Adaptive clipping needs a clipped-count noise large enough to leave noise for the
    updates (:func:`privacy.central.plan_central` names the setting).
    """
    if settings.central_dp_mode != "none":
        plan_central(
            settings.central_dp_mode,
            settings.central_dp_target_epsilon,
            settings.central_dp_delta,
            settings.num_clients,
            settings.fraction_train,
            settings.num_rounds,
            settings.central_dp_count_stddev_fraction,
        )


def check_resources(client_cpus: object, client_gpus: object) -> None:
    """``federation.client_cpus`` >= 1; ``client_gpus`` in [0, 1], and 0 without a GPU."""
    if isinstance(client_cpus, bool) or not isinstance(client_cpus, int) or client_cpus < 1:
        raise ValueError(f"federation.client_cpus must be an integer >= 1, got {client_cpus!r}")
    if isinstance(client_gpus, bool) or not isinstance(client_gpus, (int, float)):
        raise ValueError(f"federation.client_gpus must be a number in [0, 1], got {client_gpus!r}")
    if not 0 <= client_gpus <= 1:
        raise ValueError(f"federation.client_gpus must be in [0, 1], got {client_gpus!r}")
    if client_gpus > 0 and not torch.cuda.is_available():
        raise ValueError(
            f"federation.client_gpus must be 0 on a machine without a CUDA device, got "
            f"{client_gpus!r}"
        )


@dataclasses.dataclass(frozen=True)
class DataCheck:
    """What :func:`check_data` learnt: client sizes after the train/validation split."""

    train_sizes: tuple[int, ...]
    test_size: int
    model_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    """The model's parameter names and shapes (a resumed checkpoint must have exactly these)."""


def check_data(settings: RunSettings) -> DataCheck:
    """Checks that need the data: model, data and privacy mode fit, every client gets data.

    Raises
    ------
    ValueError
        Naming the setting and the value, e.g. when ``privacy.delta`` is not below one over
        the smallest client's number of training examples, or when ``privacy.mode=functional``
        is asked of a model it cannot serve.
    """
    mode = get_mode(settings.privacy_mode)  # ValueError naming privacy.mode
    if mode.private:
        check_accountant(settings.privacy_accountant)
    if settings.model_name not in MODELS:
        raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {settings.model_name!r}")
    if (
        mode.model_capability
        and mode.model_capability not in model_info(settings.model_name).capabilities
    ):
        raise ValueError(
            f"privacy.mode={mode.name!r} supports model.name in "
            f"{sorted(models_with(mode.model_capability))}, got {settings.model_name!r}"
        )
    objective = model_info(settings.model_name).objective
    if mode.model_capability == "objective" and objective:
        honoured = head_kind(objective).bounds  # the softmax head has one derived bound
        if settings.privacy_functional_bound not in honoured:
            raise ValueError(
                f"privacy.functional_bound must be one of {list(honoured)} for model.name="
                f"{settings.model_name!r} (its {objective} head), got "
                f"{settings.privacy_functional_bound!r}"
            )
        head_kind(objective).check_noise(settings.privacy_functional_noise)
    scorer = make_scorer(settings.aggregation_scorer)
    if (
        settings.aggregation_strategy == "scorer"
        and scorer.needs_server_data
        and settings.aggregation_server_data_size <= 0
    ):
        raise ValueError(
            f"aggregation.scorer={settings.aggregation_scorer!r} needs server data: set "
            f"aggregation.server_data_size > 0, got {settings.aggregation_server_data_size}"
        )
    check_kind(settings.participants_kind)
    unreliable_clients(ParticipantsConfig.from_settings(settings))
    dspec, pspec = specs_from_settings(settings)
    bundle = load_dataset(dspec)
    # the model's own checks: classes vs regression, declared bounds, shapes
    model = build_model(model_spec(settings, bundle.input_shape, bundle.num_classes))
    parts = client_partitions(dspec, pspec)
    sizes = []
    for pid, idx in enumerate(parts):
        if len(idx) == 0:
            raise ValueError(
                f"federation.num_clients={settings.num_clients} is more clients than "
                f"federation.partitioner={settings.partitioner!r} can give data: client {pid} "
                "gets no examples"
            )
        train, _ = split_client(bundle, idx, settings.val_fraction, pspec.seed, pid)
        if len(train) == 0:
            raise ValueError(
                f"client {pid} of dataset.name={settings.dataset_name!r} has no training "
                "examples after its validation part is held out"
            )
        sizes.append(len(train))
    smallest = min(sizes)
    if settings.batch_size > smallest:
        owner = ""
        if bundle.owners:  # naturally federated: name the owner and where owners come from
            pid, column = sizes.index(smallest), settings.dataset_partition_by
            name = bundle.owner_names[pid] if bundle.owner_names else str(pid)
            owner = f"; client {pid} is owner {name!r}" + (
                f" of column {column!r} of {settings.dataset_path}" if column else ""
            )
        raise ValueError(
            f"federation.batch_size must be at most the smallest client's training set "
            f"(n={smallest}{owner}), got {settings.batch_size}"
        )
    select_device(settings.device)  # device=cuda without a GPU: an error naming device
    # delta is spent by approximate-DP modes only (the functional mechanism's Laplace is pure)
    if mode.delta_spent(settings) and settings.privacy_delta >= 1.0 / smallest:
        raise ValueError(
            f"privacy.delta must be below 1/n for the smallest client (n={smallest}, "
            f"1/n={1.0 / smallest:.3g}), got {settings.privacy_delta:g}"
        )
    mode.check(settings, sizes)  # the mode's own checks (DP-SGD: certifiable budget)
    check_central_dp(settings)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return DataCheck(tuple(sizes), len(bundle.y_test), shapes)
