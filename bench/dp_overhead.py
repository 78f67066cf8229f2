"""DP overhead: one local epoch with Opacus DP-SGD divided by the same epoch without DP.

For each case (dataset, model, batch) and each exact per-sample-gradient mode
(``privacy.grad_sample_mode``: ``hooks``, ``ew``, ``functorch``, ``ghost``): the same model,
data, batch size and learning rate, one epoch through the project's own path
(:func:`privacy.make_private`, :func:`tasks.training.train_epochs`). The variants alternate in
one process, in a rotated order each repeat, so machine noise hits them alike; a repeat's
ratio is a mode's epoch time over the non-private epoch of the same repeat, and the table
gives the median over repeats. Times are the process's CPU seconds (one torch thread, so
the epoch's own work), which other jobs on a shared machine inflate far less than wall
time; the wall-time ratio is printed and written beside it. Before timing, each mode's
clipped step (zero noise, one full batch, clipping active) is checked against ``hooks``:
only modes within 1e-4 of the step (float32 rounding) count as exact, and the fastest
exact one is what ``privacy.grad_sample_mode=auto`` should use for the model
(:attr:`tasks.models.registry.ModelInfo.grad_sample_mode`).

    .venv/bin/python bench/dp_overhead.py [--cases mnist:dpcnn:600,digits:mlp:32]
        [--modes hooks,ew,functorch,ghost] [--repeats 7] [--threads 1] [--profile]

A case is ``dataset:model:batch``; MNIST uses one client's share (6,000 images, MNIST/10),
the others all training examples up to that. The machine is shared: the load average at
the start and end of each case is printed and written with the results
(``bench/dp_overhead_results.csv``, written atomically). ``--profile`` prints the operators
that take the time in one step of each variant (self CPU time, ``torch.profiler``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import opacus
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privacy import make_generator, make_private, plan_dpsgd  # noqa: E402
from privacy.dpsgd import GRAD_SAMPLE_MODES, DpSgdPlan  # noqa: E402
from protocol.atomic import write_atomically  # noqa: E402
from tasks.data import DatasetSpec, load_dataset  # noqa: E402
from tasks.models import ModelSpec, build_model, model_info  # noqa: E402
from tasks.training import make_loader, train_epochs  # noqa: E402

DEFAULT_CASES = "mnist:dpcnn:600,digits:mlp:32,watch:cnn1d:32"
EXACT_RTOL = 1e-4
"""float32 sums in another order differ by ~1e-6 of the step; a wrong clip by far more."""
FIELDS = [
    "run_utc",
    "dataset",
    "model",
    "examples",
    "batch_size",
    "mode",
    "repeats",
    "median_epoch_s",
    "median_wall_s",
    "median_ratio",
    "median_wall_ratio",
    "min_ratio",
    "max_ratio",
    "rel_diff_vs_hooks",
    "exact",
    "fastest_exact",
    "registry_mode",
    "threads",
    "load1_start",
    "load1_end",
    "torch",
    "opacus",
]


class _Clock:
    """Wall and process CPU seconds since creation (CPU time: what other jobs do not inflate)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _data(dataset: str, model: str, examples: int) -> tuple[np.ndarray, np.ndarray, ModelSpec]:
    bundle = load_dataset(DatasetSpec(dataset))
    n = min(examples, len(bundle.y_train))
    spec = ModelSpec(model, bundle.input_shape, bundle.num_classes, hidden=32, dataset=dataset)
    return bundle.x_train[:n], bundle.y_train[:n], spec


def _private_epoch(
    spec: ModelSpec,
    x: np.ndarray,
    y: np.ndarray,
    batch: int,
    mode: str,
    plan: DpSgdPlan,
    seed: int,
    max_grad_norm: float = 1.0,
    lr: float = 0.1,
) -> tuple[nn.Module, tuple[float, float]]:
    model = build_model(spec, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = make_generator(seed)
    pt = make_private(
        model=model,
        optimizer=opt,
        data_loader=make_loader(x, y, batch, gen),
        plan=plan,
        max_grad_norm=max_grad_norm,
        generator=gen,
        grad_sample_mode=mode,
    )
    clock = _Clock()
    train_epochs(
        pt.module,
        pt.data_loader,
        pt.optimizer,
        1,
        torch.device("cpu"),
        empty_step=pt.empty_step,
        reduce=pt.loss,
    )
    return model, clock.read()


def _plain_epoch(
    spec: ModelSpec, x: np.ndarray, y: np.ndarray, batch: int, seed: int
) -> tuple[float, float]:
    model = build_model(spec, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(x, y, batch, make_generator(seed))
    clock = _Clock()
    train_epochs(model, loader, opt, 1, torch.device("cpu"))
    return clock.read()


def clipped_step_diff(spec: ModelSpec, x: np.ndarray, y: np.ndarray, modes: list[str]) -> dict:
    """Each mode's clipped, noiseless full-batch step against hooks': max |diff| / max |step|.

    Sample rate 1 (one batch of all ``x``), noise multiplier 0, clipping norm 0.05 so that
    the clipping binds, learning rate 1: the weight change is the mean clipped gradient.
    """
    n = len(y)
    plan = DpSgdPlan(math.inf, 1e-5, 1.0, 1, 1, 0.0, "pld")

    def flat(model: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    before = flat(build_model(spec, 0))
    step = {}
    for mode in ["hooks", *modes]:
        model, _ = _private_epoch(spec, x, y, n, mode, plan, 0, max_grad_norm=0.05, lr=1.0)
        step[mode] = flat(model) - before
    scale = float(step["hooks"].abs().max())
    return {m: float((step[m] - step["hooks"]).abs().max()) / scale for m in modes}


def _profile(label: str, fn: Callable[[], object]) -> None:
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"--- profile: {label} (one epoch, self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def run_case(case: str, modes: list[str], args: argparse.Namespace) -> list[dict]:
    """Time one ``dataset:model:batch`` case; one row per mode."""
    dataset, model, batch_text = case.split(":")
    batch = int(batch_text)
    x, y, spec = _data(dataset, model, args.examples)
    plan = plan_dpsgd(
        target_epsilon=2.0,
        delta=1e-5,
        n_train=len(y),
        batch_size=batch,
        local_epochs=1,
        rounds=10,
    )
    diffs = clipped_step_diff(spec, x[:64], y[:64], modes)
    load_start = os.getloadavg()[0]
    variants = ["plain", *modes]

    def epoch(variant: str, seed: int) -> tuple[float, float]:
        if variant == "plain":
            return _plain_epoch(spec, x, y, batch, seed)
        return _private_epoch(spec, x, y, batch, variant, plan, seed)[1]

    for v in variants:  # warm-up (functorch and expanded weights trace on first use)
        epoch(v, 0)
    times: dict[str, list[float]] = {v: [] for v in variants}  # CPU seconds
    walls: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            wall, cpu = epoch(v, r + 1)
            times[v].append(cpu)
            walls[v].append(wall)
        print(
            f"  repeat {r + 1}: CPU "
            + ", ".join(f"{v} {times[v][-1]:.3f}" for v in variants)
            + f" s; wall plain {walls['plain'][-1]:.3f} s (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    if args.profile:
        for v in variants:
            _profile(f"{case} {v}", functools.partial(epoch, v, 99))
    load_end = os.getloadavg()[0]
    ratios = {m: [t / p for t, p in zip(times[m], times["plain"], strict=True)] for m in modes}
    wall_ratios = {m: [t / p for t, p in zip(walls[m], walls["plain"], strict=True)] for m in modes}
    exact = {m: diffs[m] <= EXACT_RTOL for m in modes}
    fastest = min(
        (m for m in modes if exact[m]), key=lambda m: statistics.median(ratios[m]), default=""
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = {
        "run_utc": stamp,
        "dataset": dataset,
        "model": model,
        "examples": len(y),
        "batch_size": batch,
        "repeats": args.repeats,
        "fastest_exact": fastest,
        "registry_mode": model_info(model).grad_sample_mode,
        "threads": torch.get_num_threads(),
        "load1_start": round(load_start, 2),
        "load1_end": round(load_end, 2),
        "torch": torch.__version__,
        "opacus": opacus.__version__,
    }
    rows = [
        {
            **common,
            "mode": "plain",
            "median_epoch_s": round(statistics.median(times["plain"]), 4),
            "median_wall_s": round(statistics.median(walls["plain"]), 4),
            "median_ratio": 1.0,
            "median_wall_ratio": 1.0,
            "min_ratio": 1.0,
            "max_ratio": 1.0,
            "rel_diff_vs_hooks": 0.0,
            "exact": True,
        }
    ]
    for m in modes:
        rows.append(
            {
                **common,
                "mode": m,
                "median_epoch_s": round(statistics.median(times[m]), 4),
                "median_wall_s": round(statistics.median(walls[m]), 4),
                "median_ratio": round(statistics.median(ratios[m]), 3),
                "median_wall_ratio": round(statistics.median(wall_ratios[m]), 3),
                "min_ratio": round(min(ratios[m]), 3),
                "max_ratio": round(max(ratios[m]), 3),
                "rel_diff_vs_hooks": f"{diffs[m]:.2e}",
                "exact": exact[m],
            }
        )
    return rows


def _print_table(rows: list[dict]) -> None:
    print(
        f"{'case':<24} {'mode':<10} {'CPU s':>8} {'ratio':>6} {'range':>12} "
        f"{'wall ratio':>10} {'diff vs hooks':>14} exact"
    )
    for r in rows:
        case = f"{r['dataset']}:{r['model']}:{r['batch_size']}"
        rng = f"{r['min_ratio']:.2f}-{r['max_ratio']:.2f}"
        print(
            f"{case:<24} {r['mode']:<10} {r['median_epoch_s']:>8.3f} {r['median_ratio']:>6.2f} "
            f"{rng:>12} {r['median_wall_ratio']:>10.2f} {r['rel_diff_vs_hooks']!s:>14} "
            f"{r['exact']}"
        )
    for key in dict.fromkeys((r["dataset"], r["model"], r["batch_size"]) for r in rows):
        first = next(r for r in rows if (r["dataset"], r["model"], r["batch_size"]) == key)
        print(
            f"{key[0]}:{key[1]}:{key[2]}: fastest exact mode {first['fastest_exact']!r} "
            f"(registry says {first['registry_mode']!r}); {first['examples']} examples, "
            f"{first['repeats']} repeats, torch threads {first['threads']}, load "
            f"{first['load1_start']} -> {first['load1_end']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=DEFAULT_CASES, help="dataset:model:batch,...")
    ap.add_argument("--modes", default=",".join(GRAD_SAMPLE_MODES))
    ap.add_argument("--examples", type=int, default=6000, help="at most (MNIST/10)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (machine is shared)")
    ap.add_argument("--profile", action="store_true", help="print each variant's top operators")
    ap.add_argument("--out", default=str(ROOT / "bench" / "dp_overhead_results.csv"))
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(GRAD_SAMPLE_MODES))
    if unknown:
        ap.error(f"--modes must be among {list(GRAD_SAMPLE_MODES)}, got {unknown}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message=".*expanded weights.*")
    rows: list[dict] = []
    for case in args.cases.split(","):
        print(f"{case}: timing plain + {modes}", flush=True)
        rows += run_case(case, modes, args)
    _print_table(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(args.out, buf.getvalue())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
