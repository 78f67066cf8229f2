"""A deployment node's personal model: fine-tuned from the final global model, kept on the node.

``personalization=finetune|last_layer`` in a deployment: after the last round the ServerApp
sends every node a ``query.personalise`` message holding the final global model
(:data:`protocol.keys.PERSONALISE`). The node fine-tunes a copy on its own training part
(:func:`tasks.training.personal.personalise`, Servia-Rodriguez et al., IoTDI 2018), measures the
global and the personal model on its own held-out part, and writes both into its personal
directory (node config ``personal-dir``; by default ``personal/`` beside its ``ledger-dir``):

* ``personal-run-<run id>.csv``: one row (examples, epochs, mode, held-out accuracy and loss of
  the global and of the personal model);
* ``personal-model-run-<run id>.npz``: the personal model's weights.

Privacy (could the server learn more than epsilon allows from the reply?): the reply holds only
the fixed status ``personalised``; no accuracy, loss, weight or count computed from the data
leaves the node, so the personalisation spends no privacy and the ledger is untouched. What the
server still sees is that the node answered and when: the time of the reply depends on the
training size, which the train replies already make public (``n``, replace-one relation).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from protocol.atomic import write_atomically
from tasks.data import ClientData
from tasks.models import get_weights
from tasks.training import evaluate
from tasks.training.personal import PersonalConfig, personalise


def personal_dir(node_config: dict) -> Path:
    """Node config ``personal-dir``, else ``personal/`` beside ``ledger-dir``.

    Raises
    ------
    ValueError
        If the node config names neither (a simulated client has no directory of its own).
    """
    if node_config.get("personal-dir"):
        return Path(str(node_config["personal-dir"]))
    if node_config.get("ledger-dir"):
        return Path(str(node_config["ledger-dir"])).resolve().parent / "personal"
    raise ValueError(
        "node config must set personal-dir or ledger-dir to keep a personal model on the node"
    )


def keep_personal_model(
    model: torch.nn.Module,
    data: ClientData,
    config: PersonalConfig,
    device: torch.device,
    partition_id: int,
    out: Path,
    run_id: int,
) -> Path:
    """Fine-tune ``model`` (the final global one, left unchanged); write the CSV and weights.

    Returns the CSV's path. Both models are measured on the node's held-out (validation) part:
    a deployment node's file has no separate test part.
    """
    g_loss, g_acc = evaluate(model, data.x_val, data.y_val, device)
    personal = personalise(model, data, config, device, partition_id)
    p_loss, p_acc = evaluate(personal, data.x_val, data.y_val, device)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        "partition_id,examples,heldout_examples,epochs,mode,"
        "global_accuracy,personal_accuracy,global_loss,personal_loss"
    )
    row = (
        f"{partition_id},{len(data.y_train)},{len(data.y_val)},{config.epochs},{config.mode},"
        f"{g_acc!r},{p_acc!r},{g_loss!r},{p_loss!r}"
    )
    buffer = io.BytesIO()
    np.savez(buffer, **get_weights(personal))  # type: ignore[arg-type]
    write_atomically(out / f"personal-model-run-{run_id}.npz", buffer.getvalue())
    csv = out / f"personal-run-{run_id}.csv"
    write_atomically(csv, f"{header}\n{row}\n")
    return csv
