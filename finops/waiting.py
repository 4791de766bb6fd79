"""Wait until what was published so far is processed: by the ledger (balances, ledger
entries, alerts) and, when a sink runs, in ClickHouse. For scripts, docs and CI:
``finops publish events.jsonl --wait`` and ``finops wait``.

The ledger is done with an input message once its consumer group has committed past it
(the commit is in the same transaction as the outputs). The sink commits its consumer
offsets after each insert; its outputs topics are transactional, so the end offset of a
partition may be a commit marker, not a message. A partition counts as inserted when a
read_committed read from the sink's committed offset finds no message before the end.
"""

from __future__ import annotations

import time
from typing import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from . import clients
from .errors import FinopsError
from .schemas import topics
from .settings import Settings



def group_active(settings: Settings, group: str) -> bool:
    """Does this consumer group have members now?"""
    admin = clients.admin(settings)  # keep it referenced until the future is done
    future = admin.describe_consumer_groups([group], request_timeout=10)[group]
    try:
        return bool(future.result(timeout=15).members)
    except (KafkaException, TimeoutError):
        return False


def _committed(reader: Consumer, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The committed offsets of ``reader``'s group (it queries them; it never joins the group)."""
    return {(tp.topic, tp.partition): tp.offset
            for tp in clients.committed_offsets(reader, [TopicPartition(t, p) for t, p in keys])}


def _messages_between(settings: Settings, starts: dict[tuple[str, int], int],
                      stops: dict[tuple[str, int], int]) -> set[tuple[str, int]]:
    """The partitions holding a committed message at an offset in [start, stop)."""
    probe = clients.consumer(settings, settings.group("probe"), **{"enable.partition.eof": True})
    found: set[tuple[str, int]] = set()
    try:
        probe.assign([TopicPartition(t, p, max(starts[(t, p)], 0)) for t, p in starts])
        pending = set(starts)
        for m in clients.consume_to_end(probe, pending, deadline=time.monotonic() + 20, max_messages=500,
                                        wait_s=0.2, strict=False):
            key = (m.topic(), m.partition())
            if m.offset() < stops[key]:
                found.add(key)
            pending.discard(key)  # its first message answers for the partition
        return found | pending  # not proven empty yet: treat as not inserted
    finally:
        probe.close()


def wait_processed(settings: Settings, *, timeout: float = 120.0, sink: bool | None = None,
                   log: Callable[[str], None] = lambda _m: None) -> dict[str, float]:
    """Block until the ledger has committed every input published so far and (``sink``:
    True, or None = when a sink is running) ClickHouse holds its outputs. Returns the
    seconds each stage took; raises :class:`FinopsError` when nothing runs or at ``timeout``."""
    started = time.monotonic()
    deadline = started + timeout
    ledger_group = settings.group("ledger")
    sink_group = settings.group("sink")
    inputs = {key: end for key, end in clients.end_offsets(settings, topics.INPUTS).items() if end > 0}
    waited: dict[str, float] = {}
    if inputs:
        reader = clients.consumer(settings, ledger_group)
        try:
            checked_active = False
            while True:
                committed = _committed(reader, list(inputs))
                behind = {k: e - max(committed[k], 0) for k, e in inputs.items() if committed[k] < e}
                if not behind:
                    break
                if not checked_active:
                    checked_active = True
                    if not group_active(settings, ledger_group):
                        raise FinopsError(f"no ledger processor is running in group {ledger_group} at "
                                          f"{settings.bootstrap} ({sum(behind.values())} inputs not processed): "
                                          "start `finops run`")
                if time.monotonic() > deadline:
                    raise FinopsError(f"timed out after {timeout:g} s: the ledger still has "
                                      f"{sum(behind.values())} inputs to process")
                time.sleep(0.1)
        finally:
            reader.close()
    # Offsets are visible once the transactions committed; their outputs a moment later.
    clients.settle(settings, clients.partitions(settings, topics.LEDGER_OUTPUTS),
                   timeout=max(deadline - time.monotonic(), 5))
    waited["ledger_s"] = round(time.monotonic() - started, 3)
    log(f"ledger: every input processed ({waited['ledger_s']:.1f} s)")
    if sink is False or (sink is None and not group_active(settings, sink_group)):
        return waited
    outputs = {key: end for key, end in clients.end_offsets(settings, topics.SINK_TOPICS).items() if end > 0}
    reader = clients.consumer(settings, sink_group)
    try:
        while outputs:
            committed = _committed(reader, list(outputs))
            behind = {k: committed[k] for k, e in outputs.items() if committed[k] < e}
            if not behind or not _messages_between(settings, behind, outputs):
                break
            if time.monotonic() > deadline:
                raise FinopsError(f"timed out after {timeout:g} s: the ClickHouse sink is still behind on "
                                  f"{len(behind)} partitions")
            time.sleep(0.2)
    finally:
        reader.close()
    waited["sink_s"] = round(time.monotonic() - started, 3)
    log(f"sink: ClickHouse holds every record ({waited['sink_s']:.1f} s)")
    return waited
