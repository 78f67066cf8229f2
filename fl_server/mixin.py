"""The strategy mixin: seeded sampling, reply validation, failure accounting, resumable state.

:class:`FedPrivMixin` goes in front of any Flower message-API strategy (``FedAvg``,
``FedMedian``, ``Krum``, ...) and changes what every one of them does with replies:

* the nodes of each round are sampled with a generator seeded from the run's ``seed``;
* replies are sorted into trained, declined (privacy budget), rejected (malformed: NaN/Inf,
  wrong shape or dtype, missing keys; see :mod:`reliability.validation`) and failed (the
  ClientApp raised); every client's outcome is kept per round for the results tables;
* a sampled node that does not answer within the round's timeout is recorded as failed;
* a client whose reported (cumulative) epsilon falls below what it reported before has lost
  its privacy ledger: its update is rejected and the reason recorded;
* a round where every client failed raises :class:`NoClientSucceededError`; a round with no
  usable update, or fewer than ``federation.min_replies``, keeps the previous global model and
  records why (``kept_reason``);
* under client-level DP (``central``, :mod:`fl_server.central`) nodes are Poisson-sampled
  from a secret source, the budget guard may refuse a round, the norm screen and
  ``min_replies`` are off, and every round releases the clipped, noised mean;
* the state a resumed run needs (sampling RNG, reputations, clients' last epsilon) is
  :meth:`FedPrivMixin.strategy_state`, and :meth:`FedPrivMixin.start` can begin at any round.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from protocol import keys
from protocol.records import from_record, to_record
from reliability import cap_counts, norm_outliers, parse_numbers, update_norm

from .central import CentralDp
from .replies import (
    COUNT_CAP_FACTOR,
    EVALUATE_RULES,
    NORM_OUTLIER_FACTOR,
    ClientOutcome,
    NoClientSucceededError,
    RoundLog,
    Weights,
    parse_reply,
    train_metrics,
)
from .rounds import Resumable


class FedPrivMixin(Resumable):
    """Seeded sampling, validation and outcome records in front of a Flower strategy."""

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int

    def setup_fedpriv(self, seed: int, node_wait_timeout: float, min_replies: int = 1) -> None:
        """Call from ``__init__`` after the Flower strategy's own initialisation."""
        self.node_wait_timeout = node_wait_timeout
        self.min_replies = min_replies
        self._rng = random.Random(seed)
        self.rounds: dict[int, RoundLog] = {}
        self.current: ArrayRecord | None = None
        self.client_epsilon: dict[int, float] = {}
        self.partition_node: dict[int, int] = {}  # partition id -> the node bound to it
        self.node_partition: dict[int, int] = {}  # node id -> its partition id
        self.central: CentralDp | None = None  # client-level DP (central_dp), set by the app

    # ------------------------------------------------------------------ sampling
    def _sample(
        self, grid: Grid, fraction: float, minimum: int, central: CentralDp | None = None
    ) -> list[int]:
        """Sample from the connected nodes (seeded; Poisson and secret under ``central``).

        The first round waits for all ``federation.num_clients`` nodes; once the federation
        has formed, a round goes on with the nodes still connected as long as there are at
        least ``federation.min_replies`` (a node that died does not stop the run).
        """
        need = self.min_replies if getattr(self, "_formed", False) else self.min_available_nodes
        deadline = time.monotonic() + self.node_wait_timeout
        while len(nodes := sorted(grid.get_node_ids())) < need:
            if time.monotonic() > deadline:
                what = (
                    f"federation.min_replies={need}"
                    if getattr(self, "_formed", False)
                    else f"federation.num_clients={need}"
                )
                raise TimeoutError(
                    f"only {len(nodes)} of {what} nodes connected within "
                    f"{self.node_wait_timeout:g} s"
                )
            time.sleep(0.5)
        self._formed = True
        if central is not None:
            return central.sample(nodes)
        size = min(len(nodes), max(minimum, int(len(nodes) * fraction)))
        return sorted(self._rng.sample(nodes, size))

    @staticmethod
    def _messages(
        server_round: int, arrays: ArrayRecord, config: ConfigRecord, nodes: list[int], kind: str
    ) -> list[Message]:
        config[keys.SERVER_ROUND] = server_round
        record = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config})
        return [Message(content=record, message_type=kind, dst_node_id=n) for n in nodes]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample this round's clients (seeded) and send them the global model."""
        self.rounds[server_round] = RoundLog()
        self.current = arrays
        if self.central is not None and (reason := self.central.guard(server_round)):
            self.central.stopped(self.rounds[server_round], reason)  # the budget guard
            return []
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes, self.central)
        self.rounds[server_round].sampled = list(nodes)
        self.rounds[server_round].connected = set(grid.get_node_ids())
        # kept so that replies can be matched to their node by message id (see aggregate_train)
        sent = self._messages(server_round, arrays, config, nodes, MessageType.TRAIN)
        self.rounds[server_round].sent = sent
        return sent

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients for federated evaluation on their validation splits."""
        if self.fraction_evaluate == 0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        return self._messages(server_round, arrays, config, nodes, MessageType.EVALUATE)

    # ------------------------------------------------------------------ aggregation
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and record replies, then aggregate the usable ones (None keeps the model)."""
        log = self.rounds.setdefault(server_round, RoundLog())
        reference = from_record(self.current) if self.current is not None else {}
        parsed: list[tuple[ClientOutcome, Weights | None, Message]] = []
        answered: set[int] = set()
        # The grid sets each sent message's id when it pushes it. A reply the SuperLink makes
        # for an unreachable node carries the SuperLink's id as its source, not the node's:
        # match it to its node through the id of the message it answers, so that the node is
        # counted once (failed), not twice (failed, then silent).
        destination = {
            m.metadata.message_id: m.metadata.dst_node_id for m in log.sent if m.metadata.message_id
        }
        for msg in replies:
            outcome, weights = parse_reply(server_round, msg, reference)
            target = destination.get(msg.metadata.reply_to_message_id)
            if target is not None and outcome.node_id not in log.sampled:
                outcome.node_id = int(target)
            log.outcomes.append(outcome)
            if destination and target is None:  # this round sent messages; not a reply to one
                outcome.status = "rejected"
                outcome.reason = "reply to a message this round did not send (dropped)"
                continue
            answered.add(outcome.node_id)
            parsed.append((outcome, weights, msg))
        accepted = self._bind_partitions(parsed, log)
        usable = [(o, w, m) for o, w, m in accepted if w is not None]
        for outcome, _, _ in usable:
            if problem := self._epsilon_fell(outcome):
                outcome.status, outcome.reason = "rejected", problem
        usable = [(o, w, m) for o, w, m in usable if o.status == "trained"]
        if self.central is None:  # a screen relative to the others would couple the clients
            usable = self._screen(usable, reference)  # type: ignore[arg-type]
        self._commit([o for o, _, _ in accepted])
        if log.outcomes and all(o.status == "failed" for o in log.outcomes):
            reasons = "; ".join(sorted({o.reason for o in log.outcomes}))
            raise NoClientSucceededError(
                f"round {server_round}: no client succeeded ({len(log.outcomes)} failed): {reasons}"
            )
        for node in log.sampled:  # silent nodes: counted, but a round of silence is not fatal
            if node not in answered:
                log.outcomes.append(
                    ClientOutcome(
                        server_round,
                        node,
                        reason="no reply within the round's timeout (federation.round_timeout)",
                    )
                )
        arrays = None
        if self.central is not None:  # released every round, whatever replied
            if not log.kept_reason:  # else refused by the budget guard in configure_train
                arrays = to_record(self.central.aggregate(server_round, usable, reference, log))  # type: ignore[arg-type]
        elif not usable:
            counts = {s: sum(o.status == s for o in log.outcomes) for s in ("declined", "rejected")}
            failed = sum(o.status == "failed" for o in log.outcomes)
            log.kept_reason = (
                f"no usable update ({counts['declined']} declined, {counts['rejected']} "
                f"rejected, {failed} failed)"
            )
        elif len(usable) < self.min_replies:
            log.kept_reason = (
                f"{len(usable)} usable replies, fewer than federation.min_replies="
                f"{self.min_replies}"
            )
        else:
            arrays = self.aggregate_usable(server_round, usable, reference)
            if arrays is None:  # aggregate_usable may have said why in log.kept_reason
                log.kept_reason = log.kept_reason or "the strategy aggregated nothing"
            elif not all(np.all(np.isfinite(a)) for a in from_record(arrays).values()):
                arrays, log.kept_reason = None, "the aggregate was not finite"  # never publish
        log.kept_previous_model = arrays is None
        return arrays, train_metrics(log)

    def _bind_partitions(
        self, parsed: list[tuple[ClientOutcome, Weights | None, Message]], log: RoundLog
    ) -> list[tuple[ClientOutcome, Weights | None, Message]]:
        """Bind each partition id to one node; reject replies that claim another's.

        A partition id is self-declared, so the first node whose reply for it is accepted
        (trained and usable, or declined; :meth:`_commit`) is bound to it, and the node to
        the id; a later reply for that id from another node, or
        from that node for another id, is rejected while the bound node is still connected
        (a restarted node that comes back with a new node id rebinds). Two nodes claiming an
        unbound id in one round are both rejected. Failed replies carry no id and pass.
        """
        claims: dict[int, set[int]] = {}
        for o, _, _ in parsed:
            if o.status in ("trained", "declined"):
                claims.setdefault(o.partition_id, set()).add(o.node_id)
        accepted = []
        for o, w, m in parsed:
            if o.status not in ("trained", "declined"):
                accepted.append((o, w, m))
                continue
            problem = self._claim_problem(o, claims[o.partition_id], log.connected)
            if problem:
                o.status, o.reason = "rejected", problem
                continue
            accepted.append((o, w, m))
        return accepted

    def _commit(self, outcomes: list[ClientOutcome]) -> None:
        """What the server remembers of a client comes from its accepted replies only."""
        for o in outcomes:
            if o.status in ("trained", "declined"):
                self.partition_node[o.partition_id] = o.node_id
                self.node_partition[o.node_id] = o.partition_id
        self._remember_epsilon([o for o in outcomes if o.status in ("trained", "declined")])

    def _claim_problem(self, o: ClientOutcome, claimants: set[int], connected: set[int]) -> str:
        def live(node: int) -> bool:
            return not connected or node in connected

        bound = self.partition_node.get(o.partition_id)
        if bound is not None and bound != o.node_id and live(bound):
            return f"partition-id {o.partition_id} is bound to node {bound}, not this node"
        held = self.node_partition.get(o.node_id)
        if (
            held is not None
            and held != o.partition_id
            and self.partition_node.get(held) == o.node_id
        ):
            return f"this node holds partition-id {held}, not {o.partition_id}"
        if (bound is None or not live(bound)) and len(claimants) > 1:
            return (
                f"partition-id {o.partition_id} claimed by {len(claimants)} nodes this round "
                "and bound to none"
            )
        return ""

    def _screen(
        self, usable: list[tuple[ClientOutcome, Weights, Message]], reference: Weights
    ) -> list[tuple[ClientOutcome, Weights, Message]]:
        """Reject update-norm outliers, then cap example counts (hostile replies).

        With 3 or more updates each is compared with the median of the round's others; with
        fewer, with the median norm of the last round that had a median (remembered), so that
        two replies cannot smuggle a 1e30 update past the screen.
        """
        norms = [update_norm({k: w[k] - reference[k] for k in reference}) for _, w, _ in usable]
        if len(norms) >= 3:
            flags = norm_outliers(norms, NORM_OUTLIER_FACTOR)
            self.norm_reference = float(np.median(norms))
        else:
            ref = getattr(self, "norm_reference", None)
            flags = [ref is not None and x > NORM_OUTLIER_FACTOR * ref for x in norms]
        kept = []
        for (o, w, m), outlier, norm in zip(usable, flags, norms, strict=True):
            if outlier:
                o.status = "rejected"
                o.reason = (
                    f"update norm {norm:.4g} is more than {NORM_OUTLIER_FACTOR:g}x the median "
                    "of the round's other updates (or, with fewer than 3, of the last round's)"
                )
            else:
                kept.append((o, w, m))
        capped = cap_counts([o.num_examples for o, _, _ in kept], COUNT_CAP_FACTOR)
        for (o, _, _), n in zip(kept, capped, strict=True):
            if n < o.num_examples:
                o.reason = (
                    f"example count {o.num_examples} capped to {n} ({COUNT_CAP_FACTOR:g}x the "
                    "median of the round's other replies)"
                )
                o.num_examples = n
        return kept

    def _epsilon_fell(self, outcome: ClientOutcome) -> str:
        """A reason to reject when a client's cumulative epsilon went down (ledger lost)."""
        before = self.client_epsilon.get(outcome.partition_id)
        eps = outcome.epsilon
        if before is None or not math.isfinite(eps) or eps >= before - 1e-9 * max(1.0, before):
            return ""
        return (
            f"epsilon fell from {before:.6g} to {eps:.6g}: the client's privacy ledger was "
            "lost or reset"
        )

    def _remember_epsilon(self, outcomes: list[ClientOutcome]) -> None:
        for o in outcomes:
            if o.partition_id >= 0 and math.isfinite(o.epsilon):
                before = self.client_epsilon.get(o.partition_id, -math.inf)
                self.client_epsilon[o.partition_id] = max(before, o.epsilon)

    def aggregate_usable(
        self,
        server_round: int,
        usable: list[tuple[ClientOutcome, Weights, Message]],
        reference: Weights,
    ) -> ArrayRecord | None:
        """Aggregate with the wrapped Flower strategy's own rule (baselines).

        Flower sees each usable reply reduced to its validated weights and example count, so
        its consistency checks cannot trip on extra records; the result keeps the global dtypes.
        """
        for outcome, weights, msg in usable:
            msg.content = RecordDict(
                {
                    keys.ARRAYS: to_record(weights),
                    keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: outcome.num_examples}),
                }
            )
        arrays, _ = super().aggregate_train(server_round, [m for _, _, m in usable])  # type: ignore[misc]
        if arrays is None:
            return None
        result = from_record(arrays)
        return to_record(
            {k: result[k].astype(ref.dtype, copy=False) for k, ref in reference.items()}
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted validation metrics over the clients that answered.

        Each metric (raw ``val-loss``/``val-accuracy`` under no privacy, the noisy
        ``val-accuracy-dp``/``val-loss-dp`` under DP) is averaged over the replies that carry
        it; a client that declined carries none.
        """
        names = {
            keys.VAL_LOSS: "val_loss",
            keys.VAL_ACCURACY: "val_accuracy",
            keys.VAL_ACCURACY_DP: "val_accuracy_dp",
            keys.VAL_LOSS_DP: "val_loss_dp",
        }
        sums = {key: [0.0, 0] for key in names}
        for msg in replies:
            if msg.has_error() or keys.METRICS not in msg.content.metric_records:
                continue
            values, problem = parse_numbers(
                msg.content.metric_records[keys.METRICS], EVALUATE_RULES
            )
            if problem:  # a malformed evaluate reply is left out, never a crash
                continue
            n = int(values.pop(keys.NUM_EXAMPLES))
            if n <= 0:
                continue
            values = {key: values[key] for key in names}
            for key, value in values.items():
                if math.isfinite(value):
                    sums[key][0] += n * value
                    sums[key][1] += n
        if not any(count for _, count in sums.values()):
            return None
        log = self.rounds.setdefault(server_round, RoundLog())
        out: dict[str, int | float | list[int] | list[float]] = {}
        for key, (total, count) in sums.items():
            if count:
                setattr(log, names[key], total / count)
                out[key] = total / count
        return MetricRecord(out)
