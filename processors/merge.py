"""Merging the two input topics into one deterministic order per partition number.

A tenant's usage and commands travel on two topics (same key, same partition number), so
the ledger must interleave ``finops.usage.v1[p]`` and ``finops.commands.v1[p]``. The rule:

* while both topic-partitions have buffered messages, the one Kafka stored first goes
  first: the record timestamp, which the input topics take from the broker
  (LogAppendTime), so each topic-partition is in that order already; on the same
  millisecond, the earlier event time, then commands before usage, then offset order;
* when one of them is empty, the other goes on only if the empty one is *idle*: the
  caller decides, from its position and a high watermark asked after the waiting messages
  arrived (``PartitionBuffer.take(idle=...)``); otherwise the partition waits for the next fetch.

So the ledger applies a tenant's messages in the order they reached Kafka, live and in any
replay alike (the record timestamp is part of the log), whatever event times other
tenants on the partition carry: ordering by event time across a partition let one
tenant's old-dated usage overtake its own commands queued behind another tenant's newer
ones. A publisher of a file keeps the file's order by putting each tenant's messages in
Kafka in it (wire-v1.md, "Publishing files"); a message whose ``ts`` is before the tenant
clock is *late* (docs/ledger.md). Items without a record timestamp (tests) are ordered by
event time. Messages that cannot be read have no time: they go as soon as they reach the
head of their queue (they only produce a rejection).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from ..schemas import topics

RANK = {topics.COMMANDS: 0, topics.USAGE: 1}


@dataclass(slots=True)
class Item:
    """One input record waiting in the partition buffer: where it came from (topic, partition,
    offset), its event time and the time Kafka stored it, and the message decoded from ``raw``."""

    topic: str
    partition: int
    offset: int
    ts: datetime | None  # merge order: event time (see the runner for far-future ones); None: unreadable
    message: Any  # the decoded message or its Rejection
    raw: bytes
    stored_at: datetime | None = None  # when Kafka stored it (the record timestamp), for ts_in_future

    def order(self) -> tuple:
        """Its merge key: stored time (else event time), event time, commands before usage, offset."""
        return (self.stored_at or self.ts, self.ts, RANK[self.topic], self.offset)


class PartitionBuffer:
    """Per-partition buffers of both input topics; ``take`` hands out what may be applied now."""

    def __init__(self) -> None:
        self.queues: dict[tuple[str, int], deque[Item]] = {}
        self.last_arrival: dict[tuple[str, int], float] = {}

    def assign(self, partitions: set[int], now: float) -> None:
        """Start buffering both input topics of these partition numbers; ``now`` (wall, epoch s)
        counts as their last arrival, so idleness is measured from the assignment."""
        for p in partitions:
            for topic in topics.INPUTS:
                self.queues.setdefault((topic, p), deque())
                self.last_arrival[(topic, p)] = now

    def revoke(self, partitions: set[int]) -> None:
        """Drop the buffers of these partition numbers (their records will be read again by their new owner)."""
        for key in [k for k in self.queues if k[1] in partitions]:
            del self.queues[key]
            self.last_arrival.pop(key, None)

    def clear(self) -> None:
        """Empty every buffer, keeping the assignment (the records are to be read again)."""
        for queue in self.queues.values():
            queue.clear()

    def add(self, item: Item, now: float) -> None:
        """Buffer ``item`` behind the others of its topic-partition; ``now`` (wall, epoch s) is its arrival."""
        key = (item.topic, item.partition)
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = deque()
        queue.append(item)
        self.last_arrival[key] = now

    def buffered(self) -> int:
        """How many records wait in all buffers."""
        return sum(len(q) for q in self.queues.values())

    def take(self, idle: Callable[[str, int, float], bool], now: float, limit: int) -> list[Item]:
        """Items in apply order, at most ``limit``; what must wait stays buffered."""
        out: list[Item] = []
        for p in sorted({k[1] for k in self.queues}):
            usage = self.queues.get((topics.USAGE, p)) or deque()
            commands = self.queues.get((topics.COMMANDS, p)) or deque()
            while len(out) < limit:
                if usage and usage[0].ts is None:  # unreadable: no time to wait for
                    out.append(usage.popleft())
                elif commands and commands[0].ts is None:
                    out.append(commands.popleft())
                elif usage and commands:
                    out.append(usage.popleft() if usage[0].order() < commands[0].order() else commands.popleft())
                else:
                    queue, empty_topic = (usage, topics.COMMANDS) if usage else (commands, topics.USAGE)
                    idle_for = now - self.last_arrival.get((empty_topic, p), now)
                    if queue and idle(empty_topic, p, idle_for):
                        for _ in range(min(len(queue), limit - len(out))):  # idle for this whole take
                            out.append(queue.popleft())
                    break
        return out
