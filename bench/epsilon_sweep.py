"""Accuracy against epsilon on MNIST: DP-SGD at several budgets, the non-private reference, 3 seeds.

A thin driver over the real sweep (``python -m experiments.run -m``, the grid of the
``eps_sweep`` preset): every
federation runs through Flower's simulation engine exactly as a user's would, and the figures
printed are the sweep's own report (``sweep_results.csv``). Re-running with the same ``--out``
skips the federations that already completed.

Usage::

    python bench/epsilon_sweep.py                                   # MNIST, 10 clients, MLP
    python bench/epsilon_sweep.py --epsilons 1 4 --seeds 0 --extra federation.rounds=2

The functional mechanism does not apply to MNIST's ten classes end to end (it serves logistic and
linear regression and a public-feature network); its sweep is ``bench/functional.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.report import collect_sweep, epsilon_curve  # noqa: E402


def main() -> None:
    """Run the sweep, then print the per-epsilon table against the non-private reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--extra",
        nargs="*",
        default=["federation.num_clients=10", "federation.rounds=5", "model=mlp"],
        help="Hydra overrides for every run",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "outputs" / f"bench-eps-{time.strftime('%Y%m%d')}"
    )
    args = parser.parse_args()
    cmd = [
        sys.executable,
        "-m",
        "experiments.run",
        "-m",  # the grid of conf/experiment/eps_sweep.yaml, with these epsilons and seeds
        f"hydra.sweep.dir={args.out}",
        "dataset=mnist",
        "federation.fraction_evaluate=0",
        "privacy=dpsgd,none",
        f"privacy.target_epsilon={','.join(f'{e:g}' for e in args.epsilons)}",
        f"seed={','.join(map(str, args.seeds))}",
        *args.extra,
    ]
    print(" ".join(cmd), flush=True)
    started = time.time()
    code = subprocess.call(cmd, cwd=REPO)
    print(f"sweep exit {code} after {time.time() - started:.0f} s", flush=True)
    table = collect_sweep(args.out)
    curve = epsilon_curve(table)
    done = table[table["status"] == "completed"]
    reference = done[done["privacy.mode"] == "none"]["final_test_accuracy"]
    print("\nfinal test accuracy by epsilon (mean, sd, runs):")
    print(curve.to_string(index=False, float_format="%.4f"))
    print(
        f"no privacy: {reference.mean():.4f} (sd {reference.std():.4f}, {len(reference)} runs)"
        if len(reference)
        else "no privacy: no completed run"
    )
    failed = table[~table["status"].isin(["completed", "duplicate"])]
    if len(failed):
        print(f"\n{len(failed)} runs did not complete:")
        print(failed[["run_dir", "status", "error"]].to_string(index=False))
    pd.DataFrame(curve).to_csv(REPO / "bench-epsilon-sweep.csv", index=False)


if __name__ == "__main__":
    main()
