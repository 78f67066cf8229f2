"""MNIST, IID clients, per-client (epsilon, delta) DP-SGD: federated vs centralised, one script.

Federated: ``experiments.run``'s simulation (Flower SuperLink, one SuperNode per client), each
client calibrated for epsilon over the whole run. Centralised: Opacus DP-SGD on the union of
the clients' training data, same model, epochs, batch size, learning rate and (epsilon, delta).
Also prints the round overhead: a round's wall time over the clients' own training time.

    .venv/bin/python bench/mnist_dpsgd.py [--clients 10] [--rounds 30] [--epsilon 2]

Defaults (``dpcnn``, batch 600, lr 2, 30 rounds) were chosen on MNIST's official validation
images, which no client holds (``DataBundle.x_public``), never on the test split: by
``bench/mnist_tune.py``'s in-process FedAvg of the same client code, secret noise, PLD
(rows in ``bench/mnist_tune_validation_results.csv``; docs/benchmarks.md). The clients hold
the official 50,000 training images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.run import run_federation
from privacy import PrivacyLedger, make_generator, make_private, plan_dpsgd
from protocol.settings import RunSettings
from tasks.data import client_partitions, load_dataset, specs_from_settings, split_train_val
from tasks.models import ModelSpec, build_model
from tasks.training import evaluate, make_loader, train_epochs
from tasks.training.dpsgd import grad_sample_mode


def centralised(settings: RunSettings) -> tuple[float, float, float]:
    """DP-SGD on the union of the clients' training data; returns (accuracy, epsilon, s)."""
    dspec, pspec = specs_from_settings(settings)
    bundle = load_dataset(dspec)
    rows = np.concatenate(
        [
            split_train_val(idx, settings.val_fraction, pspec.seed, pid)[0]
            for pid, idx in enumerate(client_partitions(dspec, pspec))
        ]
    )
    x, y = bundle.x_train[rows], bundle.y_train[rows]
    epochs = settings.num_rounds * settings.local_epochs
    plan = plan_dpsgd(
        target_epsilon=settings.privacy_target_epsilon,
        delta=settings.privacy_delta,
        n_train=len(y),
        batch_size=settings.batch_size,
        local_epochs=epochs,
        rounds=1,
        accountant=settings.privacy_accountant,
    )
    spec = ModelSpec(
        settings.model_name, bundle.input_shape, bundle.num_classes, hidden=settings.model_hidden
    )
    model = build_model(spec, settings.seed)
    gen = make_generator(None, secure=True)
    pt = make_private(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=settings.learning_rate),
        data_loader=make_loader(x, y, settings.batch_size, gen),
        plan=plan,
        max_grad_norm=settings.privacy_max_grad_norm,
        generator=gen,
        secure=not settings.privacy_reproducible_noise,
        grad_sample_mode=grad_sample_mode(settings.privacy_grad_sample_mode, settings.model_name),
    )
    start = time.perf_counter()
    for epoch in range(epochs):
        train_epochs(
            pt.module,
            pt.data_loader,
            pt.optimizer,
            1,
            torch.device("cpu"),
            empty_step=pt.empty_step,
            reduce=pt.loss,
        )
        _, acc = evaluate(model, bundle.x_test, bundle.y_test, torch.device("cpu"))
        print(f"  centralised epoch {epoch + 1}/{epochs}: test accuracy {acc:.4f}", flush=True)
    seconds = time.perf_counter() - start
    ledger = PrivacyLedger(settings.privacy_delta, plan.accountant, [pt.event(epochs)])
    eps = ledger.epsilon()
    return acc, eps, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--epsilon", type=float, default=2.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2.0)
    ap.add_argument("--model", default="dpcnn")
    ap.add_argument("--hidden", type=int, default=32, help="model.hidden")
    ap.add_argument("--skip-central", action="store_true")

    ap.add_argument("--out", default=f"outputs/bench-mnist-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args()

    settings = RunSettings(
        dataset_name="mnist",
        model_name=args.model,
        model_hidden=args.hidden,
        privacy_mode="dpsgd",
        privacy_target_epsilon=args.epsilon,
        privacy_delta=args.delta,
        num_clients=args.clients,
        num_rounds=args.rounds,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        fraction_evaluate=0.0,
        val_fraction=0.0,
        output_dir=str(Path(args.out).resolve()),
    ).validate()
    print(f"federated: {settings}", flush=True)
    start = time.perf_counter()
    summary = run_federation(settings, client_cpus=1, client_gpus=0.0)
    fed_wall = time.perf_counter() - start
    metrics = pd.read_csv(Path(settings.output_dir) / "metrics.csv").iloc[1:]
    ncpu = torch.multiprocessing.cpu_count()
    overhead = metrics["round_seconds"] / metrics["client_train_seconds_sum"]
    overhead_par = metrics["round_seconds"] / (metrics["client_train_seconds_sum"] / ncpu)

    rows = [
        {
            "setting": f"federated, {args.clients} IID clients",
            "test_accuracy": summary["final_test_accuracy"],
            "epsilon": summary["epsilon_max"],
            "seconds": fed_wall,
        }
    ]
    if not args.skip_central:
        acc, eps, secs = centralised(settings)
        rows.append(
            {
                "setting": "centralised (union)",
                "test_accuracy": acc,
                "epsilon": eps,
                "seconds": secs,
            }
        )
    table = pd.DataFrame(rows)
    print()
    print(
        f"MNIST {args.model}, per-client epsilon {args.epsilon:g} (delta {args.delta:g}), "
        f"{args.rounds} rounds x 1 local epoch, batch {args.batch_size}, lr {args.lr:g}, "
        f"hidden {args.hidden}"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if len(rows) == 2:
        gap = 100 * (rows[1]["test_accuracy"] - rows[0]["test_accuracy"])
        print(f"centralised minus federated: {gap:.2f} accuracy points")
    print(
        f"round overhead: round wall time / sum of clients' training time = "
        f"{overhead.median():.2f} (median over rounds); / (sum over {ncpu} cores) = "
        f"{overhead_par.median():.2f}"
    )
    print(f"federated results in {settings.output_dir}")


if __name__ == "__main__":
    main()
