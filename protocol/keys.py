"""Keys of the records exchanged between the ServerApp and the ClientApp.

A train reply carries an ``ArrayRecord`` under :data:`ARRAYS` (absent when the client declined),
a ``MetricRecord`` under :data:`METRICS` and a ``ConfigRecord`` under :data:`STATUS`.
"""

ARRAYS = "arrays"
"""ArrayRecord: model weights (plain module names, no Opacus ``_module.`` prefix)."""
CONFIG = "config"
"""ConfigRecord sent by the server (Flower injects ``server-round``)."""
METRICS = "metrics"
"""MetricRecord in every reply."""
STATUS = "status"
"""ConfigRecord in train replies: :data:`STATE` and a human-readable :data:`REASON`."""
FM_OBJECTIVES = "fm-objectives"
"""ArrayRecord in train replies of ``privacy.mode=functional`` with
``privacy.functional_aggregation=objective``: the client's released noisy objectives
(``alpha``, ``M``, ``c``; see ``privacy.functional.aggregate``), the same every round."""

# MetricRecord entries
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
TRAIN_LOSS = "train-loss"
"""Raw mean training loss: sent under ``privacy.mode=none`` only."""
TRAIN_LOSS_DP = "train-loss-dp"
"""A loss computed from a mechanism's release only (functional: the noisy objective)."""
EPSILON = "epsilon"
DELTA = "delta"
DECLINED = "declined"
TRAIN_SECONDS = "train-seconds"
VAL_LOSS = "val-loss"
"""Raw validation loss: ``privacy.mode=none`` only."""
VAL_ACCURACY = "val-accuracy"
"""Raw validation accuracy: ``privacy.mode=none`` only."""
VAL_ACCURACY_DP = "val-accuracy-dp"
"""Noisy validation accuracy (``privacy.eval_epsilon``-DP, in the ledger)."""
VAL_LOSS_DP = "val-loss-dp"
"""Noisy clipped validation MSE of a regression (``privacy.eval_epsilon``-DP, in the ledger)."""

# ConfigRecord entries
SERVER_ROUND = "server-round"
STATE = "state"
REASON = "reason"

# Values of STATE
TRAINED = "trained"
DECLINED_BUDGET = "declined-budget"
PERSONALISED = "personalised"
"""Reply to the personalisation query: the node fine-tuned the final model and kept it."""

# Query messages
PERSONALISE = "query.personalise"
"""Message type asking a node to fine-tune the final global model (ARRAYS) on its own data and
keep it there (``personalization`` in a deployment); the reply carries nothing but its STATE."""
