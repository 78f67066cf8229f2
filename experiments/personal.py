"""Personal models after a simulated federation: ``personal.csv`` and ``personal.png``.

With ``personalization=finetune`` (or ``last_layer``) each client, once the federation is
over, fine-tunes the final global model on its own training data
(:func:`tasks.training.personal.personalise`) and measures both models on its own test part.
In simulation the experimenter computes this for every client in-process: a simulated
client's data is rebuilt from the run's settings exactly as its ClientApp rebuilt it.

Privacy: the personal model never leaves its client and costs no privacy; the global model
(``final_model.npz``) and every ledger are left as they are. The accuracies are statistics of
each client's private test data: here they are the experimenter's view of a simulation; in a
deployment they would stay on the node (written to its own directory) unless released under
an accounted mechanism.

In a deployment the nodes do this themselves and keep the results: see :mod:`fl_client.personal`
(``personal-run-<run id>.csv`` in each node's personal directory); :func:`deployment_line`
reports how many did.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from protocol.atomic import write_atomically, write_with  # noqa: E402
from protocol.settings import RunSettings  # noqa: E402
from tasks.data import is_natural, load_dataset, specs_from_settings  # noqa: E402
from tasks.data.partition import client_test, load_client_data  # noqa: E402
from tasks.models import build_model, model_spec, set_weights  # noqa: E402
from tasks.training import evaluate, select_device  # noqa: E402
from tasks.training.personal import PersonalConfig, personalise  # noqa: E402

PERSONAL_CSV = "personal.csv"
PERSONAL_PNG = "personal.png"


def check_personalization(settings: RunSettings, engine: str) -> None:
    """``personalization`` fits the run (``ValueError`` naming the setting), before any start.

    In simulation fine-tuning needs each client's own test part (naturally federated data);
    in a deployment every node's file is its own data, and each node fine-tunes and keeps its
    personal model (:mod:`fl_client.personal`), so any dataset will do.
    """
    if settings.personalization_mode == "none":
        return
    PersonalConfig.from_settings(settings)  # epochs, learning rate
    if engine == "deployment":
        return
    if not is_natural(settings.dataset_name):
        raise ValueError(
            f"personalization.mode={settings.personalization_mode!r} needs a naturally "
            "federated dataset whose clients hold their own test parts (dataset=watch, "
            f"dataset=table), got dataset.name={settings.dataset_name!r}"
        )


def personal_table(settings: RunSettings, weights: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per client (every owner, including those a smaller federation left out).

    Columns: ``partition_id``, ``federated`` (whether it trained in the federation),
    ``examples`` (its training examples), ``test_examples``, ``epochs``, and the test
    accuracy and loss with the global and with the personal model.
    """
    dspec, _ = specs_from_settings(settings)
    bundle = load_dataset(dspec)
    owners = bundle.owners
    _, pspec = specs_from_settings(settings, owners)
    config = PersonalConfig.from_settings(settings)
    device = select_device(settings.device)
    model = build_model(model_spec(settings, bundle.input_shape, bundle.num_classes), settings.seed)
    set_weights(model, weights)
    model = model.to(device)  # the global model: personalise fine-tunes a copy
    rows = []
    for pid in range(owners):
        data = load_client_data(dspec, pspec, pid, settings.val_fraction)
        x_test, y_test = client_test(bundle, pid)
        g_loss, g_acc = evaluate(model, x_test, y_test, device)
        personal = personalise(model, data, config, device, pid)
        p_loss, p_acc = evaluate(personal, x_test, y_test, device)
        rows.append(
            {
                "partition_id": pid,
                "federated": pid < settings.num_clients,
                "examples": len(data.y_train),
                "test_examples": len(y_test),
                "epochs": config.epochs,
                "mode": config.mode,
                "global_accuracy": g_acc,
                "personal_accuracy": p_acc,
                "global_loss": g_loss,
                "personal_loss": p_loss,
            }
        )
    return pd.DataFrame(rows)


def plot_personal(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Each client's test accuracy (MSE for regression), global and personal, side by side."""
    regression = not np.isfinite(table["global_accuracy"].astype(float)).any()
    column = "loss" if regression else "accuracy"
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(table) + 2), 4), dpi=120)
    x = np.arange(len(table))
    ax.bar(x - 0.2, table[f"global_{column}"], 0.4, label="global model")
    ax.bar(x + 0.2, table[f"personal_{column}"], 0.4, label="personal model")
    ax.set_xticks(x, [str(p) for p in table["partition_id"]])
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("test MSE" if regression else "test accuracy (own test data)")
    if not regression:
        ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


def write_personal(settings: RunSettings, out: Path) -> pd.DataFrame:
    """Read ``final_model.npz``, write ``personal.csv`` and ``personal.png`` into ``out``."""
    with np.load(out / "final_model.npz", allow_pickle=False) as npz:
        weights = {k: npz[k] for k in npz.files}
    table = personal_table(settings, weights)
    write_atomically(out / PERSONAL_CSV, table.to_csv(index=False))
    plot_personal(
        table,
        out / PERSONAL_PNG,
        f"{settings.dataset_name} / {settings.model_name}: global vs personal "
        f"({settings.personalization_mode}, {settings.personalization_epochs} epochs)",
    )
    return table


def summary_line(table: pd.DataFrame) -> str:
    """``personal: mean accuracy global 0.71 -> personal 0.83 (better on 9 of 10 clients)``."""
    g, p = table["global_accuracy"].astype(float), table["personal_accuracy"].astype(float)
    if not np.isfinite(g).any():
        g, p = table["global_loss"].astype(float), table["personal_loss"].astype(float)
        better = int((p < g).sum())
        return (
            f"personal: mean test MSE global {g.mean():.4f} -> personal {p.mean():.4f} "
            f"(better on {better} of {len(table)} clients)"
        )
    return (
        f"personal: mean test accuracy global {g.mean():.4f} -> personal {p.mean():.4f}, "
        f"worst client {g.min():.4f} -> {p.min():.4f} (better on {int((p > g).sum())} of "
        f"{len(table)} clients)"
    )


def deployment_line(summary: dict) -> str:
    """``personal: 3 of 3 nodes fine-tuned ... and kept it`` (a deployment's summary)."""
    done, asked = summary.get("personalised_nodes", 0), summary.get("personalisation_asked", 0)
    return (
        f"personal: {done} of {asked} nodes fine-tuned the final model on their own data and "
        "kept it (personal-run-<run id>.csv and the model in each node's personal directory; "
        "the server learns no accuracy)"
    )


__all__ = [
    "deployment_line",
    "PERSONAL_CSV",
    "PERSONAL_PNG",
    "check_personalization",
    "personal_table",
    "plot_personal",
    "summary_line",
    "write_personal",
]
