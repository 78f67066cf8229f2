"""Per-round latency of a loopback deployment (3 SuperNodes, TLS, node authentication) divided
by the same round in Flower's simulation engine, before and after Flower's latency settings.

    nice -n 10 .venv/bin/python bench/deploy_latency.py [--rounds 3] [--variants ...]

Every federation runs through ``python -m experiments.run`` with the same config (digits, MLP,
DP-SGD epsilon 4, 3 clients); a round's latency is the ServerApp's own ``round_seconds`` in
``metrics.csv`` (send, local training, replies, aggregation, central evaluation). The ratio uses
rounds 2.. (steady state): simulation's first round also starts Ray and its actors. Variants:

``default``     Flower's defaults: ClientApps in a SuperExec subprocess of each SuperNode,
                SuperExec polling for tasks every 1 s.
``poll``        ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.05`` on the SuperLink and the SuperNodes.
``process``     ``poll`` plus ``--isolation process`` (a SuperExec we start beside each one).
``no-eval``     ``poll`` plus ``federation.fraction_evaluate=0`` (no federated-evaluation phase:
                a fedpriv setting, it halves the message round trips per round; the default
                since federated evaluation under DP must be asked for).
``trusted``     ``no-eval`` on the deployment a participant can trust (docs/deployment.md):
                SuperNodes behind the Fleet-only nginx proxy, each running only the approved
                FAB through ``experiments.processes.fab_guard`` (hence ``--isolation
                process``), with their node policy and locked ledgers.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.local_deployment import LocalDeployment  # noqa: E402
from experiments.processes.launcher import Tuning  # noqa: E402

COMMON = ["dataset=digits", "privacy=dpsgd", "privacy.target_epsilon=4", "federation.num_clients=3"]
NO_EVAL = ["federation.fraction_evaluate=0"]
VARIANTS: dict[str, tuple[Tuning, list[str], dict[str, bool]]] = {
    "default": (Tuning(), [], {}),
    "poll": (Tuning(task_poll_interval=0.05), [], {}),
    "process": (Tuning("process", 0.05), [], {}),
    "no-eval": (Tuning(task_poll_interval=0.05), NO_EVAL, {}),
    "trusted": (Tuning(task_poll_interval=0.05), NO_EVAL, {"proxy": True, "approve_fabs": True}),
}


def _run(out: Path, overrides: list[str]) -> list[float]:
    """Run one federation; the per-round wall times the ServerApp recorded."""
    res = subprocess.run(
        [sys.executable, "-m", "experiments.run", f"hydra.run.dir={out}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    metrics = pd.read_csv(out / "metrics.csv")
    return [float(s) for s in metrics["round_seconds"].iloc[1:]]


def _median(xs: list[float]) -> float:
    """Median of the steady-state rounds (all but the first)."""
    steady = xs[1:] or xs
    return statistics.median(steady) if steady else float("nan")


def main() -> None:
    """Measure simulation, then each deployment variant; print one line each and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    rounds = [f"federation.rounds={args.rounds}"]
    with tempfile.TemporaryDirectory(prefix="deploy-latency-") as tmp:
        root = Path(tmp)
        sim = _run(root / "sim", [*COMMON, *rounds])
        sim_eval0 = _run(root / "sim-noeval", [*COMMON, *rounds, "federation.fraction_evaluate=0"])
        print(
            f"simulation: rounds {[round(s, 1) for s in sim]} s, steady median "
            f"{_median(sim):.1f} s; without federated evaluation {_median(sim_eval0):.1f} s",
            flush=True,
        )
        for name in args.variants:
            tuning, extra, deployment = VARIANTS[name]
            base = sim_eval0 if "federation.fraction_evaluate=0" in extra else sim
            started = time.monotonic()
            with LocalDeployment(root / name, nodes=3, tuning=tuning, **deployment) as dep:
                setup = time.monotonic() - started
                times = _run(root / f"{name}-run", [*COMMON, *rounds, *extra, *_connection(dep)])
            ratio = _median(times) / _median(base)
            print(
                f"deployment {name:8s}: rounds {[round(s, 1) for s in times]} s, steady median "
                f"{_median(times):.1f} s = {ratio:.2f} x simulation (setup {setup:.0f} s)",
                flush=True,
            )


def _connection(dep: LocalDeployment) -> list[str]:
    assert dep.superlink is not None and dep.pki is not None
    return [
        "federation=deployment",
        f"federation.superlink={dep.superlink.address}",
        f"federation.root_certificates={dep.pki.ca_cert}",
    ]


if __name__ == "__main__":
    main()
