"""Run the bare app on Flower's simulation engine, as fedpriv runs its own (one command).

    .venv/bin/python bench/bare_app/simulate.py [--num-clients 10] [--rounds 3] [--out DIR]
        [--run-config "target-epsilon=2 ..."]

A private ``flower-superlink --simulation`` on a free loopback port with its own ``FLWR_HOME``,
``flwr run`` of this app (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``, no telemetry),
followed with ``flwr ls`` until it finishes, every process stopped by PID: the driver fedpriv
uses (``experiments.processes.launcher.LocalSimulation``), which imports only ``psutil``. The
app itself imports nothing from fedpriv.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parent
sys.path.insert(0, str(APP.parents[1]))

from experiments.processes.launcher import LocalSimulation  # noqa: E402


def parse_run_config(text: str) -> dict[str, object]:
    """``"a=1 b=x"`` as a dict (numbers as numbers), for ``flwr run --run-config``."""
    out: dict[str, object] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if not key or not value:
            raise ValueError(f"--run-config items must be key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def run(num_clients: int, rounds: int, out: Path, extra: dict[str, object]) -> list[dict]:
    """One bare federation in ``out``; the per-round central evaluations (time, accuracy)."""
    out.mkdir(parents=True, exist_ok=True)
    timing = out / "rounds.json"
    config = {"num-server-rounds": rounds, "timing-file": str(timing), **extra}
    with LocalSimulation(out, num_clients, client_cpus=1, app_dir=APP) as sim:
        run_id = sim.submit(config)
        print(f"run {run_id} submitted", flush=True)
        status = sim.follow(run_id)
    if not status.completed:
        raise RuntimeError(f"bare run {run_id} ended as {status.text} {status.details}")
    return list(json.loads(timing.read_text()))


def main() -> None:
    """Parse arguments, run, print a summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--run-config", default="")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bare-app-") as tmp:
        out = args.out or Path(tmp)
        stamps = run(args.num_clients, args.rounds, out, parse_run_config(args.run_config))
    print(
        f"done: test accuracy {stamps[-1]['accuracy']:.4f} after {len(stamps) - 1} rounds, "
        f"{time.time() - started:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
