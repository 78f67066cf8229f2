"""Results of one run as tables and a plot (pandas, matplotlib), from its output directory."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from privacy import PrivacyLedger, SampledGaussianEvent  # noqa: E402


def privacy_table(out_dir: Path) -> pd.DataFrame:
    """One row per client: its cumulative (epsilon, delta) and what was spent, from its ledger.

    Clients without a ledger (``privacy.mode=none``) appear from ``clients.csv`` with
    epsilon = inf.
    """
    rows = []
    for path in sorted((out_dir / "ledgers").glob("client-*.json")):
        ledger = PrivacyLedger.load(path)
        sgm = [e for e in ledger.events if isinstance(e, SampledGaussianEvent)]
        rows.append(
            {
                "partition_id": int(path.stem.split("-")[1]),
                "epsilon": ledger.epsilon(),
                "delta": ledger.delta,
                "accountant": ledger.accountant,
                "events": len(ledger.events),
                "rounds": sorted({e.round for e in ledger.events}),
                "noise_multiplier": sgm[0].noise_multiplier if sgm else np.nan,
                "sample_rate": sgm[0].sample_rate if sgm else np.nan,
                "steps": sum(e.steps for e in sgm),
            }
        )
    table = pd.DataFrame(rows)
    clients_csv = out_dir / "clients.csv"
    if clients_csv.exists() and clients_csv.stat().st_size > 1:
        clients = pd.read_csv(clients_csv)
        counts = (
            clients.pivot_table(
                index="partition_id", columns="status", values="round", aggfunc="count"
            )
            .fillna(0)
            .astype(int)
            .add_prefix("rounds_")
            .reset_index()
        )
        table = counts if table.empty else table.merge(counts, on="partition_id", how="outer")
        if "epsilon" not in table:
            table["epsilon"] = np.inf
    return table.sort_values("partition_id").reset_index(drop=True) if len(table) else table


def plot_run(metrics: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Test accuracy and the largest client epsilon per round, on twin axes, as a PNG."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    regression = not np.isfinite(metrics["test_accuracy"].astype(float)).any()
    column, label = ("test_loss", "test MSE") if regression else ("test_accuracy", "test accuracy")
    ax.plot(metrics["round"], metrics[column], "o-", color="tab:blue", label=label)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label, color="tab:blue")
    if not regression:
        ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if "epsilon_max" in metrics and np.isfinite(metrics["epsilon_max"].astype(float)).any():
        ax2 = ax.twinx()
        ax2.plot(metrics["round"], metrics["epsilon_max"], "s--", color="tab:red")
        ax2.set_ylabel("epsilon spent (max over clients)", color="tab:red")
        ax2.set_ylim(bottom=0)
    ax.set_title(title or "federated training")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
