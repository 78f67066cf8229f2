"""Tables and target checks of ``bench/functional.py`` (imported by that script only)."""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import numpy as np
import pandas as pd

from protocol.settings import RunSettings
from tasks.data import load_dataset, specs_from_settings

DATASETS = {
    # name: (model, metric, higher is better)
    "adult": ("logistic", "accuracy", True),
    "wage": ("linear", "mse", False),
}
CEILING_EPSILON = 1e6
"""The functional mechanism with negligible noise: the ceiling of its closed form."""


def references(dataset: str, seed: int) -> tuple[float, float]:
    """Non-private centralised fit of the same model on the same features, and a trivial one.

    Adult: scikit-learn's (nearly unregularised) logistic regression on the normalised
    records, and the majority class; test accuracy. Wage: least squares on the normalised
    records, and the training mean; test MSE of log(wage). They tell whether 'none' has
    converged and whether a private model learnt anything.
    """
    from tasks.data import public_bounds

    bundle = load_dataset(specs_from_settings(RunSettings(dataset_name=dataset, seed=seed))[0])
    bounds = public_bounds(dataset)
    x_train = bounds.features.normalise(bundle.x_train)
    x_test = bounds.features.normalise(bundle.x_test)
    if dataset == "adult":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=1e4, fit_intercept=False, max_iter=5000)
        clf.fit(x_train, bundle.y_train)
        majority = int(np.bincount(bundle.y_train).argmax())
        return float(clf.score(x_test, bundle.y_test)), float(np.mean(bundle.y_test == majority))
    y_train = bundle.y_train.astype(np.float64)
    w, *_ = np.linalg.lstsq(x_train, y_train, rcond=None)
    return (
        float(np.mean((x_test @ w - bundle.y_test) ** 2)),
        float(np.mean((y_train.mean() - bundle.y_test) ** 2)),
    )


def fmt(metric: str, value: float) -> str:
    """Accuracy with 4 decimals, MSE with 5; NaN as '-'."""
    if not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if metric == "accuracy" else f"{value:.5f}"


def accuracy_tables(
    table: pd.DataFrame, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Print each dataset's table; its CSV rows, and the means at epsilon 1 by dataset."""
    csv_rows: list[dict[str, Any]] = []
    at1: dict[str, dict[str, float]] = {}
    for name in args.datasets:
        model, metric, higher = DATASETS[name]
        d = table[table["dataset"] == name]
        grid = d[d["row"] == "grid"]
        none = float(grid[grid["mode"] == "none"]["value"].mean())
        central, trivial = np.mean([references(name, s) for s in args.seeds], axis=0)
        what = "test accuracy" if metric == "accuracy" else "test MSE of log(wage)"
        print(
            f"\n{name} / {model}: {what} of the final global model, mean of "
            f"{len(args.seeds)} seed(s) ({'higher' if higher else 'lower'} is better)"
        )
        print(f"  {'epsilon':>15}  {'functional':>10}  {'dpsgd':>14}  {'none(reference)':>15}")
        for eps in args.epsilons:
            cell = grid[grid["epsilon"] == eps]
            fm = cell[cell["mode"] == "functional"]["value"]
            dp = cell[cell["mode"] == "dpsgd"]
            accountants = sorted(set(dp["accountant"]))
            mark = "" if accountants == [args.accountant] else f" ({'/'.join(accountants)})"
            print(
                f"  {eps:>15g}  {fmt(metric, fm.mean()):>10}  "
                f"{fmt(metric, dp['value'].mean()) + mark:>14}  {fmt(metric, none):>15}"
            )
            csv_rows.append(
                {
                    "dataset": name,
                    "metric": metric,
                    "row": "epsilon",
                    "epsilon": eps,
                    "functional": fm.mean(),
                    "functional_std": fm.std(ddof=0),
                    "dpsgd": dp["value"].mean(),
                    "dpsgd_std": dp["value"].std(ddof=0),
                    "dpsgd_accountant": "/".join(accountants),
                    "none": none,
                    "none_std": grid[grid["mode"] == "none"]["value"].std(ddof=0),
                    "seeds": len(args.seeds),
                }
            )
            if eps == 1.0:
                at1[name] = {"functional": fm.mean(), "dpsgd": dp["value"].mean(), "none": none}
        paper = d[d["row"] == "paper"]["value"]
        if len(paper):
            print(
                f"  {'1 (paper bound)':>15}  {fmt(metric, paper.mean()):>10}  {'-':>14}  {'-':>15}"
            )
            csv_rows.append(
                {"dataset": name, "metric": metric, "row": "functional, paper bound",
                 "epsilon": 1.0, "functional": paper.mean(), "seeds": len(args.seeds)}
            )  # fmt: skip
        average = d[d["row"] == "average"]["value"]
        if len(average):
            print(f"  {'1 (average)':>15}  {fmt(metric, average.mean()):>10}  {'-':>14}  {'-':>15}")
            csv_rows.append(
                {"dataset": name, "metric": metric, "row": "functional, average of minimisers",
                 "epsilon": 1.0, "functional": average.mean(), "seeds": len(args.seeds)}
            )  # fmt: skip
        ceiling = float(d[d["row"] == "ceiling"]["value"].mean())
        print(
            f"  reference points: functional with negligible noise (epsilon {CEILING_EPSILON:g}, "
            f"the ceiling of its closed form) {fmt(metric, ceiling)}; centralised non-private fit "
            f"of the same model on the same features {fmt(metric, central)}; "
            f"{'majority class' if metric == 'accuracy' else 'training mean'} "
            f"{fmt(metric, trivial)}"
        )
        csv_rows.append(
            {"dataset": name, "metric": metric, "row": "functional, negligible noise",
             "epsilon": CEILING_EPSILON, "functional": ceiling, "seeds": len(args.seeds)}
        )  # fmt: skip
        csv_rows.append(
            {"dataset": name, "metric": metric, "row": "centralised non-private",
             "none": central, "seeds": len(args.seeds)}
        )  # fmt: skip
        csv_rows.append(
            {"dataset": name, "metric": metric, "row": "trivial predictor",
             "none": trivial, "seeds": len(args.seeds)}
        )  # fmt: skip
    return csv_rows, at1


def print_targets(at1: dict[str, dict[str, float]]) -> None:
    """The issue's targets at epsilon 1, met or not."""
    print("\ntargets (epsilon 1, l2 bound, means over seeds)")
    for name, v in at1.items():
        fm, dp, none = v["functional"], v["dpsgd"], v["none"]
        if DATASETS[name][1] == "accuracy":
            gap = 100.0 * (none - fm)
            print(
                f"  {name}: functional {fm:.4f} vs none {none:.4f} (gap {gap:.2f} points; "
                f"target <= 2: {'met' if gap <= 2.0 else 'NOT met'}), dpsgd {dp:.4f} "
                f"(functional ahead of dpsgd: {'yes' if fm > dp else 'NO'}, "
                f"by {100.0 * (fm - dp):+.2f} points)"
            )
        else:
            rel = 100.0 * (fm - none) / none
            print(
                f"  {name}: functional MSE {fm:.5f} vs none {none:.5f} ({rel:+.1f}% of none's "
                f"MSE; target, read as within 2%: {'met' if rel <= 2.0 else 'NOT met'}), dpsgd "
                f"MSE {dp:.5f} (functional ahead of dpsgd: {'yes' if fm < dp else 'NO'})"
            )
    if not at1:
        print("  epsilon 1 is not in --epsilons: no target check")


def timing_rows(
    times: dict[tuple[str, str], list[tuple[int, float, float]]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Print the functional/none client round-time ratios; their CSV rows."""
    csv_rows: list[dict[str, Any]] = []
    print(
        "\ntime per client round: wall time around the privacy mode's call (tasks.training), "
        "median over clients x rounds x seeds, functional at epsilon 1"
    )
    for name in args.datasets:
        fm_t, no_t = times.get((name, "functional")), times.get((name, "none"))
        if not fm_t or not no_t:
            continue
        fm_all = statistics.median(w for _, w, _ in fm_t)
        fm_first = statistics.median(w for r, w, _ in fm_t if r == 1)
        no_all = statistics.median(w for _, w, _ in no_t)
        ratio = fm_all / no_all
        inner = statistics.median(s for *_, s in fm_t) / statistics.median(s for *_, s in no_t)
        print(
            f"  {name}: functional {fm_all * 1e3:.2f} ms (round 1, objective built and noise "
            f"drawn: {fm_first * 1e3:.2f} ms), none {no_all * 1e3:.2f} ms -> functional/none "
            f"{ratio:.3f} (target close to 1; below 1 is faster; round 1 alone "
            f"{fm_first / no_all:.3f}; with LocalResult.seconds {inner:.3f})"
        )
        csv_rows.append(
            {"dataset": name, "metric": "seconds_per_client_round", "row": "median",
             "epsilon": 1.0, "functional": fm_all, "none": no_all, "ratio": ratio,
             "seeds": len(args.seeds)}
        )  # fmt: skip
    return csv_rows
