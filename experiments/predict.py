r"""``python -m experiments.predict RUN_DIR``: private predictions from a run's final model.

Answer queries::

    python -m experiments.predict RUN_DIR --input queries.csv --out predictions.csv \\
        --mechanism output_gaussian --epsilon 1 --delta 1e-5 --radius 0.5 [--scores]

Measure accuracy on the run's test split (a grid of epsilons and radii)::

    python -m experiments.predict RUN_DIR --evaluate --mechanism input_gaussian \\
        --epsilon 0.5 1 4 --radius 0.5

1. Load the run's final model and settings (:func:`experiments.inference.load_run`).
2. Build the mechanism (output mechanisms: the certified Lipschitz bound, ``lipschitz.json``).
3. Read and check the queries (one column per feature, named as the dataset names them; an
   optional ``id`` column is carried through), answer each with one fresh noise draw, and
   write ``predictions.csv``; or, with ``--evaluate``, write ``inference_privacy.csv`` in the
   run directory and print ``accuracy 0.9123`` per setting.

``--radius`` is in the query space: see :mod:`experiments.inference` and docs/privacy.md
("Inference privacy") for what it means per dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.inference import (
    InferenceModel,
    evaluate_private,
    load_run,
    mechanism_for,
    private_predict,
    run_test_split,
)
from privacy.inference import INFERENCE_MECHANISMS, QueryBudget
from protocol.atomic import write_atomically

RESULTS = "inference_privacy.csv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.predict", description=__doc__.split("\n")[0]
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--mechanism", default="output_gaussian", choices=sorted(INFERENCE_MECHANISMS))
    p.add_argument("--epsilon", type=float, nargs="+", default=[1.0])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--radius", type=float, nargs="+", default=[0.5])
    p.add_argument("--input", type=Path, help="CSV of queries (raw features)")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"))
    p.add_argument("--scores", action="store_true", help="also write the released scores")
    p.add_argument("--max-queries", type=int, default=None, help="cap per input (with --query-log)")
    p.add_argument("--query-log", type=Path, default=None, help="JSON file of per-input counts")
    p.add_argument("--evaluate", action="store_true", help="accuracy on the run's test split")
    return p.parse_args(argv)


def read_queries(path: Path, model: InferenceModel) -> tuple[np.ndarray, pd.Series | None]:
    """The query rows in the model's column order; ``ValueError`` naming a wrong column."""
    if not path.is_file():
        raise ValueError(f"--input={str(path)!r} does not exist")
    frame = pd.read_csv(path)
    names = list(model.space.names)
    ids = frame.pop("id") if "id" in frame.columns else None
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(
            f"--input: column {missing[0]!r} is missing ({len(missing)} of the model's "
            f"{len(names)} columns missing; expected {names[:3]}...)"
        )
    extra = [c for c in frame.columns if c not in names]
    if extra:
        raise ValueError(f"--input: column {extra[0]!r} is not a feature of this model")
    for c in names:
        if not pd.api.types.is_numeric_dtype(frame[c]) or frame[c].isna().any():
            raise ValueError(f"--input: column {c!r} must hold numbers in every row")
    return frame[names].to_numpy(np.float64), ids


def predict_file(args: argparse.Namespace, model: InferenceModel) -> None:
    """Answer ``--input`` into ``--out``."""
    if len(args.epsilon) != 1 or len(args.radius) != 1:
        raise ValueError("--epsilon and --radius take one value each without --evaluate")
    if args.input is None:
        raise ValueError("--input is required without --evaluate")
    mech = mechanism_for(
        model, args.mechanism, epsilon=args.epsilon[0], delta=args.delta, radius=args.radius[0]
    )
    raw, ids = read_queries(args.input, model)
    budget = None
    if args.max_queries is not None or args.query_log is not None:
        budget = QueryBudget(mech, args.max_queries, args.query_log)
    pred = private_predict(model, raw, mech, budget=budget)
    out = pd.DataFrame({"prediction": pred.labels})
    if ids is not None:
        out.insert(0, "id", ids.to_numpy())
    if args.scores:
        for k in range(pred.scores.shape[1]):
            out[f"score_{k}"] = pred.scores[:, k]
    write_atomically(args.out, out.to_csv(index=False))
    print(f"{len(out)} predictions under {describe(mech.describe())} -> {args.out}")


def describe(d: dict[str, float | str]) -> str:
    """One line of a mechanism's calibration."""
    return (
        f"{d['mechanism']} (epsilon {d['epsilon']:g}, delta {d['delta']:g}, radius "
        f"{d['radius']:g}, noise scale {d['noise_scale']:.4g})"
    )


def evaluate(args: argparse.Namespace, model: InferenceModel) -> pd.DataFrame:
    """Accuracy on the test split for each epsilon and radius; rows merged into the CSV."""
    x, y = run_test_split(args.run_dir)
    metric = "mse" if model.regression else "accuracy"
    rows = []
    for radius in args.radius:
        for eps in args.epsilon:
            mech = mechanism_for(
                model, args.mechanism, epsilon=eps, delta=args.delta, radius=radius
            )
            value = evaluate_private(model, x, y, mech)
            bound = model.certificate().bound if mech.stage == "output" else float("nan")
            rows.append(mech.describe() | {metric: value, "lipschitz": bound, "n": len(y)})
            print(f"{describe(mech.describe())}: {metric} {value:.4f}", flush=True)
    frame = pd.DataFrame(rows)
    path = args.run_dir / RESULTS
    if path.is_file():
        keys = ["mechanism", "epsilon", "delta", "radius"]
        old = pd.read_csv(path)
        frame = pd.concat([old, frame]).drop_duplicates(keys, keep="last")
    write_atomically(path, frame.to_csv(index=False))
    print(f"results in {path}")
    return frame


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input)."""
    args = parse_args(argv)
    try:
        model = load_run(args.run_dir)  # 1
        if args.evaluate:
            evaluate(args, model)  # 2-3
        else:
            predict_file(args, model)  # 2-3
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
