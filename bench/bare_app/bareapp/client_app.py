"""The bare ClientApp: Opacus DP-SGD, the noise recalibrated in every round, as quickstarts do.

Each train message builds a fresh ``PrivacyEngine`` and calls ``make_private_with_epsilon``
(accountant ``accountant``, RDP by default: Opacus' default PRV searches about 3x longer;
``hooks`` per-sample gradients, Opacus' default), calibrated for
``target-epsilon`` over all ``num-server-rounds * local-epochs`` epochs: the same noise as a
whole-run budget, searched again every round. With ``noise-multiplier`` > 0 it calls
``make_private`` with that noise instead, as Flower's Opacus example does (no calibration).
No ledger, no node policy, no reply checks.
"""

from __future__ import annotations

import warnings

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from bareapp.task import load_partition, loaders, make_model, test, train

warnings.filterwarnings("ignore")  # Opacus' secure-RNG warning, as quickstarts silence it
app = ClientApp()


def _data(context: Context) -> tuple[DataLoader, DataLoader]:
    cfg, node = context.run_config, context.node_config
    x, y = load_partition(
        int(node["partition-id"]),
        int(node.get("num-partitions", 1)),
        int(cfg["seed"]),
        str(node.get("data-path", "")),
    )
    return loaders(x, y, int(cfg["batch-size"]), float(cfg["val-fraction"]), int(cfg["seed"]))


def _size(loader: DataLoader) -> int:
    return len(loader.dataset)  # type: ignore[arg-type]


def _model(msg: Message, context: Context) -> torch.nn.Module:
    model = make_model(int(context.run_config["hidden"]))
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return model


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Train the global model one round under DP-SGD; reply with the new weights."""
    cfg = context.run_config
    train_loader, _ = _data(context)
    model = _model(msg, context)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg["learning-rate"]))
    engine = PrivacyEngine(accountant=str(cfg["accountant"]))
    epochs = int(cfg["local-epochs"])
    sigma = float(cfg.get("noise-multiplier", 0.0))
    if sigma > 0:  # a fixed noise multiplier, no calibration (Flower's Opacus example)
        private_model, optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=train_loader,
            noise_multiplier=sigma,
            max_grad_norm=float(cfg["max-grad-norm"]),
        )
    else:
        private_model, optimizer, private_loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=optimizer,
            data_loader=train_loader,
            target_epsilon=float(cfg["target-epsilon"]),
            target_delta=float(cfg["delta"]),
            epochs=epochs * int(cfg["num-server-rounds"]),
            max_grad_norm=float(cfg["max-grad-norm"]),
        )
    loss = train(private_model, private_loader, optimizer, epochs)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": _size(train_loader)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the local validation split."""
    _, val_loader = _data(context)
    loss, acc = test(_model(msg, context), val_loader)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": _size(val_loader)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
