"""Inference privacy: test accuracy against epsilon at radius alpha, per mechanism and model.

``python bench/inference_privacy.py`` (about two minutes on two cores)

1. Train each model centrally with the project's code (``tasks.models``, ``train_epochs``) on
   the training split: digits (pixels, the query space itself) and Adult (the columns scaled
   by their public ranges, the query space of :mod:`experiments.inference`). Models: ``mlp``
   as the zoo builds it, and ``mlp_lip``, the same MLP with every ``Linear`` projected after
   each step onto spectral norm <= 2 (a Lipschitz-constrained model, bound <= 4). Fixed
   hyperparameters, none chosen on the test split.
2. Certify each model's Lipschitz bound (:func:`privacy.inference.lipschitz_bound`).
3. For alpha in {0.1, 0.5, 1}, epsilon in {0.5, 1, 2, 4, 8, 16} (delta 1e-5) and each
   mechanism, the accuracy of private predictions on the test split (Adult: a fixed random
   3,000 of its 16,281 test rows, to keep the exact Laplace sampler quick); one fresh draw
   per query, one repetition.
4. Print the table and where output perturbation beats input perturbation by more than two
   standard errors of the difference (``2 sqrt(2 p (1 - p) / n)``); write
   ``bench/inference_privacy_results.csv``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.inference import InferenceModel, QuerySpace, evaluate_private  # noqa: E402
from privacy.inference import make_mechanism  # noqa: E402
from protocol.atomic import write_atomically  # noqa: E402
from tasks.data import DatasetSpec, load_dataset, public_bounds  # noqa: E402
from tasks.models import ModelSpec, build_model  # noqa: E402
from tasks.training import make_loader, train_epochs  # noqa: E402

ALPHAS = (0.1, 0.5, 1.0)
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
DELTA = 1e-5
MECHANISMS = ("input_gaussian", "output_gaussian", "output_laplace")
LAYER_LIMIT = 2.0
"""``mlp_lip``: each Linear's spectral norm is kept <= 2, so the model's bound is <= 4."""
OUT = Path(__file__).with_name("inference_privacy_results.csv")


def query_data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and test rows in the query space (pixels; Adult scaled by public ranges)."""
    b = load_dataset(DatasetSpec(name, seed=0))
    fb = public_bounds(name).features
    lo, span = np.asarray(fb.lower, np.float32), np.asarray(fb.upper - fb.lower, np.float32)
    xtr = ((b.x_train.reshape(len(b.x_train), -1) - lo) / span).clip(0, 1).astype(np.float32)
    xte = ((b.x_test.reshape(len(b.x_test), -1) - lo) / span).clip(0, 1).astype(np.float32)
    yte = b.y_test
    if len(yte) > 3000:
        keep = np.random.default_rng(0).permutation(len(yte))[:3000]
        xte, yte = xte[keep], yte[keep]
    return xtr, b.y_train, xte, yte


def project_spectral(model: torch.nn.Module, limit: float = 1.0) -> None:
    """Scale every ``Linear`` weight down to spectral norm ``<= limit`` (exact SVD)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                norm = float(torch.linalg.matrix_norm(m.weight, ord=2))
                if norm > limit:
                    m.weight.mul_(limit / norm)


def train(
    x: np.ndarray, y: np.ndarray, classes: int, lipschitz: bool, epochs: int
) -> torch.nn.Module:
    """The zoo's ``mlp`` (hidden 64) by SGD; ``lipschitz``: each step projected (bound <= 4)."""
    model = build_model(ModelSpec("mlp", (x.shape[1],), classes, 64), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = make_loader(x, y, 64, torch.Generator().manual_seed(0))
    if not lipschitz:
        train_epochs(model, loader, opt, epochs, torch.device("cpu"))
        return model.eval()
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            project_spectral(model, LAYER_LIMIT)
    return model.eval()


def main() -> None:
    """Steps 1-4."""
    rows = []
    started = time.time()
    for dataset, epochs in (("digits", 30), ("adult", 5)):
        xtr, ytr, xte, yte = query_data(dataset)  # 1
        classes = int(ytr.max()) + 1
        d = xtr.shape[1]
        space = QuerySpace(tuple(f"q{i}" for i in range(d)), np.ones(d), np.zeros(d), True)
        for label, lip in (("mlp", False), ("mlp_lip", True)):
            net = train(xtr, ytr, classes, lip, epochs)
            model = InferenceModel.from_module(net, (d,), classes, space)
            bound = model.certificate().bound  # 2
            exact = evaluate_private(model, xte, yte, make_mechanism("none"))
            majority = float(np.mean(yte == np.bincount(ytr).argmax()))
            print(
                f"{dataset} {label}: Lipschitz bound {bound:.3f}, accuracy {exact:.4f} (no "
                f"noise), majority class {majority:.4f}, {len(yte)} test rows"
            )
            for alpha in ALPHAS:  # 3
                for eps in EPSILONS:
                    for name in MECHANISMS:
                        mech = make_mechanism(
                            name,
                            epsilon=eps,
                            delta=DELTA,  # output_laplace is pure: it reports delta 0
                            radius=alpha,
                            lipschitz=bound,
                            outputs=classes,
                        )
                        acc = evaluate_private(model, xte, yte, mech)
                        rows.append(
                            {
                                "dataset": dataset,
                                "model": label,
                                "lipschitz": bound,
                                "non_private": exact,
                                "majority": majority,
                                "n_test": len(yte),
                                "mechanism": name,
                                "alpha": alpha,
                                "epsilon": eps,
                                "delta": mech.delta,
                                "noise_scale": mech.noise_scale,
                                "accuracy": acc,
                            }
                        )
    frame = pd.DataFrame(rows)
    write_atomically(OUT, frame.to_csv(index=False))  # 4
    wide = frame.pivot_table(
        index=["dataset", "model", "alpha", "epsilon"], columns="mechanism", values="accuracy"
    )
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(wide.round(3).to_string())
    best_out = wide[["output_gaussian", "output_laplace"]].max(axis=1)
    n = frame.groupby(["dataset", "model", "alpha", "epsilon"])["n_test"].first()
    p = wide["input_gaussian"]
    margin = 2 * np.sqrt(2 * p * (1 - p) / n)  # two standard errors of a difference
    wins = wide[best_out > p + margin]
    print(
        "\noutput perturbation beats input perturbation by more than two standard errors in "
        f"{len(wins)} of {len(wide)} settings:"
    )
    print(wins.round(3).to_string() if len(wins) else "  none")
    print(f"\n{len(frame)} rows in {OUT} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
