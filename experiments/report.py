"""Results as tables and plots (pandas, matplotlib): one run's, or a whole sweep's.

``python -m experiments.report <sweep dir>`` gathers every run of a Hydra multirun into
``sweep_results.csv`` and ``sweep_results.md`` with ``accuracy_vs_epsilon.png`` and
``round_curves.png``; a sweep writes them itself when it ends.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from privacy import PrivacyLedger, PureDpEvent, SampledGaussianEvent, is_private  # noqa: E402
from protocol.atomic import write_atomically, write_with  # noqa: E402

LEDGER_FILE = re.compile(r"client-(\d+)\.json")
"""A client's ledger file; its head (``client-N.head.json``) and lock lie beside it."""


def ledger_files(out_dir: Path) -> list[tuple[int, Path]]:
    """``(partition id, path)`` of every client ledger in ``out_dir/ledgers``, by id."""
    found = []
    for path in (out_dir / "ledgers").glob("client-*.json"):
        match = LEDGER_FILE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _distinct(values: list[float]) -> str:
    return ";".join(f"{v:.6g}" for v in sorted(set(values)))


def privacy_events(out_dir: Path) -> pd.DataFrame:
    """One row per ledger event of every client (``privacy_events.csv``)."""
    rows = []
    for pid, path in ledger_files(out_dir):
        ledger = PrivacyLedger.load(path)
        for i, e in enumerate(ledger.events):
            rows.append(
                {
                    "partition_id": pid,
                    "event": i,
                    "kind": e.kind,
                    "round": e.round,
                    "mechanism": getattr(e, "mechanism", "dpsgd") or e.kind,
                    "noise_multiplier": getattr(e, "noise_multiplier", np.nan),
                    "sample_rate": getattr(e, "sample_rate", np.nan),
                    "steps": getattr(e, "steps", np.nan),
                    "epsilon": getattr(e, "epsilon", np.nan),
                }
            )
    return pd.DataFrame(rows)


def ledger_epsilons(out_dir: Path) -> dict[int, float]:
    """Each client's epsilon recomputed from its ledger file (simulation: ``ledgers/``)."""
    return {pid: PrivacyLedger.load(path).epsilon() for pid, path in ledger_files(out_dir)}


def privacy_table(out_dir: Path) -> pd.DataFrame:
    """One row per client: its cumulative (epsilon, delta) from its ledger, and every event.

    ``events`` counts them; ``noise_multipliers`` and ``sample_rates`` list every distinct
    value of the DP-SGD events (a resumed or re-planned run can have several), ``steps`` sums
    them, ``pure_epsilon`` sums the pure-DP releases (functional mechanism, noisy
    evaluations). ``privacy_events.csv`` has one row per event. Clients without a ledger
    (``privacy.mode=none``) appear from ``clients.csv`` with epsilon = inf.
    """
    rows = []
    for pid, path in ledger_files(out_dir):
        ledger = PrivacyLedger.load(path)
        sgm = [e for e in ledger.events if isinstance(e, SampledGaussianEvent)]
        pure = [e for e in ledger.events if isinstance(e, PureDpEvent)]
        rows.append(
            {
                "partition_id": pid,
                "epsilon": ledger.epsilon(),
                "delta": ledger.delta,
                "accountant": ledger.accountant,
                "neighbouring": ledger.relation,
                "events": len(ledger.events),
                "rounds": sorted({e.round for e in ledger.events}),
                "noise_multipliers": _distinct([e.noise_multiplier for e in sgm]),
                "sample_rates": _distinct([e.sample_rate for e in sgm]),
                "steps": sum(e.steps for e in sgm),
                "pure_epsilon": sum(e.epsilon for e in pure),
                "mechanisms": ";".join(sorted({e.mechanism or e.kind for e in pure})),
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
    write_with(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- sweeps
SWEEP_TABLE = "sweep_results.csv"
SWEEP_MARKDOWN = "sweep_results.md"
_FROM_CONFIG = (  # columns every sweep table carries, read from each run's config.yaml
    "dataset.name",
    "model.name",
    "privacy.mode",
    "privacy.target_epsilon",
    "seed",
)
_MODE, _EPS = "privacy.mode", "privacy.target_epsilon"


@dataclass(frozen=True)
class SweepReport:
    """Where :func:`report_sweep` wrote the table, its Markdown copy and the plots."""

    table: Path
    markdown: Path
    plots: tuple[Path, ...]


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _select(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Directories under ``sweep_dir`` that hold a run (a ``status.json`` or ``summary.json``)."""
    found = {
        p.parent for name in ("status.json", "summary.json") for p in sweep_dir.glob(f"**/{name}")
    }
    return sorted(found)


def collect_sweep(sweep_dir: Path) -> pd.DataFrame:
    """One row per run: swept settings, final accuracy and loss, epsilon spent, time, status.

    Raises
    ------
    ValueError
        When ``sweep_dir`` holds no run results at all.
    """
    dirs = run_dirs(sweep_dir)
    if not dirs:
        raise ValueError(f"no run results under {sweep_dir} (no */status.json or */summary.json)")
    rows: list[dict[str, Any]] = []
    swept: list[str] = []
    for d in dirs:
        overrides = _read_yaml(d / ".hydra" / "overrides.yaml") or []
        row: dict[str, Any] = {}
        for item in overrides:
            key, _, value = str(item).partition("=")
            key = key.lstrip("+~")
            if key == "experiment":
                continue
            row[key] = value
            if key not in swept:
                swept.append(key)
        config = _read_yaml(d / "config.yaml") or _read_yaml(d / ".hydra" / "config.yaml") or {}
        for dotted in _FROM_CONFIG:
            row[dotted] = _select(config, dotted) if config else row.get(dotted)
        status = _read_json(d / "status.json")
        summary = _read_json(d / "summary.json")
        row |= {
            "status": status.get("status") or summary.get("status") or "unknown",
            "final_test_accuracy": summary.get("final_test_accuracy"),
            "final_test_loss": summary.get("final_test_loss"),
            "epsilon_spent": summary.get("epsilon_max"),
            "rounds": summary.get("rounds"),
            "wall_seconds": summary.get("wall_seconds"),
            "error": status.get("error") or "",
            "run_dir": str(d.relative_to(sweep_dir)) if d != sweep_dir else ".",
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    fixed = [c for c in _FROM_CONFIG if c not in swept]
    rest = [c for c in table.columns if c not in swept and c not in fixed]
    table = table[swept + fixed + rest]
    for column in ("final_test_accuracy", "final_test_loss", "epsilon_spent", "wall_seconds"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (no extra dependency); floats rounded to ``digits``."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.{digits}g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |"]
    lines.append("|" + "---|" * len(table.columns))
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def epsilon_curve(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, spread and count of the final metric over seeds, per privacy mode and epsilon."""
    done = table[
        (table["status"] == "completed") & table[_MODE].map(is_private).astype(bool)
    ].copy()
    metric = _metric_column(table)
    done[_EPS] = pd.to_numeric(done[_EPS], errors="coerce")
    return (
        done.groupby([_MODE, _EPS])[metric]
        .agg(["mean", "std", "count"])
        .reset_index()
        .sort_values([_MODE, _EPS])
    )


def _metric_column(table: pd.DataFrame) -> str:
    accuracy = pd.to_numeric(table["final_test_accuracy"], errors="coerce")
    return "final_test_accuracy" if accuracy.notna().any() else "final_test_loss"


def plot_sweep(table: pd.DataFrame, sweep_dir: Path) -> tuple[Path, ...]:
    """Plot the sweep: final metric against epsilon, and every run's per-round curve.

    ``accuracy_vs_epsilon.png``: mean and spread over seeds per privacy mode, with the
    non-private runs' mean as a reference line. ``round_curves.png``: test metric per round.
    """
    metric = _metric_column(table)
    label = "test accuracy" if metric == "final_test_accuracy" else "test MSE"
    curve = epsilon_curve(table)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for mode, part in curve.groupby(_MODE):
        spread = part["std"].fillna(0.0)
        ax.errorbar(
            part[_EPS],
            part["mean"],
            yerr=spread,
            fmt="o-",
            capsize=3,
            label=f"{mode} (mean ± sd over {int(part['count'].max())} seeds)",
        )
    reference = table[
        (table["status"] == "completed") & ~table[_MODE].map(is_private).astype(bool)
    ][metric]
    if len(reference):
        ax.axhline(
            float(reference.mean()),
            color="black",
            linestyle="--",
            label=f"no privacy ({len(reference)} runs)",
        )
    ax.set_xscale("log")
    if len(curve):  # label the swept budgets themselves, not powers of ten
        ax.set_xticks(sorted(set(curve[_EPS].dropna())))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("epsilon (per client, whole run)")
    ax.set_ylabel(f"final {label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("accuracy against privacy budget")
    fig.tight_layout()
    eps_png = sweep_dir / "accuracy_vs_epsilon.png"
    write_with(eps_png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    column = "test_accuracy" if metric == "final_test_accuracy" else "test_loss"
    completed = table[table["status"] == "completed"]
    finite_eps = pd.to_numeric(completed[_EPS], errors="coerce")
    norm = matplotlib.colors.LogNorm(
        vmin=max(finite_eps.min(), 1e-3), vmax=max(finite_eps.max(), 1e-3)
    )
    for row, eps in zip(completed.to_dict("records"), finite_eps, strict=True):
        path = sweep_dir / str(row["run_dir"]) / "metrics.csv"
        if not path.exists():
            continue
        metrics = pd.read_csv(path)
        private = is_private(row[_MODE])
        ax.plot(
            metrics["round"],
            metrics[column],
            "-" if private else "--",
            alpha=0.7,
            color=plt.cm.viridis(norm(eps)) if private and math.isfinite(eps) else "black",
        )
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.set_title("per-round curves (colour: epsilon; dashed: no privacy)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="epsilon")
    fig.tight_layout()
    rounds_png = sweep_dir / "round_curves.png"
    write_with(rounds_png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return eps_png, rounds_png


def report_sweep(sweep_dir: Path) -> SweepReport:
    """Gather a sweep's runs into ``sweep_results.csv``/``.md`` and its plots."""
    table = collect_sweep(sweep_dir)
    csv_path = sweep_dir / SWEEP_TABLE
    write_atomically(csv_path, table.to_csv(index=False))
    md_path = sweep_dir / SWEEP_MARKDOWN
    curve = epsilon_curve(table)
    text = f"# Sweep {sweep_dir}\n\n{to_markdown(table.drop(columns=['run_dir']))}"
    if len(curve):
        text += f"\n## Final metric over seeds\n\n{to_markdown(curve)}"
    write_atomically(md_path, text)
    return SweepReport(csv_path, md_path, plot_sweep(table, sweep_dir))


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.report <sweep dir>``: the sweep's table and plots, again."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: sweep_dir {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        report = report_sweep(args.sweep_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.markdown.read_text())
    print(f"written: {report.table}, {report.markdown}, {', '.join(map(str, report.plots))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
