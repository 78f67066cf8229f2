"""Training: the loops, the local training of each privacy mode, and the private evaluation.

:mod:`tasks.training.loops` (loaders, epochs, evaluation) and :mod:`tasks.training.local`
(the task, the result, the ledger store, :func:`train_local`) are shared by every mode. Each
mode's trainer has its own module, named by its :class:`privacy.PrivacyMode`:
:mod:`tasks.training.plain` (``none``), :mod:`tasks.training.dpsgd`,
:mod:`tasks.training.functional`. :mod:`tasks.training.evaluation` releases a client's
validation accuracy under DP. Trainers read a :class:`TrainConfig` and the evaluation an
:class:`EvalConfig`, each converted once from the run's settings by its ``from_settings``.
"""

from tasks.training.evaluation import EvalConfig, EvalResult, evaluate_private
from tasks.training.local import (
    LedgerStore,
    LocalResult,
    LocalTask,
    MemoryLedgerStore,
    TrainConfig,
    noise_secret,
    train_local,
    trainer_for,
)
from tasks.training.loops import (
    TrainStats,
    evaluate,
    make_loader,
    select_device,
    train_epochs,
)

__all__ = [
    "EvalConfig",
    "EvalResult",
    "LedgerStore",
    "LocalResult",
    "LocalTask",
    "MemoryLedgerStore",
    "TrainConfig",
    "TrainStats",
    "evaluate",
    "evaluate_private",
    "make_loader",
    "noise_secret",
    "select_device",
    "train_epochs",
    "train_local",
    "trainer_for",
]
