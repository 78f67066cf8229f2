"""Personal models: a client fine-tunes the final global model on its own training data.

Servia-Rodriguez, Wang, Zhao, Mortier and Haddadi, "Privacy-Preserving Personal Model
Training" (IoTDI 2018): a model learnt from a few users is retrained locally by each user on
their own data, which never leaves the device. The personal model is not released, so the
fine-tuning is plain SGD and spends no privacy budget; the global model it starts from is a
copy, left unchanged. :func:`train_alone` is the baseline of a user training on its own data
only, from the same initial weights as the federation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from privacy.rng import derive_seed, make_generator
from tasks.data.partition import ClientData
from tasks.training.loops import make_loader, train_epochs

if TYPE_CHECKING:  # the adapter's type only
    from protocol.settings import RunSettings

PERSONAL_MODES = ("finetune", "last_layer")
"""What a client retrains: every layer, or the last layer with parameters only."""


@dataclass(frozen=True)
class PersonalConfig:
    """The fine-tuning parameters (``personalization.*``, ``federation.batch_size``).

    Attributes
    ----------
    mode : str
        ``finetune`` (every layer) or ``last_layer``.
    epochs : int
        Passes over the client's training data (> 0).
    learning_rate : float
        Plain SGD's step size.
    batch_size : int
        Mini-batch size (``federation.batch_size``).
    seed : int
        The run's seed: the shuffling of each client's batches is derived from it.
    """

    mode: str
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in PERSONAL_MODES:
            raise ValueError(
                f"personalization.mode must be one of {list(PERSONAL_MODES)}, got {self.mode!r}"
            )
        if self.epochs <= 0:
            raise ValueError(f"personalization.epochs must be > 0, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"personalization.learning_rate must be > 0, got {self.learning_rate:g}"
            )

    @classmethod
    def from_settings(cls, settings: RunSettings) -> PersonalConfig:
        """The one conversion from a run's settings."""
        return cls(
            settings.personalization_mode,
            settings.personalization_epochs,
            settings.personalization_learning_rate,
            settings.batch_size,
            settings.seed,
        )


def last_layer(model: nn.Module) -> nn.Module:
    """The last submodule that holds parameters of its own (a classifier's output layer)."""
    own = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if not own:
        raise ValueError("personalization.mode='last_layer': the model has no parameters")
    return own[-1]


def personalise(
    model: nn.Module,
    data: ClientData,
    config: PersonalConfig,
    device: torch.device,
    partition_id: int,
) -> nn.Module:
    """A personal copy of ``model`` fine-tuned on ``data``'s training part; ``model`` unchanged.

    The copy trains every parameter (``finetune``) or only :func:`last_layer`'s
    (``last_layer``) for ``config.epochs`` epochs of SGD; batches are shuffled with a
    generator derived from ``(config.seed, partition_id)``.
    """
    personal = copy.deepcopy(model).to(device)
    trainable = (
        list(personal.parameters())
        if config.mode == "finetune"
        else list(last_layer(personal).parameters())
    )
    keep = {id(p) for p in trainable}
    for p in personal.parameters():
        p.requires_grad_(id(p) in keep)
    gen = make_generator(derive_seed(config.seed, partition_id, 0x9E5))
    loader = make_loader(data.x_train, data.y_train, config.batch_size, gen)
    opt = torch.optim.SGD(trainable, lr=config.learning_rate)
    train_epochs(personal, loader, opt, config.epochs, device)
    for p in personal.parameters():
        p.requires_grad_(True)
    return personal


def train_alone(
    model: nn.Module,
    data: ClientData,
    config: PersonalConfig,
    device: torch.device,
    partition_id: int,
) -> nn.Module:
    """The local-only baseline: a copy of ``model`` trained on the client's own data alone.

    Every layer trains; ``model`` holds the federation's initial weights.
    """
    return personalise(model, data, replace(config, mode="finetune"), device, partition_id)
