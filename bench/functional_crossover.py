"""Where the functional mechanism is ahead of DP-SGD: records per client x epsilon x rounds.

The functional mechanism (FM) releases each client's noisy objective once: its noise does not
grow with rounds, epochs or model updates, and the server's solve is the same after 1 round or
20. DP-SGD's noise is calibrated to every step it takes, so more rounds (or fewer records per
client, hence a larger sampling rate per step) cost it accuracy at a fixed epsilon. This
script measures both on Adult (``logistic``) and wage (``linear``) over a grid of client
counts (records per client), epsilons and DP-SGD rounds, and prints the crossover table: in
which cells FM is ahead.

    .venv/bin/python bench/functional_crossover.py     # the defaults: 2 seeds, ~30 min here
    .venv/bin/python bench/functional_crossover.py --seeds 0 --datasets wage   # a quick look

Everything else is :mod:`bench.functional`'s federation (``run_one``: the project's real
client data path, trainers, ledgers and strategy, in process): IID partitioner, 1 local
epoch, example-weighted FedAvg, the validation records held by no client. DP-SGD's and no
privacy's batch size and learning rate are ``functional.SELECTED`` (chosen on validation
records for 10 clients and 5 rounds) and are **not re-tuned per cell**; a batch size above a
client's records is cut to its records. Writes ``bench/functional_crossover_results.csv``
(one row per federation) and prints the table (mean over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
import warnings
from pathlib import Path

import pandas as pd
from _functional_report import DATASETS, holdout  # bench/ is on sys.path
from flwr.supercore.task_identity import TaskIdentity
from functional import SELECTED, run_one

from protocol.atomic import write_with
from protocol.settings import RunSettings
from tasks.data import specs_from_settings

OUT = Path(__file__).with_name("functional_crossover_results.csv")
NONE_ROUNDS = 5
"""No privacy's rounds: those its learning rate was chosen for (plain SGD at Adult's lr 64
diverges in places at 3 rounds)."""
CLIENTS = {"adult": [10, 80], "wage": [5, 20, 60]}
"""Client counts per dataset: Adult's 26,049 pooled records give about 2,300 and 290 training
records a client; wage's 1,920 about 350, 86 and 29. (A DP-SGD client round costs about half a
second here whatever its size, so Adult's grid stops at 80 clients.)"""


def settings_for(name: str, mode: str, clients: int, rounds: int, eps: float, seed: int):
    """The run's settings: ``functional.SELECTED``'s batch and lr, cut to the smallest client."""
    b, lr = SELECTED.get((name, mode), SELECTED[name, "dpsgd"])
    base = RunSettings(
        dataset_name=name,
        model_name=DATASETS[name][0],
        num_clients=clients,
        num_rounds=rounds,
        partitioner="iid",
        val_fraction=0.1,
        fraction_evaluate=0.0,
        device="cpu",
        seed=seed,
        privacy_mode=mode,
        privacy_target_epsilon=eps if mode != "none" else RunSettings.privacy_target_epsilon,
        learning_rate=lr,
    )
    smallest = int(len(holdout(specs_from_settings(base)[0]).pool) / clients * 0.9) - 1
    return dataclasses.replace(base, batch_size=min(b, smallest)).validate()


def crossover_table(rows: pd.DataFrame, higher: dict[str, bool]) -> pd.DataFrame:
    """Mean over seeds per cell and who is ahead (FM against DP-SGD's best and worst rounds)."""
    out = []
    for (name, clients, eps), cell in rows[rows["mode"] != "none"].groupby(
        ["dataset", "clients", "epsilon"]
    ):
        fm = cell[cell["mode"] == "functional"]["value"].mean()
        dp = cell[cell["mode"] == "dpsgd"].groupby("rounds")["value"].mean()
        none = rows[(rows["dataset"] == name) & (rows["clients"] == clients)]
        none = none[none["mode"] == "none"]["value"].mean()
        best_dp = dp.max() if higher[name] else dp.min()
        ahead = fm > best_dp if higher[name] else fm < best_dp
        out.append(
            {
                "dataset": name,
                "metric": DATASETS[name][1],
                "clients": clients,
                "records_per_client": int(cell["records_per_client"].iloc[0]),
                "epsilon": eps,
                "functional": fm,
                **{f"dpsgd_{r}_rounds": v for r, v in dp.items()},
                "none": none,
                **{
                    f"fm_ahead_at_{r}": bool(fm > v if higher[name] else fm < v)
                    for r, v in dp.items()
                },
                "fm_ahead_of_every_dpsgd": bool(ahead),
            }
        )
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(CLIENTS), choices=list(CLIENTS))
    ap.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 2.0])
    ap.add_argument("--rounds", type=int, nargs="+", default=[3, 12], help="DP-SGD's rounds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    print("noise: secret (OS entropy; privacy.reproducible_noise=false, the default)")

    # 1. the cells: FM once per (clients, epsilon) (its rounds change nothing), DP-SGD per
    #    rounds, none at the fewest rounds
    cells = []
    for name in args.datasets:
        for clients in CLIENTS[name]:
            cells.append((name, "none", clients, NONE_ROUNDS, math.nan))
            for eps in args.epsilons:
                cells.append((name, "functional", clients, 1, eps))
                cells += [(name, "dpsgd", clients, r, eps) for r in args.rounds]
    total, rows, start = len(cells) * len(args.seeds), [], time.perf_counter()

    # 2. run them, writing the rows as they come (nothing lost on a crash)
    for seed in args.seeds:
        for name, mode, clients, rounds, eps in cells:
            s = settings_for(name, mode, clients, rounds, eps, seed)
            t0 = time.perf_counter()
            res, _ = run_one(s)
            metric = DATASETS[name][1]
            rows.append(
                {
                    "dataset": name,
                    "mode": mode,
                    "clients": clients,
                    "records_per_client": min(res["train_sizes"]),
                    "rounds": rounds,
                    "epsilon": eps,
                    "seed": seed,
                    "batch_size": s.batch_size,
                    "learning_rate": s.learning_rate,
                    "metric": metric,
                    "value": res[metric],
                    "max_client_epsilon": res["max_client_epsilon"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            done = len(rows)
            print(
                f"[{done}/{total}] seed {seed} {name} {clients} clients {mode} rounds {rounds} "
                f"eps {eps:g}: {metric} {res[metric]:.4f} ({rows[-1]['seconds']:.1f} s, "
                f"~{(time.perf_counter() - start) / done * (total - done) / 60:.1f} min left)",
                flush=True,
            )
            write_with(args.out, lambda p: pd.DataFrame(rows).to_csv(p, index=False))

    # 3. the crossover table
    table = crossover_table(pd.DataFrame(rows), {n: DATASETS[n][2] for n in args.datasets})
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(f"\ncrossover (mean over seeds {args.seeds}):")
        print(table.to_string(index=False))
    print(f"\nrows in {args.out}; {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
