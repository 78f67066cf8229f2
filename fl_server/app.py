"""Flower ServerApp: FedAvg through ``strategy.start`` with central evaluation each round."""

from __future__ import annotations

import math
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.datasets import DataBundle, load_dataset
from tasks.models import ModelSpec, build_model, get_weights, set_weights
from tasks.partition import specs_from_settings
from tasks.training import evaluate, select_device

from .recorder import RunRecorder
from .strategy import WeightedFedAvg

app = ServerApp()
INFO = 20


class CentralEvaluation:
    """``evaluate_fn`` for ``Strategy.start``: test-split evaluation, results rows, progress."""

    def __init__(
        self, settings: RunSettings, bundle: DataBundle, strategy: WeightedFedAvg, rec: RunRecorder
    ) -> None:
        self.settings = settings
        self.bundle = bundle
        self.strategy = strategy
        self.recorder = rec
        self.device = select_device(settings.device)
        self.model = build_model(_model_spec(settings, bundle), seed=settings.seed).to(self.device)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate ``arrays`` on the test split and record the round."""
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


def _model_spec(settings: RunSettings, bundle: DataBundle) -> ModelSpec:
    return ModelSpec(
        settings.model_name, bundle.input_shape, bundle.num_classes, settings.model_hidden
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation: 1. settings, 2. data and model, 3. strategy, 4. rounds, 5. save."""
    settings = RunSettings.from_run_config(context.run_config).validate()
    out_dir = Path(settings.output_dir or Path.cwd() / "outputs" / f"run-{context.run_id}")

    bundle = load_dataset(specs_from_settings(settings)[0])
    initial = build_model(_model_spec(settings, bundle), seed=settings.seed)

    strategy = WeightedFedAvg(
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_available_nodes=settings.num_clients,
        seed=settings.seed,
        node_wait_timeout=settings.round_timeout,
    )
    recorder = RunRecorder(out_dir, settings.num_rounds)
    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(get_weights(initial)),
        num_rounds=settings.num_rounds,
        timeout=settings.round_timeout,
        evaluate_fn=CentralEvaluation(settings, bundle, strategy, recorder),
    )
    summary = recorder.finish(from_record(result.arrays), {"run_id": int(context.run_id)})
    log(INFO, "fedpriv finished: %s", summary)
