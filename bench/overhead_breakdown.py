"""The breakdown of ``bench/overhead.py``: where a fedpriv run's time goes, against the bare app.

A run's timeline from the SuperLink's and the run's logs (:data:`PHASES`); import time by
package (``python -X importtime``); and, each in a fresh interpreter with its imports done
before the clock (``python bench/overhead_breakdown.py NAME [ARG]``), the config and data
checks, the DP calibration, a client's data loading and the results writing.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BARE = REPO / "bench" / "bare_app"
sys.path.insert(0, str(REPO))
Rows = list[dict[str, str]]


def row(
    figure: str, measure: str, fed: float, bare: float, unit: str = "s", note: str = ""
) -> dict[str, str]:
    """One result row; prints it as it is made."""
    ratio = fed / bare if bare and bare == bare and fed == fed else float("nan")
    print(
        f"{figure:9s} {measure:52s} fedpriv {fed:8.2f} | bare {bare:8.2f} {unit:3s}"
        f" | {ratio:5.2f}x {note}",
        flush=True,
    )
    return {
        "figure": figure,
        "measure": measure,
        "fedpriv": f"{fed:.3f}",
        "bare": f"{bare:.3f}",
        "ratio": f"{ratio:.3f}",
        "unit": unit,
        "note": note,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


LOG_STAMP = re.compile(r"^(\d\d/\d\d/\d{4} \d\d:\d\d:\d\d):\w+:(.*)$")
ISO_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z (.*)$")
MARKS: dict[str, tuple[str, str]] = {  # mark: (log file, text its first line contains)
    "superlink listening": ("superlink.log", "Uvicorn running"),
    "run submitted": ("superlink.log", "/v1/control/start-run"),
    "ServerApp task pulled": ("superlink.log", "pull-task-input"),
    "round 1 starts": ("run.log", "[ROUND 1/"),
    "Ray actors ready": ("run.log", "Constructed ActorPool"),
    "round 1 ends": ("run.log", "[ROUND 2/"),
    "last round ends": ("run.log", "Strategy execution finished"),
}
PHASES = [  # (phase, from mark, to mark)
    ("imports, config + data checks, SuperLink start", "launch", "superlink listening"),
    ("flwr run: FAB build and submit", "superlink listening", "run submitted"),
    ("SuperExec poll, simulation process start", "run submitted", "ServerApp task pulled"),
    ("ServerApp imports, set-up, round-0 evaluation", "ServerApp task pulled", "round 1 starts"),
    ("Ray start, actors", "round 1 starts", "Ray actors ready"),
    ("round 1 after Ray: ClientApp imports, data, calibration", "Ray actors ready", "round 1 ends"),
    ("rounds 2..3", "round 1 ends", "last round ends"),
    ("Ray shutdown, run seen finished, results written, SuperLink stop", "last round ends", "exit"),
]


def timeline(
    run_dir: Path, t0: float, t1: float, rounds: list[float] | None = None
) -> dict[str, float]:
    """Epoch time of each mark of one simulated run (run.log has whole seconds).

    With the run's round times, round ends are round 1's start plus those times (the log
    stream may stop before the last lines of a run arrive).
    """
    marks = {"launch": t0, "exit": t1}
    for mark, (name, text) in MARKS.items():
        path = run_dir / name
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            if text not in line:
                continue
            m = LOG_STAMP.match(line)
            if m:  # local time, as the run's logger writes it
                marks[mark] = datetime.strptime(m[1], "%m/%d/%Y %H:%M:%S").timestamp()
                break
            m = ISO_STAMP.match(line)
            if m:
                stamp = datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S.%f")
                marks[mark] = stamp.replace(tzinfo=timezone.utc).timestamp()
                break
    if rounds and "round 1 starts" in marks:
        marks["round 1 ends"] = marks["round 1 starts"] + rounds[0]
        marks["last round ends"] = marks["round 1 starts"] + sum(rounds)
    return marks


def phase_rows(timelines: dict[str, list]) -> Rows:
    """The ``run`` figure's last run of each app, phase by phase."""
    marks = {who: timeline(*tl) for who, tl in timelines.items()}
    rows = []
    for phase, start, end in PHASES:
        span = {
            who: m[end] - m[start] if start in m and end in m else float("nan")
            for who, m in marks.items()
        }
        rows.append(row("breakdown", f"run: {phase}", span["fedpriv"], span["bare"]))
    return rows


def importtime(module: str, extra_path: Path | None = None) -> tuple[float, dict[str, float]]:
    """(seconds to import ``module`` in a fresh interpreter, self seconds by top package)."""
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    total, by_package = 0.0, dict[str, float]()
    for line in res.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        name = parts[2].strip()
        package = name.split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(parts[0]) / 1e6
        if name == module:
            total = int(parts[1]) / 1e6
    return total, by_package


def import_rows() -> Rows:
    """fedpriv's apps and command against the bare apps: import time, heaviest packages."""
    rows = []
    for side, fed_mod, bare_mod in (
        ("ClientApp", "fl_client.app", "bareapp.client_app"),
        ("ServerApp", "fl_server.app", "bareapp.server_app"),
    ):
        fed, fed_pk = importtime(fed_mod)
        bare, bare_pk = importtime(bare_mod, BARE)
        extra = sorted(set(fed_pk) - set(bare_pk), key=lambda p: -fed_pk[p])
        heavy = ", ".join(f"{p} {fed_pk[p]:.2f}" for p in extra[:6] if fed_pk[p] >= 0.02)
        rows.append(
            row(
                "breakdown",
                f"import {side} ({fed_mod} / {bare_mod})",
                fed,
                bare,
                note=f"packages only fedpriv imports (self s): {heavy or '-'}",
            )
        )
    total, pk = importtime("experiments.run")
    top = sorted(pk, key=lambda p: -pk[p])[:8]
    note = "self s: " + ", ".join(f"{p} {pk[p]:.2f}" for p in top)
    rows.append(
        row("breakdown", "import experiments.run (the command)", total, float("nan"), note=note)
    )
    return rows


def probe(name: str, arg: str = "") -> dict[str, float]:
    """Run ``--probe name`` in a fresh interpreter; its JSON (seconds by step)."""
    res = subprocess.run(
        [sys.executable, __file__, name, arg],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(BARE)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if res.returncode != 0:
        print(f"  probe {name} failed: {res.stderr[-800:]}")
        return {}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def probe_rows(run_dir: Path | None) -> Rows:
    """Config and data checks, calibration, data per message, results writing."""
    nan = float("nan")
    cfg, cal, data = probe("config"), probe("calibration"), probe("data")
    rows = [
        row("breakdown", "compose conf/ (Hydra)", cfg.get("compose", nan), nan),
        row(
            "breakdown",
            "config + data checks (to_settings, check_data)",
            cfg.get("check", nan),
            nan,
        ),
        row(
            "breakdown",
            "DP calibration: once per client per run / per client per round",
            cal.get("fedpriv", nan),
            cal.get("bare", nan),
            note="fedpriv plan_dpsgd (PLD); bare make_private_with_epsilon (RDP) every round",
        ),
        row(
            "breakdown",
            "a client's data, first load in a process",
            data.get("fedpriv", nan),
            data.get("bare", nan),
            note="simulated partition; cached per actor in simulation",
        ),
        row(
            "breakdown",
            "a node file (CSV), load per deployment message",
            data.get("fedpriv_node", nan),
            data.get("bare_node", nan),
        ),
    ]
    if run_dir is not None:
        res = probe("results", str(run_dir))
        rows.append(
            row(
                "breakdown",
                "results writing after the run (privacy tables, plot)",
                res.get("results", nan),
                nan,
            )
        )
    return rows


def run_probe(name: str, arg: str) -> dict[str, float]:
    """The body of ``--probe``: time one step, imports excluded (done before the clock)."""
    import torch

    torch.set_num_threads(1)
    clock: Callable[[], float] = time.perf_counter
    if name == "config":
        from hydra import compose, initialize_config_dir

        from experiments.config import check_data, to_settings
        from experiments.schema import register_schema

        register_schema()
        t = clock()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["federation.num_clients=10"])
        composed = clock()
        check_data(to_settings(cfg, output_dir="/tmp/overhead-probe"))
        return {"compose": composed - t, "check": clock() - composed}
    if name == "calibration":
        from bareapp.task import load_partition, loaders, make_model
        from opacus import PrivacyEngine

        from privacy import plan_dpsgd

        t = clock()
        plan_dpsgd(
            target_epsilon=4.0,
            delta=1e-5,
            n_train=121,
            batch_size=32,
            local_epochs=1,
            rounds=3,
            accountant="pld",
        )
        fed = clock() - t
        x, y = load_partition(0, 10, 0)
        loader, _ = loaders(x, y, 32, 0.1, 0)
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        t = clock()
        PrivacyEngine(accountant="rdp").make_private_with_epsilon(
            module=model,
            optimizer=opt,
            data_loader=loader,
            target_epsilon=4.0,
            target_delta=1e-5,
            epochs=3,
            max_grad_norm=1.0,
        )
        return {"fedpriv": fed, "bare": clock() - t}
    if name == "data":
        import sklearn.datasets  # noqa: F401  (imports are timed apart: not in this clock)
        from bareapp.task import load_partition

        from experiments.config import to_settings
        from tasks.data import (
            load_client_data,
            load_node_data,
            specs_from_settings,
            task_shape,
            write_node_file,
        )

        out: dict[str, float] = {}
        settings = _default_settings(to_settings)
        t = clock()
        dspec, pspec = specs_from_settings(settings, 10)
        part = load_client_data(dspec, pspec, 0, settings.val_fraction)
        out["fedpriv"] = clock() - t
        t = clock()
        load_partition(0, 10, 0)
        out["bare"] = clock() - t
        with tempfile.TemporaryDirectory() as tmp:
            path = write_node_file(Path(tmp) / "node-0.csv", part.x_train, part.y_train)
            t = clock()
            load_node_data(str(path), task_shape(dspec), settings.val_fraction, 0, 0)
            out["fedpriv_node"] = clock() - t
            t = clock()
            load_partition(0, 1, 0, str(path))
            out["bare_node"] = clock() - t
        return out
    if name == "results":
        import pandas as pd

        from experiments.report import plot_run, privacy_events, privacy_table

        run_dir = Path(arg)
        t = clock()
        privacy_table(run_dir).to_csv(io.StringIO(), index=False)
        privacy_events(run_dir).to_csv(io.StringIO(), index=False)
        with tempfile.TemporaryDirectory() as tmp:
            plot_run(pd.read_csv(run_dir / "metrics.csv"), Path(tmp) / "plot.png", "probe")
        return {"results": clock() - t}
    raise ValueError(f"--probe must be one of config, calibration, data, results, got {name!r}")


def _default_settings(to_settings):  # type: ignore[no-untyped-def]
    from hydra import compose, initialize_config_dir

    from experiments.schema import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_settings(compose("config", overrides=["federation.num_clients=10"]))


if __name__ == "__main__":
    print(json.dumps(run_probe(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")))
