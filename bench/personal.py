"""Personal models on naturally federated data (Servia-Rodriguez et al., IoTDI 2018).

On ``dataset=watch`` (10 subjects, one client each) or ``--dataset hapt`` (UCI HAPT, 30 users)
it compares, on each client's own test series: the global model of a federation, the personal
model (the global model fine-tuned on the client's own training series,
:func:`tasks.training.personal.personalise`) and a model trained on the client's data alone
(local-only). The federation is either every owner or the paper's initial model from a few
users (``--initial 3``: the first 3 owners federate, every owner then personalises). Both
without privacy and with DP-SGD at epsilon 2. Rows of the other datasets already in ``--out``
are kept.

Hyperparameters (federation learning rate, fine-tuning and local-only epochs and learning
rate) are chosen on the clients' validation series only; the test series are read once, for
the figures. The rounds run in this process through the project's code (the client data path,
the local privacy mode and its ledger, the ServerApp's strategy: ``bench/_inprocess.py``).

    .venv/bin/python bench/personal.py --rounds 10 --fed-lrs 0.1 --fed-lrs-dp 0.5 \
        --epochs 5 20 --lrs 0.02 0.1      # the figures in docs/benchmarks.md (2 seeds)
    .venv/bin/python bench/personal.py --privacy none --initial 10
    .venv/bin/python bench/personal.py --dataset hapt --initial 30 3 --seeds 0 --rounds 10 \
        --fed-lrs 0.1 0.3 --fed-lrs-dp 0.5 1.0 --epochs 5 20 --lrs 0.02 0.1   # HAPT rows
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _inprocess import run_rounds  # bench/_inprocess.py (this script's folder is on sys.path)
from flwr.supercore.task_identity import TaskIdentity

from fl_server.registry import make_strategy
from protocol.atomic import write_with
from protocol.settings import RunSettings
from tasks.data import (
    ClientData,
    DatasetSpec,
    client_test,
    load_client_data,
    load_dataset,
    specs_from_settings,
)
from tasks.models import build_model, get_weights, model_spec, set_weights
from tasks.training import evaluate
from tasks.training.personal import PersonalConfig, personalise, train_alone

HERE = Path(__file__).resolve().parent


def base_settings(
    dataset: str, privacy: str, epsilon: float, rounds: int, lr: float, seed: int
) -> RunSettings:
    owners = load_dataset(DatasetSpec(dataset, seed)).owners
    return RunSettings(
        seed=seed,
        dataset_name=dataset,
        model_name="cnn1d",
        privacy_mode=privacy,
        privacy_target_epsilon=epsilon,
        privacy_delta=1e-5,
        num_clients=owners,
        num_rounds=rounds,
        local_epochs=1,
        batch_size=32,
        learning_rate=lr,
        partitioner="natural",
        device="cpu",
    ).validate()


def client_data(settings: RunSettings) -> dict[int, ClientData]:
    n = settings.num_clients
    dspec, pspec = specs_from_settings(settings, n)
    return {p: load_client_data(dspec, pspec, p, settings.val_fraction) for p in range(n)}


def federate(settings: RunSettings, data: dict[int, ClientData], k: int) -> dict:
    """The final global weights of a federation of the first ``k`` clients."""
    s = dataclasses.replace(settings, num_clients=k)
    spec = model_spec(s, data[0].input_shape, data[0].num_classes)
    init = get_weights(build_model(spec, s.seed))
    return run_rounds(s, spec, {p: data[p] for p in range(k)}, make_strategy(s), init)


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return evaluate(model, x, y, torch.device("cpu"))[1]


LOCAL: dict[tuple, tuple[PersonalConfig, float, dict[int, torch.nn.Module]]] = {}
"""Local-only models by (dataset, seed, grid): they never see the federation, so one choice
and one training serve every privacy setting and K (the same numbers, trained once)."""


def models_for(
    settings: RunSettings,
    data: dict[int, ClientData],
    weights: dict,
    personal: PersonalConfig,
) -> dict[int, dict[str, torch.nn.Module]]:
    spec = model_spec(settings, data[0].input_shape, data[0].num_classes)
    cpu = torch.device("cpu")
    out = {}
    for pid, d in data.items():
        g = build_model(spec, settings.seed)
        set_weights(g, weights)
        out[pid] = {"global": g, "personal": personalise(g, d, personal, cpu, pid)}
    return out


def local_models(
    settings: RunSettings, data: dict[int, ClientData], weights: dict, grid: list
) -> tuple[PersonalConfig, float, dict[int, torch.nn.Module]]:
    """Local-only: (epochs, lr) chosen on validation, then each client's model (cached)."""
    key = (settings.dataset_name, settings.seed, tuple(grid))
    if key not in LOCAL:
        local, val_l = choose(settings, data, weights, grid, fine_tune=False)
        spec = model_spec(settings, data[0].input_shape, data[0].num_classes)
        init = build_model(spec, settings.seed)  # the federation's initial weights
        cpu = torch.device("cpu")
        trained = {pid: train_alone(init, d, local, cpu, pid) for pid, d in data.items()}
        LOCAL[key] = (local, val_l, trained)
    return LOCAL[key]


def choose(
    settings: RunSettings,
    data: dict[int, ClientData],
    weights: dict,
    grid: list[tuple[int, float]],
    fine_tune: bool,
) -> tuple[PersonalConfig, float]:
    """The (epochs, lr) of ``grid`` with the best mean validation accuracy over the clients."""
    spec = model_spec(settings, data[0].input_shape, data[0].num_classes)
    best: tuple[float, PersonalConfig] | None = None
    for epochs, lr in grid:
        config = PersonalConfig("finetune", epochs, lr, settings.batch_size, settings.seed)
        accs = []
        for pid, d in data.items():
            m = build_model(spec, settings.seed)
            if fine_tune:
                set_weights(m, weights)
            trained = personalise(m, d, config, torch.device("cpu"), pid)
            accs.append(accuracy(trained, d.x_val, d.y_val))
        score = float(np.mean(accs))
        if best is None or score > best[0]:
            best = (score, config)
    assert best is not None
    return best[1], best[0]


def val_accuracy(settings: RunSettings, data: dict[int, ClientData], weights: dict) -> float:
    spec = model_spec(settings, data[0].input_shape, data[0].num_classes)
    m = build_model(spec, settings.seed)
    set_weights(m, weights)
    return float(np.mean([accuracy(m, d.x_val, d.y_val) for d in data.values()]))


def run_setting(privacy: str, k: int, seed: int, args: argparse.Namespace) -> list[dict]:
    eps = args.epsilon if privacy == "dpsgd" else 0.0
    lrs = args.fed_lrs_dp if privacy == "dpsgd" else args.fed_lrs
    t0 = time.perf_counter()
    # 1. the federation's learning rate, on the validation series of its own clients
    fits = []
    for lr in lrs:
        s = base_settings(args.dataset, privacy, eps or 4.0, args.rounds, lr, seed)
        data = client_data(s)
        w = federate(s, data, k)
        fits.append((val_accuracy(s, {p: data[p] for p in range(k)}, w), lr, s, data, w))
    val_g, lr, s, data, w = max(fits, key=lambda f: f[0])
    # 2. fine-tuning and local-only epochs / lr, on the validation series
    grid = list(itertools.product(args.epochs, args.lrs))
    personal, val_p = choose(s, data, w, grid, fine_tune=True)
    local, val_l, alone = local_models(s, data, w, grid)
    # 3. test, once
    bundle = load_dataset(specs_from_settings(s)[0])
    models = models_for(s, data, w, dataclasses.replace(personal))
    for pid, m in alone.items():
        models[pid]["local"] = m
    rows = []
    for pid, ms in models.items():
        x, y = client_test(bundle, pid)
        row = {
            "dataset": args.dataset,
            "privacy": privacy if privacy == "none" else f"dpsgd eps={eps:g}",
            "initial_clients": k,
            "seed": seed,
            "partition_id": pid,
            "federated": pid < k,
            "test_examples": len(y),
            "fed_lr": lr,
            "personal_epochs": personal.epochs,
            "personal_lr": personal.learning_rate,
            "local_epochs": local.epochs,
            "local_lr": local.learning_rate,
            "val_global": val_g,
            "val_personal": val_p,
            "val_local": val_l,
        }
        for name, m in ms.items():
            row[name] = accuracy(m, x, y)
        rows.append(row)
    print(
        f"{args.dataset} {rows[0]['privacy']:>14} K={k:>2} seed {seed}: fed lr {lr:g}, personal "
        f"{personal.epochs} ep lr {personal.learning_rate:g}, local {local.epochs} ep lr "
        f"{local.learning_rate:g} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return rows


def earlier_rows(
    path: str, dataset: str, privacy: list[str], initial: list[int], seeds: list[int]
) -> pd.DataFrame:
    """The rows already in ``path`` that this run does not redo (no dataset column: watch)."""
    if not Path(path).exists():
        return pd.DataFrame()
    old = pd.read_csv(path)
    if "dataset" not in old:
        old.insert(0, "dataset", "watch")
    redo = (
        (old["dataset"] == dataset)
        & old["privacy"].isin(privacy)
        & old["initial_clients"].isin(initial)
        & old["seed"].isin(seeds)
    )
    return old[~redo]


def write_results(out: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Write the rows to ``out`` and their summary beside it (atomically); return the summary."""
    write_with(out, lambda path: frame.to_csv(path, index=False))
    summary = summarise(frame)
    summary_out = Path(out).with_name("personal_summary.csv")
    write_with(summary_out, lambda path: summary.to_csv(path, index=False))
    return summary


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setting, over every (client, seed): means, the worst client (mean over seeds of the
    worst), and the share of clients where the personal model gains >= 5 points."""
    out = []
    keys = ["dataset", "privacy", "initial_clients"]
    for (dataset, privacy, k), g in frame.groupby(keys, sort=False):
        gain = 100 * (g["personal"] - g["global"])
        out.append(
            {
                "dataset": dataset,
                "privacy": privacy,
                "initial_clients": k,
                "local_mean": g["local"].mean(),
                "global_mean": g["global"].mean(),
                "personal_mean": g["personal"].mean(),
                "local_worst": g.groupby("seed")["local"].min().mean(),
                "global_worst": g.groupby("seed")["global"].min().mean(),
                "personal_worst": g.groupby("seed")["personal"].min().mean(),
                "gain_points": gain.mean(),
                "share_gain_5": float((gain >= 5).mean()),
                "share_better": float((g["personal"] > g["global"]).mean()),
                "share_beats_local": float((g["personal"] > g["local"]).mean()),
                "rows": len(g),
            }
        )
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["watch", "hapt"], default="watch")
    parser.add_argument("--privacy", nargs="+", default=["none", "dpsgd"])
    parser.add_argument("--initial", nargs="+", type=int, default=[10, 3])
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--fed-lrs", nargs="+", type=float, default=[0.1, 0.3])
    parser.add_argument("--fed-lrs-dp", nargs="+", type=float, default=[0.5, 1.0])
    parser.add_argument("--epochs", nargs="+", type=int, default=[5, 20, 40])
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.02, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", default=str(HERE / "personal_results.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    labels = [p if p == "none" else f"dpsgd eps={args.epsilon:g}" for p in args.privacy]
    earlier = earlier_rows(args.out, args.dataset, labels, args.initial, args.seeds)
    rows: list[dict] = []
    for p, k, seed in itertools.product(args.privacy, args.initial, args.seeds):
        rows += run_setting(p, k, seed, args)
        summary = write_results(args.out, pd.concat([earlier, pd.DataFrame(rows)]))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.round(3).to_string(index=False))
    print(f"wrote {args.out} and {Path(args.out).with_name('personal_summary.csv')}")


if __name__ == "__main__":
    main()
