"""fedpriv's own overhead: fedpriv and a bare Flower app of the usual shape, side by side.

    nice -n 10 .venv/bin/python bench/overhead.py [--figures run sweep deploy breakdown]
        [--repeats 2] [--deploy-rounds 4] [--out bench/overhead_results.csv]

The bare app (``bench/bare_app``: the same MLP, digits split IID, Opacus DP-SGD with
``make_private_with_epsilon`` in every round, FedAvg, Message API) runs through the same
engine as fedpriv: its own ``flower-superlink --simulation`` driven by ``flwr run``
(``bench/bare_app/simulate.py``), or the same :class:`LocalDeployment`. Figures, each with its
ratio fedpriv/bare measured in this run:

``run``        ``python -m experiments.run federation.num_clients=10`` (DP-SGD, digits, 3 rounds)
               against ``bench/bare_app/simulate.py --num-clients 10``, recalibrating in every
               round, and the same given fedpriv's noise multiplier (``noise-multiplier``:
               ``make_private``, as Flower's Opacus example; Flower's floor): command to
               prompt, median of ``--repeats`` (who goes first rotates).
``sweep``      ``experiments.run -m privacy.target_epsilon=1,2,4,8,16,32`` (3 clients, 3
               rounds each) against six bare runs one after the other.
``deploy``     a steady-state round (median of rounds >= 2) on one loopback LocalDeployment
               (3 SuperNodes, TLS, node authentication, Flower's default Tuning): fedpriv (one
               train message per round) against the bare app (FedAvg's default: a train and an
               evaluate message per round) and the floor: the bare app with fixed noise and
               no evaluate message.
``breakdown``  where a run's time goes: a timeline of the ``run`` figure's last fedpriv and
               fixed-noise bare runs from the SuperLink's and the run's logs, imports
               (``python -X importtime``, self time by package), and in fresh processes the
               config and data checks, the DP calibration, a client's data loading and the
               results writing.

Rows go to ``--out`` (rows of figures not measured are kept), written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overhead_breakdown import BARE, REPO, Rows, import_rows, phase_rows, probe_rows, row  # noqa: E402

from protocol.atomic import write_atomically  # noqa: E402

FEDPRIV = [sys.executable, "-m", "experiments.run"]
BARE_SIM = [sys.executable, str(BARE / "simulate.py")]
EPSILONS = (1, 2, 4, 8, 16, 32)
FIGURES = ("run", "sweep", "deploy", "breakdown")
FIELDS = ["figure", "measure", "fedpriv", "bare", "ratio", "unit", "note", "measured_at"]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Run ``cmd`` in the checkout; (wall seconds, epoch at start, epoch at exit)."""
    t0, m0 = time.time(), time.monotonic()
    res = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=3600, check=False
    )
    wall = time.monotonic() - m0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return wall, t0, time.time()


def fedpriv_rounds(run_dir: Path) -> list[float]:
    """Round 1.. wall times fedpriv's ServerApp recorded (``metrics.csv``)."""
    with open(run_dir / "metrics.csv") as f:
        return [float(r["round_seconds"]) for r in csv.DictReader(f) if int(r["round"]) > 0]


def bare_rounds(run_dir: Path) -> list[float]:
    """Round 1.. wall times of the bare app: between its central evaluations."""
    stamps = [s["time"] for s in json.loads((run_dir / "rounds.json").read_text())]
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def steady(rounds: list[float]) -> float:
    """Median of rounds >= 2 (all rounds when there is only one)."""
    return statistics.median(rounds[1:] or rounds)


# --------------------------------------------------------------------------- figures
APPS = ("fedpriv", "bare", "bare-fixed")


def fixed_noise() -> float:
    """fedpriv's calibrated noise multiplier on the run figure's clients (121 examples)."""
    from privacy import plan_dpsgd

    plan = plan_dpsgd(
        target_epsilon=4.0, delta=1e-5, n_train=121, batch_size=32, local_epochs=1, rounds=3
    )
    return float(plan.noise_multiplier)


def figure_run(tmp: Path, repeats: int, timelines: dict[str, list]) -> Rows:
    """(a) 10 clients, 3 rounds: command to prompt, first and later rounds.

    ``bare`` recalibrates every round; ``bare-fixed`` is the same app given fedpriv's noise
    multiplier (``make_private``, no calibration, as Flower's Opacus example): Flower's floor.
    """
    walls: dict[str, list[float]] = {a: [] for a in APPS}
    firsts: dict[str, list[float]] = {a: [] for a in APPS}
    laters: dict[str, list[float]] = {a: [] for a in APPS}
    sigma = fixed_noise()
    for i in range(repeats):
        for who in APPS[i % 3 :] + APPS[: i % 3]:  # who goes first rotates
            out = tmp / f"run-{who}-{i}"
            if who == "fedpriv":
                cmd = [*FEDPRIV, "federation.num_clients=10", f"hydra.run.dir={out}"]
            else:
                cmd = [*BARE_SIM, "--num-clients", "10", "--rounds", "3", "--out", str(out)]
                cmd += ["--run-config", f"noise-multiplier={sigma if who == 'bare-fixed' else 0}"]
            wall, t0, t1 = timed(cmd)
            rounds = (fedpriv_rounds if who == "fedpriv" else bare_rounds)(out)
            walls[who].append(wall)
            firsts[who].append(rounds[0])
            laters[who].append(steady(rounds))
            timelines[who] = [out, t0, t1, rounds]
            print(f"  {who} run {i}: {wall:.1f} s, rounds {[round(r, 1) for r in rounds]}")
    med = {k: statistics.median(v) for k, v in walls.items()}
    rows = []
    for bare, what in (("bare", "recalibrating"), ("bare-fixed", "fixed noise")):
        note = f"median of {repeats}: fedpriv {fmt(walls['fedpriv'])}, bare {fmt(walls[bare])}"
        rows += [
            row("run", f"command to prompt (bare {what})", med["fedpriv"], med[bare], note=note),
            row(
                "run",
                f"first round (bare {what})",
                statistics.median(firsts["fedpriv"]),
                statistics.median(firsts[bare]),
            ),
            row(
                "run",
                f"later round, median of rounds >= 2 (bare {what})",
                statistics.median(laters["fedpriv"]),
                statistics.median(laters[bare]),
            ),
        ]
    return rows


def figure_sweep(tmp: Path) -> Rows:
    """(b) six small federations: one Hydra multirun against six bare runs."""
    eps = ",".join(str(e) for e in EPSILONS)
    fed, _, _ = timed(
        [*FEDPRIV, "-m", f"privacy.target_epsilon={eps}", f"hydra.sweep.dir={tmp / 'sweep'}"]
    )
    bare = 0.0
    for e in EPSILONS:
        wall, _, _ = timed(
            [
                *BARE_SIM,
                "--num-clients",
                "3",
                "--rounds",
                "3",
                "--run-config",
                f"target-epsilon={e}",
            ]
        )
        bare += wall
    note = f"privacy.target_epsilon={eps}, 3 clients, 3 rounds each"
    return [row("sweep", "6 federations: command(s) to prompt", fed, bare, note=note)]


def figure_deploy(tmp: Path, rounds: int) -> Rows:
    """(c) a steady-state round on one loopback deployment of 3 SuperNodes."""
    from experiments.local_deployment import LocalDeployment

    results: dict[str, list[float]] = {}
    setup_start = time.monotonic()
    with LocalDeployment(tmp / "deploy", nodes=3, max_epsilon=1000.0) as dep:
        setup = time.monotonic() - setup_start
        assert dep.superlink is not None and dep.pki is not None
        out = tmp / "deploy-fedpriv"
        timed(
            [
                *FEDPRIV,
                f"hydra.run.dir={out}",
                "federation=deployment",
                f"federation.superlink={dep.superlink.address}",
                f"federation.root_certificates={dep.pki.ca_cert}",
                "federation.num_clients=3",
                f"federation.rounds={rounds}",
            ]
        )
        results["fedpriv"] = fedpriv_rounds(out)
        for name, fraction, sigma in (("bare", 1.0, 0.0), ("bare-floor", 0.0, fixed_noise())):
            out = tmp / f"deploy-{name}"
            cli = dep.superlink.cli(out)
            cli.app_dir = BARE
            config = {
                "num-server-rounds": rounds,
                "fraction-evaluate": fraction,
                "noise-multiplier": sigma,
                "timing-file": str(out / "rounds.json"),
            }
            status = cli.follow(cli.submit(config), timeout=3600)
            if not status.completed:
                raise RuntimeError(f"bare deployment run ended as {status.text} {status.details}")
            results[name] = bare_rounds(out)
    for name, times in results.items():
        print(f"  deployment {name}: rounds {[round(t, 1) for t in times]} s (setup {setup:.0f} s)")
    fed = steady(results["fedpriv"])
    return [
        row(
            "deploy",
            "round on 3 SuperNodes, median of rounds >= 2",
            fed,
            steady(results["bare"]),
            note="bare: FedAvg default, train + evaluate message",
        ),
        row(
            "deploy",
            "same, bare with fixed noise and no evaluate message",
            fed,
            steady(results["bare-floor"]),
            note="bare noise-multiplier set, fraction-evaluate=0: one message a round (floor)",
        ),
    ]


def fmt(xs: list[float]) -> str:
    """``[12.3, 14.0]``."""
    return "[" + ", ".join(f"{x:.1f}" for x in xs) + "]"


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", nargs="+", default=list(FIGURES), choices=FIGURES)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each app in 'run'")
    parser.add_argument("--deploy-rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "overhead_results.csv")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.deploy_rounds < 2:
        parser.error(
            f"--deploy-rounds must be >= 2 (rounds >= 2 are measured), got {args.deploy_rounds}"
        )
    return args


def save(path: Path, rows: Rows, figures: set[str]) -> None:
    """Write ``rows`` over the old rows of ``figures``; other figures' rows are kept."""
    kept: Rows = []
    if path.exists():
        with open(path) as f:
            kept = [r for r in csv.DictReader(f) if r.get("figure") not in figures]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept + rows)
    write_atomically(path, buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    """Measure the chosen figures; print each with its ratio; write the CSV."""
    args = parse_args(argv)
    rows: Rows = []
    timelines: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp_name:
        tmp = Path(tmp_name)
        steps: dict[str, Callable[[], Rows]] = {
            "run": lambda: figure_run(tmp, args.repeats, timelines),
            "sweep": lambda: figure_sweep(tmp),
            "deploy": lambda: figure_deploy(tmp, args.deploy_rounds),
            "breakdown": lambda: (
                (
                    phase_rows({"fedpriv": timelines["fedpriv"], "bare": timelines["bare-fixed"]})
                    if timelines
                    else []
                )
                + import_rows()
                + probe_rows(timelines["fedpriv"][0] if timelines else None)
            ),
        }
        for figure in FIGURES:
            if figure in args.figures:
                started = time.monotonic()
                rows += steps[figure]()
                print(f"[{figure} took {time.monotonic() - started:.0f} s]", flush=True)
                save(args.out, rows, set(args.figures))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
