"""``python -m experiments.audit [key=value ...] [audit.KEY=VALUE ...]``: an empirical audit.

Hides ``audit.canaries`` canaries in one client's data (each by a secret fair coin), runs one
federation, attacks it from the server's view, and turns the attack's guesses into a lower
bound on epsilon at ``audit.confidence`` (Steinke, Nasr and Jagielski 2023; :mod:`privacy.audit`).

1. Take ``audit.*`` off the command line (:func:`experiments.audit_schema.parse_audit`), compose
   and check the run's config as ``experiments.run`` does (:func:`experiments.run.prepare`);
   refuse a deployment unless ``audit.allow_deployment=true``.
2. Build the canaries of ``audit.canary_kind`` (``experiments.audit_plan.PLANTERS``: crafted
   records in the audited client's data, or Dirac gradient canaries in its DP-SGD) and the
   coins; run the federation **in process** with the project's own trainers
   (:mod:`tasks.audit.simulate`; not through a SuperLink), the server combining the replies by
   the rule of the mode's release (``experiments.audit_plan.SERVER_RULES``: FedAvg, or the
   minimiser of the summed functional objectives, as ``ObjectiveFedAvg``).
3. Score the canaries with each attack of ``audit.attacks`` and compute the bound.
4. Write ``audit.json`` and ``audit.csv`` atomically into Hydra's output directory and print
   "claimed epsilon 4.00, audited lower bound 1.2 (95%)".
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.audit_plan import (
    PLANTERS,
    audit_clients,
    audit_delta,
    check_audit_run,
    check_engine,
    claimed_epsilon,
    server_rule,
)
from experiments.audit_schema import AuditGroup, parse_audit
from experiments.run import prepare
from experiments.schema import register_schema
from privacy import get_mode, is_private
from privacy.audit import audit_scores
from protocol.atomic import write_atomically
from protocol.settings import RunSettings
from tasks.audit import (
    ATTACKS,
    AuditFederation,
    draw_coins,
    replay_round,
    run_federation,
)
from tasks.audit.attacks import AttackView
from tasks.data import (
    load_dataset,
    specs_from_settings,
)
from tasks.models import build_model, set_weights
from tasks.training import TrainConfig, evaluate

register_schema()
AUDIT = AuditGroup()
"""The ``audit.*`` settings of this process (set from the command line before Hydra runs)."""


def run_audit(settings: RunSettings, audit: AuditGroup) -> tuple[dict[str, Any], pd.DataFrame]:
    """Steps 2-3: the federation, the attacks and the bounds; (``audit.json``, ``audit.csv``).

    Each row of the table is one attack's own bound at ``audit.confidence``; the summary's
    ``epsilon_lower_bound`` is the best attack's, every attack then tested at
    ``1 - (1 - confidence) / len(attacks)`` (``epsilon_lower_bound_of_best``), so that the
    maximum over attacks still holds at ``audit.confidence``. The coins are read only here,
    after every attack has scored.
    """
    t0 = time.perf_counter()
    spec, data = audit_clients(settings)
    bundle = load_dataset(specs_from_settings(settings)[0])  # cached: the test split
    coins = draw_coins(audit.canaries)  # secret: read only after every attack has scored
    own = data[audit.client]
    planted = PLANTERS[audit.canary_kind](settings, audit, spec, own, coins)
    data[audit.client] = planted.data
    fed = AuditFederation(
        TrainConfig.from_settings(settings),
        spec,
        settings.seed,
        audit.client,
        server_rule(settings),
        planted.trainers,
    )
    releases = run_federation(fed, data)
    replayed, replayed_release = None, None
    reference = planted.reference
    if "replay" in audit.attacks and reference is not None:  # every slot its replacement
        replayed = [
            replay_round(fed, reference, g, rnd).weights
            for rnd, g in enumerate(releases.global_weights, start=1)
        ]
    if "replay_objective" in audit.attacks and reference is not None:  # the first release
        replayed_release = replay_round(fed, reference, releases.global_weights[0], 1).release
    view = AttackView(
        build=lambda: build_model(spec, settings.seed),
        global_weights=releases.global_weights,
        client_weights=releases.client_weights,
        final=releases.final,
        canaries=planted.canaries,
        clip=settings.privacy_max_grad_norm if settings.privacy_mode == "dpsgd" else 0.0,
        replayed=replayed,
        known=(own.x_train, own.y_train),  # read by whitebox_known only
        client_releases=releases.client_releases,
        replayed_release=replayed_release,
        dirac=planted.dirac,
        others=releases.others,
    )
    scores = {name: ATTACKS[name](view) for name in audit.attacks}  # no coin read so far
    delta, claim = audit_delta(settings), claimed_epsilon(settings)
    model = build_model(spec, settings.seed)
    set_weights(model, releases.final)
    test_loss, test_acc = evaluate(model, bundle.x_test, bundle.y_test, torch.device("cpu"))
    rows = []
    best_of = {}
    joint = 1.0 - (1.0 - audit.confidence) / len(scores)  # the best of A attacks: Bonferroni
    for name, s in scores.items():
        r = audit_scores(s, coins, audit.confidence, delta)
        together = audit_scores(s, coins, joint, delta)
        best_of[name] = together
        rows.append(
            {
                "attack": name,
                "privacy_mode": settings.privacy_mode,
                "claimed_epsilon": claim,
                "epsilon_lower_bound": r.epsilon_lower_bound,
                "confidence": r.confidence,
                "delta": r.delta,
                "canaries": r.canaries,
                "guesses": r.guesses,
                "correct": r.correct,
                "accuracy": r.accuracy,
                "k_plus": r.k_plus,
                "k_minus": r.k_minus,
                "grid_size": r.grid_size,
                "epsilon_lower_bound_of_best": together.epsilon_lower_bound,
            }
        )
    table = pd.DataFrame(rows)
    best = table.loc[table["epsilon_lower_bound_of_best"].idxmax()]
    top = best_of[str(best["attack"])]
    ledger_eps = releases.epsilon[audit.client]
    summary = {
        "claimed_epsilon": claim if math.isfinite(claim) else None,
        "private": is_private(settings.privacy_mode),
        "epsilon_lower_bound": float(best["epsilon_lower_bound_of_best"]),
        "best_attack": str(best["attack"]),
        "bound_note": (
            "epsilon_lower_bound is the best attack's bound, each attack tested at "
            "1 - (1 - confidence) / attacks (Bonferroni), so it holds at confidence; "
            "attacks.<name>.epsilon_lower_bound is that attack's own bound at confidence"
        ),
        "confidence": audit.confidence,
        "delta": delta,
        "guesses": top.guesses,
        "correct": top.correct,
        "accuracy": top.accuracy,
        "attacks": {row["attack"]: _jsonable(row) for row in rows},
        "audited_client_ledger_epsilon": ledger_eps if math.isfinite(ledger_eps) else None,
        "final_test_accuracy": float(test_acc),
        "final_test_loss": float(test_loss),
        "simulation": (
            "in process (tasks.audit.simulate): the project's trainers, the server's "
            f"{get_mode(settings.privacy_mode).release(settings)!r} aggregation rule"
        ),
        "seconds": time.perf_counter() - t0,
        "settings": {
            "audit": asdict(audit),
            "privacy_mode": settings.privacy_mode,
            "target_epsilon": settings.privacy_target_epsilon,
            "privacy_delta": settings.privacy_delta,
            "reproducible_noise": settings.privacy_reproducible_noise,
            "dataset": settings.dataset_name,
            "model": settings.model_name,
            "num_clients": settings.num_clients,
            "rounds": settings.num_rounds,
            "local_epochs": settings.local_epochs,
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "max_grad_norm": settings.privacy_max_grad_norm,
            "seed": settings.seed,
            "audited_client_examples": int(len(data[audit.client].y_train)),
        },
    }
    return summary, table


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in row.items()
        if k != "attack"
    }


def summary_line(summary: dict[str, Any]) -> str:
    """``claimed epsilon 4.00, audited lower bound 1.20 (95%); whitebox attack, 201/300 ...``."""
    claim = summary["claimed_epsilon"]
    claim_text = "inf (no privacy)" if claim is None else f"{claim:.2f}"
    return (
        f"claimed epsilon {claim_text}, audited lower bound {summary['epsilon_lower_bound']:.2f} "
        f"({summary['confidence']:.0%}); {summary['best_attack']} attack, "
        f"{summary['correct']}/{summary['guesses']} guesses right"
    )


def write_results(out_dir: Path, summary: dict[str, Any], table: pd.DataFrame) -> None:
    """Step 4: ``audit.json`` and ``audit.csv``, each written atomically."""
    write_atomically(out_dir / "audit.json", json.dumps(summary, indent=2, allow_nan=False))
    write_atomically(out_dir / "audit.csv", table.to_csv(index=False))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (single runs; ``audit.*`` was parsed before Hydra started)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:  # 1. everything checked before any training
        check_engine(AUDIT, str(cfg.federation.engine))  # before the deployment's own checks
        settings, _ = prepare(cfg, out_dir)
        check_audit_run(settings, AUDIT, str(cfg.federation.engine))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    write_atomically(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    print(
        f"fedpriv audit: {AUDIT.canaries} {AUDIT.canary_kind} canaries in client "
        f"{AUDIT.client}'s training, "
        f"privacy={settings.privacy_mode}, attacks {', '.join(AUDIT.attacks)} (in process)",
        flush=True,
    )
    summary, table = run_audit(settings, AUDIT)  # 2-3
    write_results(out_dir, summary, table)  # 4
    for row in table.to_dict("records"):
        print(
            f"  {row['attack']:>8}: lower bound {row['epsilon_lower_bound']:.2f}, "
            f"{row['correct']}/{row['guesses']} right",
            flush=True,
        )
    print(summary_line(summary) + f"; results in {out_dir}", flush=True)


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(``audit.*`` overrides without the prefix, every other argument)."""
    audit = [a.removeprefix("audit.") for a in argv if a.startswith("audit.")]
    return audit, [a for a in argv if not a.startswith("audit.")]


if __name__ == "__main__":
    audit_args, rest = split_argv(sys.argv[1:])
    try:
        AUDIT = parse_audit(audit_args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *rest]
    main()
