"""What a simulated client costs: 10, 100 and 1,000 clients, 10% of them per round.

Each federation runs through ``python -m experiments.run`` (its own SuperLink, Flower's
simulation engine, one CPU per client), while this script samples the memory of every process
the run started (proportional set size, so shared pages count once). Printed per size:

* start-up: seconds from launch to the server's round-0 evaluation (SuperLink, Ray, data);
* round wall time (median over rounds >= 2; round 1 also pays for the workers' imports);
* the share of a round spent outside the clients' own training, with the training spread over
  the cores that train in parallel: ``1 - (sum of clients' training seconds / cores) / wall``;
* peak memory of the whole run (all processes together).

Usage::

    python bench/scaling.py                       # 10, 100, 1000 clients, MNIST, CNN, DP-SGD
    python bench/scaling.py --sizes 10 100 --rounds 3 --extra model=mlp

Target (issue): with 1,000 clients, at most half of a round outside the clients' training,
within 8 GiB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.processes.launcher import processes_in_home, stop_process_tree  # noqa: E402


class MemorySampler(threading.Thread):
    """Peak total PSS (bytes) over a process, its descendants and the run's Flower processes."""

    def __init__(self, root: psutil.Process, home: Path, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.root, self.home, self.every = root, home, every
        self.peak = 0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            procs: dict[int, psutil.Process] = {}
            try:
                procs[self.root.pid] = self.root
                procs.update({p.pid: p for p in self.root.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
            procs.update({p.pid: p for p in processes_in_home(self.home)})
            total = 0
            for proc in procs.values():
                try:
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            if total > self.peak:
                self.peak, self.peak_processes = total, len(procs)
            self._halt.wait(self.every)

    def stop(self) -> None:
        """End sampling."""
        self._halt.set()
        self.join(timeout=10)


def run_size(num_clients: int, rounds: int, out: Path, extra: list[str]) -> dict:
    """One federation of ``num_clients``; its figures as a dict."""
    per_round = max(1, num_clients // 10)
    overrides = [
        f"hydra.run.dir={out}",
        "dataset=mnist",
        "model=cnn",
        f"federation.num_clients={num_clients}",
        "federation.fraction_train=0.1",
        "federation.fraction_evaluate=0.1",
        "privacy.eval_epsilon=0.1",  # federated evaluation under DP: noisy accuracy, accounted
        f"federation.rounds={rounds}",
        *extra,
    ]
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *overrides],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = MemorySampler(psutil.Process(proc.pid), out)
    sampler.start()
    round0 = None
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("round   0/") and round0 is None:
            round0 = time.time() - started
        if line.startswith(("round", "done", "error", "fedpriv")):
            print(f"  [{num_clients}] {line.rstrip()}", flush=True)
    code = proc.wait()
    sampler.stop()
    for leftover in processes_in_home(out):
        stop_process_tree(leftover, grace=5)
    if code != 0:
        raise RuntimeError(f"{num_clients} clients: exit {code}\n{''.join(lines[-30:])}")
    metrics = pd.read_csv(out / "metrics.csv")
    later = metrics[metrics["round"] >= 2]
    cores = min(os.cpu_count() or 1, per_round)  # one CPU per client: this many train at once
    train_wall = later["client_train_seconds_sum"] / cores
    outside = 1.0 - train_wall / later["round_seconds"]
    return {
        "clients": num_clients,
        "per_round": per_round,
        "startup_s": round0,
        "round_s_median": float(later["round_seconds"].median()),
        "round1_s": float(metrics.loc[metrics["round"] == 1, "round_seconds"].iloc[0]),
        "train_s_per_client": float(
            (later["client_train_seconds_sum"] / later["participants"]).median()
        ),
        "outside_training_share": float(outside.median()),
        "peak_memory_gib": sampler.peak / 2**30,
        "processes_at_peak": sampler.peak_processes,
        "total_s": time.time() - started,
        "final_test_accuracy": float(metrics["test_accuracy"].iloc[-1]),
    }


def main() -> None:
    """Run every size, print the table, write ``bench-scaling.csv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-scaling")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        out = args.out / f"clients-{n}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"{n} clients -> {out}", flush=True)
        rows.append(run_size(n, args.rounds, out, args.extra))
        print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(REPO / "bench-scaling.csv", index=False)
    print("\nscaling (10% of clients per round; rounds >= 2):")
    print(table.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
