"""Ask a deployment's nodes to fine-tune the final global model and keep it (``personalization``).

After the last round, :func:`personalise_nodes` sends every connected node a
``query.personalise`` message holding the final global model; each node fine-tunes a copy on
its own data and writes the personal model and its held-out accuracy into its own directory
(:mod:`fl_client.personal`). The replies carry only a status, so the server learns which
nodes personalised, never how well. In simulation the experimenter computes the same table
in-process (:mod:`experiments.personal`) and no message is sent.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from protocol import keys

from .rounds import exchange


def personalise_nodes(grid: Grid, arrays: ArrayRecord, timeout: float) -> tuple[int, int]:
    """Send the final model to every connected node; ``(nodes personalised, nodes asked)``.

    A node that fails, refuses or stays silent for ``timeout`` seconds counts as not
    personalised; the federation's results are unaffected either way.
    """
    nodes = sorted(grid.get_node_ids())
    messages = [
        Message(
            content=RecordDict({keys.ARRAYS: arrays}),
            message_type=keys.PERSONALISE,
            dst_node_id=node,
        )
        for node in nodes
    ]
    replies = exchange(grid, messages, timeout)
    done = 0
    for reply in replies:
        if reply.has_error():
            continue
        status = reply.content.config_records.get(keys.STATUS)
        if status is not None and str(status.get(keys.STATE, "")) == keys.PERSONALISED:
            done += 1
    return done, len(nodes)
