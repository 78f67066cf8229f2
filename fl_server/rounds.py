"""The round loop of ``Strategy.start``, able to begin at any round (for resumed runs).

Flower 1.41's :meth:`flwr.serverapp.strategy.Strategy.start` always counts rounds from 1 and
evaluates the initial model as round 0. :func:`run_rounds` is the same loop (train, federated
evaluation, central evaluation, in that order, each bounded by ``timeout``) starting at
``start_round``: with ``start_round=1`` it does what Flower's does; with ``k + 1`` it continues
a run whose round ``k`` was checkpointed, and skips the round-0 evaluation that run already did.

``timeout`` bounds each exchange of messages (:func:`exchange`): the replies are pulled until all
have arrived or ``timeout`` seconds have passed, then the loop goes on with what it has; a node
that never answers therefore costs at most ``timeout`` (+1) seconds per round, and the strategy
records it as failed (see :meth:`fl_server.mixin.FedPrivMixin.aggregate_train`).

:func:`exchange` is Flower's ``Grid.send_and_receive`` (push, then pull until done) with a
shorter pull interval: a deployment's grid sleeps a fixed 3 s between pulls, so a reply that
arrives just after a pull waits up to 3 s, once per message and round. :func:`exchange` pulls
after 0.05 s and backs off to at most 1 s (``bench/overhead.py`` measures the round).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]

FIRST_PULL = 0.05
"""Seconds before the first pull for replies (then x1.5 per empty pull)."""
MAX_PULL = 1.0
"""The longest wait between two pulls (Flower's deployment grid waits 3 s)."""


def exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Push ``messages`` and pull their replies until all are in or ``timeout`` s have passed.

    Flower's own ``send_and_receive`` contract (the same push and pull calls of the grid), with
    pulls after 0.05 s, backing off geometrically to one a second; each pull is one small
    request to the SuperLink.
    """
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    wait = FIRST_PULL
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        time.sleep(min(wait, left))
        wait = min(wait * 1.5, MAX_PULL)
    return replies


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn: EvaluateFn | None = None,
    start_round: int = 1,
) -> Result:
    """Rounds ``start_round .. num_rounds`` of ``strategy`` from ``initial_arrays``.

    Raises
    ------
    ValueError
        If ``start_round`` is not in ``[1, num_rounds]``.
    """
    if not 1 <= start_round <= num_rounds:
        raise ValueError(
            f"federation.rounds={num_rounds} leaves nothing to run from round {start_round}"
        )
    train_config = ConfigRecord() if train_config is None else train_config
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
    result = Result()
    result.arrays = initial_arrays
    t_start = time.time()
    if evaluate_fn and start_round == 1:
        res = evaluate_fn(0, initial_arrays)
        if res is not None:
            result.evaluate_metrics_serverapp[0] = res
    arrays = initial_arrays
    for current_round in range(start_round, num_rounds + 1):
        log(INFO, "[ROUND %s/%s]", current_round, num_rounds)
        replies = exchange(
            grid, strategy.configure_train(current_round, arrays, train_config, grid), timeout
        )
        agg_arrays, agg_metrics = strategy.aggregate_train(current_round, replies)
        if agg_arrays is not None:
            result.arrays = arrays = agg_arrays
        if agg_metrics is not None:
            result.train_metrics_clientapp[current_round] = agg_metrics
        replies = exchange(
            grid, strategy.configure_evaluate(current_round, arrays, evaluate_config, grid), timeout
        )
        agg_eval = strategy.aggregate_evaluate(current_round, replies)
        if agg_eval is not None:
            result.evaluate_metrics_clientapp[current_round] = agg_eval
        if evaluate_fn:
            res = evaluate_fn(current_round, arrays)
            if res is not None:
                result.evaluate_metrics_serverapp[current_round] = res
    log(INFO, "Strategy execution finished in %.2fs", time.time() - t_start)
    return result


class Resumable:
    """:meth:`start` from any round, and the JSON state a resumed strategy needs.

    Mixed into :class:`fl_server.mixin.FedPrivMixin`, which owns ``_rng`` (node sampling),
    ``client_epsilon`` (each client's last reported epsilon) and, for weighted strategies,
    ``weighting`` (a :class:`reliability.ReliabilityWeighting` keeps reputations).
    """

    _rng: random.Random
    client_epsilon: dict[int, float]

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        start_round: int = 1,
    ) -> Result:
        """Flower's ``Strategy.start``, beginning at ``start_round`` (see :mod:`.rounds`)."""
        return run_rounds(
            self,  # type: ignore[arg-type]
            grid,
            initial_arrays,
            num_rounds,
            timeout,
            train_config,
            evaluate_config,
            evaluate_fn,
            start_round,
        )

    def strategy_state(self) -> dict[str, Any]:
        """JSON-able state a resumed run needs to continue as this one would have.

        The sampling RNG's state (so round ``k + 1`` samples the same nodes), each client's
        last reported epsilon, and the weighting's state (reputations) when it has one.
        """
        version, internal, gauss = self._rng.getstate()
        state: dict[str, Any] = {
            "rng": [version, list(internal), gauss],
            "client_epsilon": {str(k): v for k, v in sorted(self.client_epsilon.items())},
        }
        weighting: Any = getattr(self, "weighting", None)
        if hasattr(weighting, "state_dict"):
            state["weighting"] = weighting.state_dict()
        central: Any = getattr(self, "central", None)
        if central is not None:
            state["central"] = central.state_dict()
        return state

    def load_strategy_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`strategy_state`'s output (from a checkpoint)."""
        version, internal, gauss = state["rng"]
        self._rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
        self.client_epsilon = {int(k): float(v) for k, v in state["client_epsilon"].items()}
        weighting: Any = getattr(self, "weighting", None)
        if "weighting" in state and hasattr(weighting, "load_state_dict"):
            weighting.load_state_dict(state["weighting"])
        central: Any = getattr(self, "central", None)
        if central is not None:
            central.load_state_dict(state.get("central"))
