"""Empirical privacy audit (Steinke, Nasr, Jagielski 2023): audited lower bound vs the claim.

digits, 3 IID clients, ``mlp`` (hidden 256) for DP-SGD and no privacy, ``fm_network`` (hidden
16, its ``conf/model`` default; the server sums the released objectives as ``ObjectiveFedAvg``
does) for the functional mechanism; 1,000 canaries in client 0's data, each by a secret coin;
black-box (final model's loss) and white-box (the client's per-round updates, the server's
view; for the functional mechanism also ``whitebox_objective`` on its released objectives)
attacks; bound at 95% (:mod:`privacy.audit`). Also the seed-knowing auditor of a run with
``privacy.reproducible_noise=true``: ``replay`` of DP-SGD's rounds, ``replay_objective`` of the
functional mechanism's release (at each ``--replay-fm-hidden`` and ``--replay-canaries``: a
head of ``d`` features releases ``10 d`` label-dependent coefficients, from which a linear
auditor reads at most about that many coins). With ``--kinds gradient``, DP-SGD is also audited
with Dirac gradient canaries (``audit.canary_kind=gradient``, :mod:`tasks.audit.gradient`) and
the server's ``whitebox_gradient`` attack. In process (``experiments.audit.run_audit``, the
project's trainers; no SuperLink)::

    .venv/bin/python bench/audit.py                        # the grid below, one seed
    .venv/bin/python bench/audit.py --seeds 0 1 2          # the issue's three seeds (slower)
    .venv/bin/python bench/audit.py --claims 4 --modes dpsgd   # one cell
    .venv/bin/python bench/audit.py --modes dpsgd --kinds gradient --replay-claim 0 --append
    .venv/bin/python bench/audit.py --ideal                # the gradient attack's ceiling

Writes ``bench/audit_results.csv`` (or ``--out``), one row per run and attack; ``--append``
keeps the rows already there (rows without ``canary_kind`` are input canaries).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import torch

from experiments.audit import run_audit
from experiments.audit_plan import KIND_MODES, NEEDS_RELEASE, REPLAYS
from experiments.audit_schema import DEFAULT_ATTACKS, AuditGroup
from privacy import get_mode
from protocol.atomic import write_with
from protocol.settings import RunSettings

OUT = Path(__file__).with_name("audit_results.csv")


def settings_for(
    mode: str, claim: float, seed: int, a: argparse.Namespace, fm_hidden: int, **extra: object
) -> RunSettings:
    """The run of one cell: the model the mode serves, the shared federation settings."""
    return RunSettings(
        dataset_name="digits",
        model_name="fm_network" if mode == "functional" else "mlp",
        model_hidden=fm_hidden if mode == "functional" else a.hidden,
        privacy_mode=mode,
        privacy_target_epsilon=claim,
        num_clients=a.clients,
        num_rounds=a.rounds,
        batch_size=a.batch_size,
        learning_rate=a.lr,
        seed=seed,
        **extra,  # type: ignore[arg-type]
    ).validate()


def ideal(claims: list[float], a: argparse.Namespace, n: int = 404, draws: int = 10) -> None:
    """The ceiling of ``whitebox_gradient``: Gaussian scores at the round sums' signal-to-noise.

    The server sees the sum of a canary's ``T`` steps: ``+-C`` on ``q T`` of them on average
    against noise ``sigma C sqrt(T)``, so ``mu = 2 q sqrt(T) / sigma``. Prints ``mu``, the
    epsilon at ``delta`` of a Gaussian test of that ``mu`` (``mu``-GDP, Dong, Roth and Su 2022,
    Cor. 2.13) and the one-run bound (:func:`privacy.audit.audit_scores`) of ``draws``
    simulated runs of ``a.canaries`` canaries whose scores are ``+-mu/2`` plus unit noise.
    ``n``: the audited client's records (404 in this grid).
    """
    import numpy as np
    from scipy.optimize import brentq
    from scipy.stats import norm

    from privacy import plan_dpsgd
    from privacy.audit import audit_scores

    rng = np.random.default_rng(0)
    for claim in claims:
        s = settings_for("dpsgd", claim, 0, a, a.fm_hidden)
        p = plan_dpsgd(
            target_epsilon=s.training_epsilon,
            delta=s.privacy_delta,
            n_train=n,
            batch_size=s.batch_size,
            local_epochs=s.local_epochs,
            rounds=s.num_rounds,
            accountant=s.privacy_accountant,
        )
        steps = p.steps_per_round * p.rounds
        mu = 2 * p.sample_rate * math.sqrt(steps) / p.noise_multiplier

        def gap(e: float, mu: float = mu, target: float = s.privacy_delta) -> float:
            delta = norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2)
            return float(delta - target)

        bounds = []
        for _ in range(draws):
            coins = rng.random(a.canaries) < 0.5
            scores = np.where(coins, mu / 2, -mu / 2) + rng.normal(size=a.canaries)
            bounds.append(audit_scores(scores, coins, 0.95, s.privacy_delta).epsilon_lower_bound)
        print(
            f"claim {claim:g}: sigma {p.noise_multiplier:.3f}, q {p.sample_rate:.3f}, T {steps}, "
            f"mu {mu:.2f}, Gaussian test's epsilon {brentq(gap, 1e-6, 100):.2f}, one-run bound "
            f"of ideal scores ({a.canaries} canaries) mean {np.mean(bounds):.2f} "
            f"[{min(bounds):.2f}, {max(bounds):.2f}]",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print one line per run and attack, write the CSV after each run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--modes", nargs="+", default=["dpsgd", "functional", "none"])
    p.add_argument("--claims", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--canaries", type=int, default=1000)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--fm-hidden", type=int, default=16)
    p.add_argument("--replay-fm-hidden", type=int, nargs="+", default=[16, 64])
    p.add_argument("--replay-canaries", type=int, nargs="+", default=[], help="default: --canaries")
    p.add_argument("--replay-claim", type=float, default=1.0, help="0: skip the replay rows")
    p.add_argument("--kinds", nargs="+", default=["input", "gradient"], help="audit.canary_kind")
    p.add_argument("--append", action="store_true", help="keep the rows already in --out")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--ideal", action="store_true", help="print whitebox_gradient's ceiling only")
    a = p.parse_args(argv)
    if a.ideal:
        ideal(a.claims, a)
        return 0
    torch.set_num_threads(1)  # not timed against anything: leave the other cores alone
    audit = AuditGroup(canaries=a.canaries, attacks=["blackbox", "whitebox", "whitebox_known"])
    cells: list[tuple[str, float, bool, int, int, str]] = []
    for kind in a.kinds:
        allowed = KIND_MODES[kind] or tuple(a.modes)
        for mode in (m for m in a.modes if m in allowed):
            for claim in a.claims if mode != "none" else [a.claims[0]]:
                cells.append((mode, claim, False, a.fm_hidden, a.canaries, kind))
    if a.replay_claim > 0 and "input" in a.kinds:
        for m in (m for m in a.modes if m != "none"):
            widths = a.replay_fm_hidden if m == "functional" else [a.fm_hidden]
            for count in a.replay_canaries or [a.canaries]:
                cells += [(m, a.replay_claim, True, w, count, "input") for w in widths]
    kept = pd.read_csv(a.out).to_dict("records") if a.append and a.out.exists() else []
    for row in kept:
        if not isinstance(row.get("canary_kind"), str):
            row["canary_kind"] = "input"
    rows: list[dict] = list(kept)
    for seed in a.seeds:
        for mode, claim, reproducible, width, count, kind in cells:
            t0 = time.perf_counter()
            s = settings_for(mode, claim, seed, a, width, privacy_reproducible_noise=reproducible)
            release = get_mode(mode).release(s)  # the seed-knowing auditor of what it releases
            replays = [name for name, r in REPLAYS.items() if r == release]
            reads = [a for a, r in NEEDS_RELEASE.items() if r == release and a not in REPLAYS]
            inputs = replays if reproducible else [*audit.attacks, *reads]
            run = AuditGroup(
                canaries=count,
                attacks=inputs if kind == "input" else list(DEFAULT_ATTACKS[kind]),
                canary_kind=kind,
            )
            summary, table = run_audit(s, run)
            for row in table.to_dict("records"):
                row |= {
                    "seed": seed,
                    "model": s.model_name,
                    "model_hidden": s.model_hidden,
                    "reproducible_noise": reproducible,
                    "canary_kind": kind,
                    "test_accuracy": summary["final_test_accuracy"],
                    "seconds": time.perf_counter() - t0,
                }
                rows.append(row)
                print(
                    f"{mode:>10} claim {claim:g}{' (reproducible noise)' if reproducible else ''}"
                    f" hidden {s.model_hidden} {kind} canaries {count}"
                    f" seed {seed} | {row['attack']:>8} | lower bound "
                    f"{row['epsilon_lower_bound']:.2f} ({row['correct']}/{row['guesses']}) | "
                    f"test acc {summary['final_test_accuracy']:.3f} | {row['seconds']:.0f} s",
                    flush=True,
                )
            write_with(a.out, lambda path: pd.DataFrame(rows).to_csv(path, index=False))
    table = pd.DataFrame(rows)
    print(
        table.groupby(
            [
                "privacy_mode",
                "model_hidden",
                "canaries",
                "canary_kind",
                "reproducible_noise",
                "claimed_epsilon",
                "attack",
            ]
        )["epsilon_lower_bound"]
        .agg(["mean", "min", "max", "count"])
        .to_string()
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
