"""What the default accountant changes: noise and accuracy at equal epsilon, before and after.

Before issue 12 the default was Opacus' RDP accountant under add/remove-one neighbours, while
every reply published the client's example count ``n``, which add/remove-one does not allow.
Now the default is dp_accounting's PLD under replace-one (``n`` public). This script
calibrates one client's DP-SGD noise for the same epsilon with three accountants:

``opacus-rdp``        the old default (add/remove-one; registered here for the comparison only)
``pld-add-remove``    PLD under the same, old relation: what a tighter accountant alone buys
``pld``               the new default, PLD under replace-one: the relation the replies allow

and, for each, prints the noise multiplier, the epsilon that accountant reports, the epsilon
the same noise really has under replace-one, and the final test accuracy of in-process
federations of the project's client code (:mod:`bench._inprocess`: real privacy modes,
replies and strategy; no Flower transport) over several seeds, with secret noise (the
partition is seeded, the DP noise is not, so seeds differ in partition and noise).

    .venv/bin/python bench/accountant.py                       # digits, the default run
    .venv/bin/python bench/accountant.py --datasets mnist --seeds 0 --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import dp_accounting as dpa
import pandas as pd
import torch
from _inprocess import run_rounds  # bench/_inprocess.py (this script's folder is on sys.path)
from dp_accounting.pld import pld_privacy_accountant
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

from fl_server.registry import make_strategy
from privacy import plan_dpsgd
from privacy.accounting import History, get_accountant, register_accountant
from protocol.settings import RunSettings
from tasks.data import load_client_data, load_dataset, specs_from_settings
from tasks.models import ModelSpec, build_model, get_weights
from tasks.training import evaluate


@dataclass(frozen=True)
class OpacusRdp:
    """Opacus' RDP accountant (add/remove-one): fedpriv's default before issue 12."""

    name: str = "opacus-rdp"
    relation: str = "add_remove_one"

    def epsilon(self, history: History, delta: float) -> float:
        if not history:
            return 0.0
        acc = RDPAccountant()
        acc.history = list(history)
        return float(acc.get_epsilon(delta=delta))


@dataclass(frozen=True)
class PldAddRemove:
    """dp_accounting's PLD under add/remove-one (pessimistic, discretisation 1e-3)."""

    name: str = "pld-add-remove"
    relation: str = "add_remove_one"

    def epsilon(self, history: History, delta: float) -> float:
        acc = pld_privacy_accountant.PLDAccountant(
            dpa.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-3
        )
        for nm, q, steps in history:
            event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(nm))
            acc.compose(dpa.SelfComposedDpEvent(event, steps))
        return float(acc.get_epsilon(delta))


register_accountant(OpacusRdp())
register_accountant(PldAddRemove())
ACCOUNTANTS = ("opacus-rdp", "pld-add-remove", "pld")

CONFIGS = {
    # the default run: python -m experiments.run
    "digits": RunSettings(),
    # bench/mnist_dpsgd.py's defaults
    "mnist": RunSettings(
        dataset_name="mnist",
        model_name="dpcnn",
        model_hidden=32,
        privacy_target_epsilon=2.0,
        num_clients=10,
        num_rounds=20,
        batch_size=600,
        learning_rate=4.0,
        val_fraction=0.0,
    ),
}


def federation(dataset: str, accountant: str, seed: int) -> dict[str, Any]:
    """One in-process federation; the final test accuracy and the calibrated noise."""
    warnings.filterwarnings("ignore")
    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    settings = dataclasses.replace(
        CONFIGS[dataset], privacy_accountant=accountant, seed=seed
    ).validate()
    dspec, pspec = specs_from_settings(settings)
    data = {
        pid: load_client_data(dspec, pspec, pid, settings.val_fraction)
        for pid in range(settings.num_clients)
    }
    bundle = load_dataset(dspec)
    spec = ModelSpec(
        settings.model_name, bundle.input_shape, bundle.num_classes, settings.model_hidden
    )
    start = time.perf_counter()
    final = run_rounds(
        settings,
        spec,
        data,
        make_strategy(settings, None),
        get_weights(build_model(spec, settings.seed)),
    )
    model = build_model(spec, settings.seed)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in final.items()})
    _, acc = evaluate(model, bundle.x_test, bundle.y_test, torch.device("cpu"))
    return {
        "dataset": dataset,
        "accountant": accountant,
        "seed": seed,
        "test_accuracy": acc,
        "seconds": time.perf_counter() - start,
        "n_train": min(len(d.y_train) for d in data.values()),
    }


def noise_row(dataset: str, accountant: str, n_train: int) -> dict[str, Any]:
    s = dataclasses.replace(CONFIGS[dataset], privacy_accountant=accountant)
    plan = plan_dpsgd(
        target_epsilon=s.privacy_target_epsilon,
        delta=s.privacy_delta,
        n_train=n_train,
        batch_size=s.batch_size,
        local_epochs=s.local_epochs,
        rounds=s.num_rounds,
        accountant=accountant,
    )
    history = ((plan.noise_multiplier, plan.sample_rate, plan.total_steps),)
    return {
        "relation": get_accountant(accountant).relation,
        "noise_multiplier": plan.noise_multiplier,
        "epsilon_reported": get_accountant(accountant).epsilon(history, s.privacy_delta),
        "epsilon_replace_one": get_accountant("pld").epsilon(history, s.privacy_delta),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits"], choices=sorted(CONFIGS))
    ap.add_argument("--accountants", nargs="+", default=list(ACCOUNTANTS), choices=ACCOUNTANTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=1, help="federations at once (processes)")
    ap.add_argument("--out", default="bench-accountant.csv")
    args = ap.parse_args()
    jobs = [(d, a, s) for d in args.datasets for a in args.accountants for s in args.seeds]
    print(f"{len(jobs)} federations, secret noise (OS entropy), {args.jobs} at a time", flush=True)
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(federation, *zip(*jobs, strict=True)):
            rows.append(row)
            print(
                f"  {row['dataset']} {row['accountant']} seed {row['seed']}: "
                f"test accuracy {row['test_accuracy']:.4f} ({row['seconds']:.0f} s)",
                flush=True,
            )
            pd.DataFrame(rows).to_csv(args.out, index=False)
    runs = pd.DataFrame(rows)
    table = (
        runs.groupby(["dataset", "accountant"], sort=False)
        .agg(
            accuracy_mean=("test_accuracy", "mean"),
            accuracy_sd=("test_accuracy", "std"),
            seeds=("seed", "count"),
            n_train=("n_train", "min"),
        )
        .reset_index()
    )
    noise = [
        noise_row(d, a, n)
        for d, a, n in zip(table.dataset, table.accountant, table.n_train, strict=True)
    ]
    table = pd.concat([table, pd.DataFrame(noise)], axis=1)
    for dataset in args.datasets:
        s = CONFIGS[dataset]
        print(
            f"\n{dataset}: {s.num_clients} clients, {s.num_rounds} rounds, {s.model_name}, "
            f"batch {s.batch_size}, lr {s.learning_rate:g}, target epsilon "
            f"{s.privacy_target_epsilon:g} (delta {s.privacy_delta:g}) per client"
        )
        part = table[table.dataset == dataset].drop(columns=["dataset", "n_train"])
        print(part.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nrows in {args.out}")


if __name__ == "__main__":
    main()
