"""The bare ServerApp: FedAvg from ``flwr.serverapp.strategy``, central evaluation on digits.

When the run config names a ``timing-file``, each central evaluation appends its wall-clock
time and test accuracy there (one JSON list, rewritten each round): bench/overhead.py reads
the round times from it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.utils.data import DataLoader, TensorDataset

from bareapp.task import digits_split, make_model, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for ``num-server-rounds`` rounds from a fresh MLP."""
    cfg = context.run_config
    hidden, seed = int(cfg["hidden"]), int(cfg["seed"])
    torch.manual_seed(seed)
    model = make_model(hidden)
    _, _, x_test, y_test = digits_split(seed)
    test_loader = DataLoader(
        TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)), batch_size=256
    )
    timing_file = str(cfg.get("timing-file", ""))
    stamps: list[dict[str, float]] = []

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = make_model(hidden)
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = test(net, test_loader)
        if timing_file:
            stamps.append({"round": server_round, "time": time.time(), "accuracy": acc})
            tmp = f"{timing_file}.tmp"
            Path(tmp).write_text(json.dumps(stamps))
            os.replace(tmp, timing_file)
        return MetricRecord({"test_loss": loss, "test_accuracy": acc})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=float(cfg["fraction-evaluate"]))
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=central_evaluate,
    )
    torch.save(result.arrays.to_torch_state_dict(), "final_model.pt")
