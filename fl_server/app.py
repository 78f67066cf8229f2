"""Flower ServerApp: FedAvg through ``strategy.start`` with central evaluation each round.

After every round (and the initial evaluation, round 0) the server writes a checkpoint
(:mod:`protocol.checkpoint`); with ``resume-dir`` set it continues that run from the round
after its last checkpoint. With ``personalization`` in a deployment, the final model then goes to
every node, which fine-tunes and keeps its personal model (:mod:`fl_server.personal`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from privacy import derive_seed, make_generator
from protocol.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_differences,
    load_checkpoint,
    save_checkpoint,
)
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.data import DataBundle, load_dataset, server_indices, specs_from_settings
from tasks.models import ModelSpec, build_model, get_weights, model_spec, set_weights
from tasks.training import evaluate, make_loader, select_device, train_epochs

from .central import CentralDp
from .mixin import FedPrivMixin
from .personal import personalise_nodes
from .recorder import RunRecorder
from .registry import make_strategy
from .replies import Weights

app = ServerApp()
INFO = 20


class CentralEvaluation:
    """``evaluate_fn`` for ``Strategy.start``: test-split evaluation, results rows, progress."""

    def __init__(
        self, settings: RunSettings, bundle: DataBundle, strategy: FedPrivMixin, rec: RunRecorder
    ) -> None:
        self.settings = settings
        self.bundle = bundle
        self.strategy = strategy
        self.recorder = rec
        self.device = select_device(settings.device)
        self.model = build_model(_model_spec(settings, bundle), seed=settings.seed).to(self.device)
        self.last: ArrayRecord | None = None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate ``arrays`` on the test split and record the round."""
        self.last = arrays
        weights = from_record(arrays)
        set_weights(self.model, weights)
        loss, acc = evaluate(self.model, self.bundle.x_test, self.bundle.y_test, self.device)
        row = self.recorder.record_round(
            server_round, loss, acc, self.strategy.rounds.get(server_round)
        )
        save_checkpoint(  # after the tables: a crash in between re-runs this round on resume
            self.recorder.out_dir,
            Checkpoint(
                round=server_round,
                weights=weights,
                metrics=self.recorder.rounds,
                clients=self.recorder.clients,
                strategy=self.strategy.strategy_state(),
                run_config=dict(self.settings.to_run_config()),
                wall_seconds=self.recorder.elapsed(),
            ),
        )
        eps = row.get("epsilon_max", math.nan)
        log(
            INFO,
            "fedpriv round %d/%d | test acc %.4f | test loss %.4f | epsilon %s | %s clients"
            " (%s declined, %s failed) | %.1f s",
            server_round,
            self.settings.num_rounds,
            acc,
            loss,
            f"{eps:.3f}" if isinstance(eps, float) and math.isfinite(eps) else "-",
            row.get("participants", "-"),
            row.get("declined", 0),
            row.get("failed", 0),
            row.get("round_seconds", 0.0),
        )
        return MetricRecord({"test-loss": loss, "test-accuracy": acc})


class ServerUpdate:
    """The server's own update on its clean root data (for scorers such as FLTrust).

    Trained without DP: the root data is the server's, not a client's.
    """

    def __init__(self, settings: RunSettings, bundle: DataBundle) -> None:
        dspec, pspec = specs_from_settings(settings)
        rows = server_indices(dspec, pspec)
        self.x, self.y = bundle.x_train[rows], bundle.y_train[rows]
        self.settings = settings
        self.spec = _model_spec(settings, bundle)
        self.device = select_device(settings.device)

    def __call__(self, server_round: int, reference: Weights) -> Weights:
        """Train from the current global weights; return the change."""
        model = build_model(self.spec).to(self.device)
        set_weights(model, reference)
        gen = make_generator(derive_seed(self.settings.seed, server_round, 0x5E4))
        loader = make_loader(self.x, self.y, self.settings.batch_size, gen)
        opt = torch.optim.SGD(model.parameters(), lr=self.settings.learning_rate)
        train_epochs(model, loader, opt, self.settings.local_epochs, self.device)
        return {k: v - reference[k] for k, v in get_weights(model).items()}


def resume_run(
    settings: RunSettings,
    strategy: FedPrivMixin,
    recorder: RunRecorder,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Checkpoint:
    """Load ``settings.resume_dir``'s checkpoint into ``strategy`` and ``recorder``.

    Raises
    ------
    CheckpointError
        If there is no usable checkpoint, if it was written with different data, model or
        privacy settings (naming the setting), or if it already holds every round.
    """
    ckpt = load_checkpoint(Path(settings.resume_dir), shapes)
    by_key = {RunSettings.run_config_key(n): n for n in RunSettings._fields()}
    for key, stored, now in config_differences(ckpt.run_config, settings.to_run_config()):
        name = RunSettings.setting_name(by_key[key]) if key in by_key else key
        raise CheckpointError(
            f"resume: {name} was {stored!r} in the run at {settings.resume_dir}, got {now!r}; "
            "a resumed run keeps its settings (only federation.rounds may be raised)"
        )
    if ckpt.round >= settings.num_rounds:
        raise CheckpointError(
            f"resume: the run at {settings.resume_dir} already completed round {ckpt.round}; "
            f"federation.rounds={settings.num_rounds} leaves nothing to run"
        )
    strategy.load_strategy_state(ckpt.strategy)
    recorder.restore(ckpt.metrics, ckpt.clients, ckpt.wall_seconds)
    return ckpt


def _model_spec(settings: RunSettings, bundle: DataBundle) -> ModelSpec:
    return model_spec(settings, bundle.input_shape, bundle.num_classes)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation: 1. settings, 2. data and model, 3. strategy, 4. rounds, 5. save."""
    settings = RunSettings.from_run_config(context.run_config).validate()
    out_dir = Path(
        settings.output_dir
        or settings.resume_dir
        or Path.cwd() / "outputs" / f"run-{context.run_id}"
    )

    bundle = load_dataset(specs_from_settings(settings)[0])
    initial = build_model(_model_spec(settings, bundle), seed=settings.seed)

    server_update = (
        ServerUpdate(settings, bundle) if settings.aggregation_server_data_size else None
    )
    strategy = make_strategy(settings, server_update)
    assert isinstance(strategy, FedPrivMixin)
    strategy.central = CentralDp.from_settings(settings, out_dir)  # None: central_dp.mode=none
    recorder = RunRecorder(out_dir, settings.num_rounds)
    evaluation = CentralEvaluation(settings, bundle, strategy, recorder)
    arrays, start_round = to_record(get_weights(initial)), 1
    if settings.resume_dir:
        shapes = {k: tuple(v.shape) for k, v in get_weights(initial).items()}
        ckpt = resume_run(settings, strategy, recorder, shapes)
        arrays, start_round = to_record(ckpt.weights), ckpt.round + 1
        evaluation.last = arrays
        log(INFO, "fedpriv resuming %s after round %d", settings.resume_dir, ckpt.round)
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=settings.num_rounds,
        timeout=settings.round_timeout,
        evaluate_fn=evaluation,
        start_round=start_round,
    )
    assert evaluation.last is not None
    extra: dict[str, int] = {}
    if settings.personalization_on_nodes and settings.personalization_mode != "none":
        done, asked = personalise_nodes(grid, evaluation.last, settings.round_timeout)
        extra = {"personalised_nodes": done, "personalisation_asked": asked}
        log(INFO, "fedpriv personal models kept on %d of %d nodes", done, asked)
    summary = recorder.finish(
        from_record(evaluation.last),
        extra
        | {
            "run_id": int(context.run_id),
            # false: the noise was derived from the seed (privacy.reproducible_noise): no
            # guarantee against anyone who knows it
            "noise_secret": not settings.privacy_reproducible_noise,
            "epsilon_source": "replies",
        },
    )
    log(INFO, "fedpriv finished: %s", summary)
