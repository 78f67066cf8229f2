"""Training: the loops, the local training of each privacy mode, and the private evaluation.

:mod:`tasks.training.loops` (loaders, epochs, evaluation) and :mod:`tasks.training.local`
(the task, the result, the ledger store, :func:`train_local`) are shared by every mode. Each
mode's trainer has its own module, named by its :class:`privacy.PrivacyMode`:
:mod:`tasks.training.plain` (``none``), :mod:`tasks.training.dpsgd`,
:mod:`tasks.training.functional`. :mod:`tasks.training.evaluation` releases a client's
validation accuracy under DP.
"""

from tasks.training.evaluation import EvalResult, evaluate_private
from tasks.training.local import (
    LedgerStore,
    LocalResult,
    LocalTask,
    MemoryLedgerStore,
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
    "EvalResult",
    "LedgerStore",
    "LocalResult",
    "LocalTask",
    "MemoryLedgerStore",
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
