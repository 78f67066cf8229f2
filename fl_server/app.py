"""Flower ServerApp: FedAvg through ``strategy.start`` with central evaluation each round."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from privacy import derive_seed, make_generator
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.datasets import DataBundle, load_dataset
from tasks.models import ModelSpec, build_model, get_weights, set_weights
from tasks.partition import server_indices, specs_from_settings
from tasks.training import evaluate, make_loader, select_device, train_epochs

from .recorder import RunRecorder
from .strategies import make_strategy
from .strategy import FedPrivMixin, Weights

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
        set_weights(self.model, from_record(arrays))
        loss, acc = evaluate(self.model, self.bundle.x_test, self.bundle.y_test, self.device)
        row = self.recorder.record_round(
            server_round, loss, acc, self.strategy.rounds.get(server_round)
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


def _model_spec(settings: RunSettings, bundle: DataBundle) -> ModelSpec:
    return ModelSpec(
        settings.model_name,
        bundle.input_shape,
        bundle.num_classes,
        settings.model_hidden,
        settings.dataset_name,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation: 1. settings, 2. data and model, 3. strategy, 4. rounds, 5. save."""
    settings = RunSettings.from_run_config(context.run_config).validate()
    out_dir = Path(settings.output_dir or Path.cwd() / "outputs" / f"run-{context.run_id}")

    bundle = load_dataset(specs_from_settings(settings)[0])
    initial = build_model(_model_spec(settings, bundle), seed=settings.seed)

    server_update = (
        ServerUpdate(settings, bundle) if settings.reliability_server_data_size else None
    )
    strategy = make_strategy(settings, server_update)
    assert isinstance(strategy, FedPrivMixin)
    recorder = RunRecorder(out_dir, settings.num_rounds)
    evaluation = CentralEvaluation(settings, bundle, strategy, recorder)
    strategy.start(
        grid=grid,
        initial_arrays=to_record(get_weights(initial)),
        num_rounds=settings.num_rounds,
        timeout=settings.round_timeout,
        evaluate_fn=evaluation,
    )
    assert evaluation.last is not None
    summary = recorder.finish(from_record(evaluation.last), {"run_id": int(context.run_id)})
    log(INFO, "fedpriv finished: %s", summary)
