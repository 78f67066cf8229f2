"""``privacy.mode=none``: plain SGD, no privacy (a baseline; epsilon is reported as inf)."""

from __future__ import annotations

import time

from privacy import make_generator
from tasks.models.registry import get_weights
from tasks.training.local import LocalResult, LocalTask, sgd
from tasks.training.loops import make_loader, train_epochs


def train_plain(task: LocalTask) -> LocalResult:
    """Plain SGD, no privacy: reports epsilon = inf."""
    gen = make_generator(task.seed)
    loader = make_loader(task.data.x_train, task.data.y_train, task.config.batch_size, gen)
    start = time.perf_counter()
    stats = train_epochs(task.model, loader, sgd(task), task.config.local_epochs, task.device)
    seconds = time.perf_counter() - start
    return LocalResult(
        get_weights(task.model), len(task.data.y_train), stats.loss, float("inf"), "", seconds
    )
