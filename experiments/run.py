"""``python -m experiments.run [key=value ...]``: one federated, differentially private run.

1. Compose ``conf/`` and validate it (types by the schema, values by ``RunSettings`` and the
   data checks) before any process starts.
2. Start a private simulation SuperLink and submit the ServerApp/ClientApp with the flat config.
3. Follow the run, printing one line per round, until Flower reports it finished.
4. Write the tables and the plot into Hydra's output directory and print a summary line.
5. ``personalization``: each client fine-tunes the final global model on its own data; in
   simulation ``personal.csv`` and ``personal.png`` (:mod:`experiments.personal`), in a
   deployment each node keeps its own (:mod:`fl_client.personal`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.aliases import upgrade_argv
from experiments.config import DataCheck, check_data, check_resources, to_settings
from experiments.deploy import check_deployment, deployment_connection
from experiments.personal import (
    check_personalization,
    deployment_line,
    summary_line,
    write_personal,
)
from experiments.processes.launcher import FlowerCli, LocalSimulation
from experiments.report import ledger_epsilons, plot_run, privacy_events, privacy_table
from experiments.resume import resume_argv, resume_config
from experiments.schema import register_schema
from experiments.sweep import job_guard, run_identity, shared_superlink
from privacy import is_private
from privacy.central import server_ledger_epsilon
from protocol.atomic import write_atomically
from protocol.checkpoint import load_checkpoint
from protocol.settings import RunSettings
from tasks.models import is_regression
from tasks.participants import ParticipantsConfig, unreliable_clients

log = logging.getLogger("fedpriv")
register_schema()


class RoundPrinter:
    """Print each new row of ``metrics.csv`` as the ServerApp writes it."""

    def __init__(self, out_dir: Path, settings: RunSettings) -> None:
        self.path = out_dir / "metrics.csv"
        self.settings = settings
        self.seen = 0

    def __call__(self) -> None:
        """Print the rows added since the last call."""
        if not self.path.exists():
            return
        try:
            rows = pd.read_csv(self.path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            return
        for row in rows.iloc[self.seen :].to_dict("records"):
            print(self.format(row), flush=True)
        self.seen = len(rows)

    def format(self, row: dict) -> str:
        """One line: round, test accuracy and loss (or MSE), epsilon so far, clients, time."""
        eps = row.get("epsilon_max", math.nan)
        eps_text = f"{eps:.3f}" if isinstance(eps, float) and math.isfinite(eps) else "-"
        if not is_private(self.settings.privacy_mode):
            eps_text = "inf (no privacy)"
        quality = (  # regression: the test loss is the MSE, accuracy is undefined
            f"test mse {row['test_loss']:.4f}"
            if is_regression(self.settings.model_name)
            else f"test acc {row['test_accuracy']:.4f} | loss {row['test_loss']:.4f}"
        )
        line = (
            f"round {int(row['round']):>3}/{self.settings.num_rounds} | {quality} | "
            f"epsilon {eps_text}"
        )
        central = row.get("client_level_epsilon", math.nan)  # central_dp only
        if isinstance(central, float) and math.isfinite(central):
            line += f" | client-level epsilon {central:.3f}"
        if int(row["round"]) > 0:
            line += (
                f" | clients {int(row['participants'])} trained, {int(row['declined'])} declined,"
                f" {int(row.get('rejected', 0))} rejected,"
                f" {int(row['failed'])} failed | {row['round_seconds']:.1f} s"
            )
        return line


def run_federation(
    settings: RunSettings,
    client_cpus: int,
    client_gpus: float,
    connection: FlowerCli | None = None,
) -> dict:
    """Steps 2-4 for validated settings whose ``output_dir`` is set; returns the summary.

    ``connection``: a running deployment's SuperLink (``federation=deployment``); without it
    the run goes to a private simulation SuperLink.
    """
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    unreliable = set(unreliable_clients(ParticipantsConfig.from_settings(settings)))
    participants = pd.DataFrame(  # ground truth of the simulated unreliable participants
        {
            "partition_id": range(settings.num_clients),
            "unreliable": [i in unreliable for i in range(settings.num_clients)],
            "kind": [
                settings.participants_kind if i in unreliable else ""
                for i in range(settings.num_clients)
            ],
        }
    )
    write_atomically(out / "participants.csv", participants.to_csv(index=False))
    printer = RoundPrinter(out, settings)
    summary_path = out / "summary.json"
    shared = shared_superlink()  # a sweep's SuperLink, else this run starts its own
    with connection or LocalSimulation(
        out,
        settings.num_clients,
        client_cpus,
        client_gpus,
        superlink=shared[0] if shared else None,
        superlink_pid=shared[1] if shared else None,
    ) as sim:
        before = _stamp(summary_path)  # a resumed run may hold an earlier run's summary
        run_id = sim.submit(settings.to_run_config())
        print(f"run {run_id} submitted; logs in {out / 'run.log'}", flush=True)
        status = sim.follow(
            run_id, on_tick=printer, completed=lambda: _completion_mark(summary_path, before)
        )
    if not status.completed or not summary_path.exists():
        tail = _tail(out / "run.log", 30)
        raise RuntimeError(
            f"run {run_id} ended as {status.text!r} {status.details}\n--- last lines of run.log\n"
            f"{tail}"
        )
    summary = with_ledger_epsilon(json.loads(summary_path.read_text()), out)
    write_atomically(summary_path, json.dumps(summary, indent=2, allow_nan=False))
    metrics = pd.read_csv(out / "metrics.csv")
    write_atomically(out / "privacy.csv", privacy_table(out).to_csv(index=False))
    write_atomically(out / "privacy_events.csv", privacy_events(out).to_csv(index=False))
    plot_run(
        metrics,
        out / "accuracy_epsilon.png",
        f"{settings.dataset_name} / {settings.model_name} / {settings.privacy_mode}, "
        f"{settings.num_clients} clients",
    )
    return summary


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_ino


def _completion_mark(summary_path: Path, before: tuple[int, int] | None) -> bool:
    """Whether the ServerApp wrote a new ``summary.json`` (written last, atomically)."""
    stamp = _stamp(summary_path)
    if stamp is None or stamp == before:
        return False
    try:
        return json.loads(summary_path.read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def with_ledger_epsilon(summary: dict, out: Path) -> dict:
    """``summary.json``'s epsilon from the clients' ledgers where this machine has them.

    The server writes the largest epsilon the clients *replied* (``epsilon_source:
    "replies"``); in simulation the ledgers lie in ``ledgers/``, and each client's epsilon is
    recomputed from its events (``epsilon_source: "ledgers"``, per client in
    ``epsilon_clients``). A deployment's ledgers stay on the nodes.
    """
    central = server_ledger_epsilon(out)  # client-level DP: the server ledger
    if central is not None:
        summary = summary | {"client_level_epsilon": central}
    eps = ledger_epsilons(out)
    if not eps:
        return summary
    return summary | {
        "epsilon_max": max(eps.values()),
        "epsilon_source": "ledgers",
        "epsilon_clients": {str(pid): e for pid, e in sorted(eps.items())},
    }


REPRODUCIBLE_WARNING = (
    "warning: privacy.reproducible_noise=true: every noise draw is derived from seed={seed}, "
    "which the server writes; this run has NO privacy guarantee against anyone who knows the "
    "seed (summary.json: noise_secret false)"
)


def untrained_warning(out: Path) -> str | None:
    """A warning when no round aggregated any client update, naming the commonest reason.

    Reads ``metrics.csv`` (``kept_previous_model`` per round) and ``clients.csv`` (each
    reply's ``reason``); ``None`` when some round did aggregate, or the tables are missing.
    """
    metrics_path, clients_path = out / "metrics.csv", out / "clients.csv"
    if not metrics_path.exists():
        return None
    metrics = pd.read_csv(metrics_path)
    rounds = metrics[metrics["round"] > 0]
    if rounds.empty or "kept_previous_model" not in rounds:
        return None
    if not rounds["kept_previous_model"].fillna(False).astype(bool).all():
        return None
    text = (
        f"warning: no round of {len(rounds)} aggregated a client update, so the final model is "
        "the initial one"
    )
    if clients_path.exists():
        reasons = pd.read_csv(clients_path).get("reason", pd.Series(dtype=str)).dropna()
        if len(reasons):
            common = reasons.astype(str).value_counts()
            text += f"; most common reason ({common.iloc[0]} replies): {common.index[0]}"
            if "NaN/Inf" in common.index[0]:
                text += " (local training diverged? try a smaller federation.learning_rate)"
    return text + f"; see {clients_path}"


def _tail(path: Path, n: int) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def prepare(cfg: DictConfig, out_dir: Path) -> tuple[RunSettings, DataCheck]:
    """Step 1: settings from the composed config, checked against the data (``ValueError``)."""
    settings = to_settings(cfg, output_dir=str(out_dir.resolve()))
    check_resources(cfg.federation.client_cpus, cfg.federation.client_gpus)
    check_deployment(cfg)  # federation.engine, and the SuperLink address and CA of a deployment
    check = check_data(settings)
    check_personalization(settings, str(cfg.federation.engine))
    if settings.resume_dir:  # the whole checkpoint, against this model, before anything starts
        load_checkpoint(Path(settings.resume_dir), check.model_shapes)
    return settings, check


def execute(cfg: DictConfig, settings: RunSettings, check: DataCheck, out_dir: Path) -> float:
    """Steps 2-4 for checked settings; returns the final test accuracy (MSE for regression)."""
    if not settings.resume_dir:  # a resumed run keeps the config.yaml it was started with
        write_atomically(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    print(
        f"fedpriv: {settings.num_clients} clients ({min(check.train_sizes)}-"
        f"{max(check.train_sizes)} training examples each), {settings.num_rounds} rounds, "
        f"{settings.dataset_name}/{settings.model_name}, privacy={settings.privacy_mode}"
        + (
            f" (epsilon {settings.privacy_target_epsilon:g}, delta {settings.privacy_delta:g})"
            if is_private(settings.privacy_mode)
            else ""
        )
        + (
            f", central_dp={settings.central_dp_mode} (client-level epsilon "
            f"{settings.central_dp_target_epsilon:g}, delta {settings.central_dp_delta:g}, "
            f"clients Poisson-sampled at {settings.fraction_train:g})"
            if settings.central_dp_mode != "none"
            else ""
        ),
        flush=True,
    )
    if settings.privacy_reproducible_noise and is_private(settings.privacy_mode):
        print(REPRODUCIBLE_WARNING.format(seed=settings.seed), flush=True)
    summary = run_federation(  # 2-4
        settings,
        cfg.federation.client_cpus,
        cfg.federation.client_gpus,
        deployment_connection(cfg, out_dir),  # None: a private simulation SuperLink
    )
    eps = summary.get("epsilon_max")
    if is_regression(settings.model_name):
        quality = f"test mse {summary['final_test_loss']:.4f}"
    else:
        quality = f"test accuracy {summary['final_test_accuracy']:.4f}"
    if not is_private(settings.privacy_mode):
        eps_text = "inf (no privacy)"
    else:
        eps_text = "-" if eps is None else f"{eps:.3f}"
    central = summary.get("client_level_epsilon")
    central_text = "" if central is None else f", client-level epsilon {central:.3f}"
    print(
        f"done: {quality} after {summary['rounds']} rounds, max client epsilon "
        f"{eps_text}{central_text}, {summary['wall_seconds']:.0f} s; "
        f"results in {out_dir}",
        flush=True,
    )
    if settings.privacy_reproducible_noise and is_private(settings.privacy_mode):
        print(REPRODUCIBLE_WARNING.format(seed=settings.seed), flush=True)
    warning = untrained_warning(out_dir)
    if warning is not None:
        print(warning, flush=True)
    if settings.personalization_mode != "none" and settings.personalization_on_nodes:
        print(deployment_line(summary), flush=True)  # 5. the nodes kept their own
    elif settings.personalization_mode != "none":  # 5. in-process: the clients' own view
        print(summary_line(write_personal(settings, out_dir)), flush=True)
    return float(summary[_metric(settings.model_name)])


def _metric(model_name: str) -> str:
    return "final_test_loss" if is_regression(model_name) else "final_test_accuracy"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the final test accuracy, or MSE for regression (for sweepers).

    In a multirun (``-m``) each job is guarded by :func:`experiments.sweep.job_guard`: a
    completed run is skipped, a failed one is recorded and the sweep goes on.
    """
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        with job_guard(out_dir, Path(hydra_cfg.sweep.dir), _metric(cfg.model.name)) as job:
            if not job.skip:
                settings, check = prepare(cfg, out_dir)
                if not job.is_duplicate(run_identity(settings)):
                    job.value = execute(cfg, settings, check, out_dir)
        return job.value
    try:  # 1. validate everything before any process starts
        cfg, out_dir = resume_config(cfg, hydra_cfg.overrides.task, out_dir)
        settings, check = prepare(cfg, out_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return execute(cfg, settings, check, out_dir)


if __name__ == "__main__":
    sys.argv = resume_argv(upgrade_argv(sys.argv))  # deprecated names, then resume=DIR
    main()
