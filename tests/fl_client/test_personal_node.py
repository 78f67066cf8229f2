"""A deployment node's personal model: fine-tuned and kept on the node, the reply a bare status.

The ClientApp's ``query.personalise`` handler runs in process on a node config like
``experiments.deploy supernode`` writes; the server side (:func:`fl_server.personal.
personalise_nodes`) runs against a grid that answers with the node's own handler.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

import fl_client.app as client_app
from fl_client.personal import personal_dir
from fl_server.personal import personalise_nodes
from privacy.ledger_file import init_ledger
from protocol import keys
from protocol.records import from_record, to_record
from protocol.settings import RunSettings
from tasks.models import ModelSpec, build_model, get_weights

RUN = RunSettings(
    num_clients=3,
    personalization_mode="finetune",
    personalization_epochs=2,
    personalization_on_nodes=True,
)
SPEC = ModelSpec("mlp", (1, 8, 8), 10)


def _context(data: Path, node_dir: Path) -> Context:
    init_ledger(node_dir / "ledger", 0)
    node = {
        "partition-id": 0,
        "data-path": str(data),
        "ledger-dir": str(node_dir / "ledger"),
        "max-epsilon": 10.0,
    }
    return Context(
        run_id=7, node_id=1, node_config=node, state=RecordDict(), run_config=RUN.to_run_config()
    )


def _query(weights: dict[str, np.ndarray]) -> Message:
    content = RecordDict({keys.ARRAYS: to_record(weights)})
    return Message(content=content, dst_node_id=1, message_type=keys.PERSONALISE)


def test_the_node_keeps_its_personal_model_and_replies_only_a_status(
    data_file: Path, tmp_path: Path
) -> None:
    weights = get_weights(build_model(SPEC, 0))
    context = _context(data_file, tmp_path / "node")
    ledger = (tmp_path / "node" / "ledger" / "client-0.json").read_text()
    msg = _query(weights)
    reply = client_app.personalise_on_node(msg, context)
    # the reply: a status and nothing computed from the data
    assert not reply.content.array_records and not reply.content.metric_records
    status = reply.content.config_records[keys.STATUS]
    assert str(status[keys.STATE]) == keys.PERSONALISED
    assert set(status.keys()) == {keys.STATE, keys.REASON} and str(status[keys.REASON]) == ""
    # the node's directory: one row and the personal weights, which differ from the global
    kept = tmp_path / "node" / "personal"
    assert personal_dir(dict(context.node_config)) == kept.resolve()
    run_id = int(msg.metadata.run_id)
    table = pd.read_csv(kept / f"personal-run-{run_id}.csv")
    assert len(table) == 1 and int(table["partition_id"].iloc[0]) == 0
    assert int(table["epochs"].iloc[0]) == 2 and table["mode"].iloc[0] == "finetune"
    assert table["personal_accuracy"].iloc[0] > table["global_accuracy"].iloc[0]
    with np.load(kept / f"personal-model-run-{run_id}.npz") as npz:
        personal = {k: npz[k] for k in npz.files}
    assert set(personal) == set(weights)
    assert any(not np.allclose(personal[k], weights[k]) for k in weights)
    # the global model the message carried and the ledger are as they were
    assert all(
        np.array_equal(v, weights[k])
        for k, v in from_record(msg.content.array_records[keys.ARRAYS]).items()
    )
    assert (tmp_path / "node" / "ledger" / "client-0.json").read_text() == ledger
    assert json.loads(ledger)["events"] == []


def test_a_node_without_a_directory_of_its_own_refuses() -> None:
    with pytest.raises(ValueError, match="personal-dir or ledger-dir"):
        personal_dir({"partition-id": 0})
    assert personal_dir({"personal-dir": "/x/y", "ledger-dir": "/a"}) == Path("/x/y")


class _Grid:
    """Two nodes: node 1 personalises with the real handler, node 2 fails."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.replies: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [2, 1]

    def push_messages(self, messages):
        ids = []
        for i, m in enumerate(messages):
            assert m.metadata.message_type == keys.PERSONALISE
            m.metadata.__dict__["_message_id"] = f"m{i}"
            if m.metadata.dst_node_id == 1:
                self.replies.append(client_app.personalise_on_node(m, self.context))
            else:
                failed = Message(RecordDict(), reply_to=m)
                failed.content.config_records[keys.STATUS] = ConfigRecord({keys.STATE: "failed"})
                self.replies.append(failed)
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, message_ids):
        out, self.replies = self.replies, []
        return out


def test_the_server_counts_the_nodes_that_kept_a_personal_model(
    data_file: Path, tmp_path: Path
) -> None:
    grid = _Grid(_context(data_file, tmp_path / "node"))
    arrays = to_record(get_weights(build_model(SPEC, 0)))
    assert personalise_nodes(grid, arrays, timeout=30.0) == (1, 2)  # type: ignore[arg-type]
