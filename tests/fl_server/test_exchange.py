"""``fl_server.rounds.exchange``: Flower's push-then-pull, with short pulls."""

from __future__ import annotations

import time
from types import SimpleNamespace

from fl_server.rounds import MAX_PULL, exchange


class _Grid:
    """Replies to message ``i`` appear ``delays[i]`` seconds after the push."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.pushed_at = 0.0
        self.pulls = 0

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic() - self.pushed_at
        ready = [i for i in sorted(message_ids) if now >= self.delays[int(i[1:])]]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


def test_every_reply_is_collected_soon_after_it_arrives() -> None:
    grid = _Grid([0.0, 0.2, 0.5])
    start = time.monotonic()
    replies = exchange(grid, ["a", "b", "c"], timeout=30.0)  # type: ignore[arg-type]
    took = time.monotonic() - start
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert 0.5 <= took < 0.5 + MAX_PULL  # Flower's grid would take 3 s here (one 3 s sleep)
    assert grid.pulls >= 3


def test_a_silent_node_costs_the_timeout_and_no_more() -> None:
    grid = _Grid([0.0, 99.0])
    start = time.monotonic()
    replies = exchange(grid, ["a", "b"], timeout=0.6)  # type: ignore[arg-type]
    took = time.monotonic() - start
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.6 <= took < 0.6 + 0.5


def test_no_messages_means_no_pull() -> None:
    grid = _Grid([])
    assert exchange(grid, [], timeout=5.0) == []  # type: ignore[arg-type]
    assert grid.pulls == 0
