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
(``alpha``, ``M``, ``c``; see ``privacy.functional_aggregate``), the same every round."""

# MetricRecord entries
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"
DELTA = "delta"
DECLINED = "declined"
TRAIN_SECONDS = "train-seconds"
VAL_LOSS = "val-loss"
VAL_ACCURACY = "val-accuracy"

# ConfigRecord entries
SERVER_ROUND = "server-round"
STATE = "state"
REASON = "reason"

# Values of STATE
TRAINED = "trained"
DECLINED_BUDGET = "declined-budget"
