"""The ClickHouse sink: topics into ClickHouse tables, each message once.

Topics and tables: usage -> ``usage_events``, ledger -> ``ledger_entries``, alerts ->
``alerts``, balances -> ``balance_snapshots``, commands (purchase, allocate, reclaim) ->
``allocations``. The materialized views (``mv_*``) fill from those inserts.

Exactly once, per batch:
  1. log each (topic, partition) checkpoint ``[first, last]`` in ``sink_batches``;
  2. insert each checkpoint's rows with ``insert_deduplication_token``
     ``"<topic>:<partition>:<first>-<last>"`` (dependent views deduplicate too);
  3. commit the consumer offsets (for lag monitoring; ClickHouse holds the position).
On assignment the sink resumes each partition at the newest logged checkpoint and inserts its
rows again, cut at exactly the same offsets, so a crash anywhere in 1-3 leaves one copy:
ClickHouse drops a repeated block by its token (``non_replicated_deduplication_window``).
A new consumer group, or a reset of offsets, resumes from ClickHouse too, so replaying a
topic range into the same database changes nothing; a partition ClickHouse holds nothing
of (a new or dropped database) is read from its beginning: that is a rebuild.

When ClickHouse refuses an insert the sink pauses its partitions (staying in the group),
retries the same batch with backoff, then seeks back to where it stopped and goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import msgspec
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from .. import clients
from ..schemas import outputs, topics, wire
from ..schemas.money import to_micros
from ..service import Service
from ..settings import Settings
from . import clickhouse

log = logging.getLogger("finops.sink")

INSERT_SETTINGS = {
    "date_time_input_format": "best_effort",  # RFC 3339 with Z and microseconds
    "input_format_skip_unknown_fields": 1,  # the credit strings of an entry are not stored
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "parallel_view_processing": 1,  # the daily views of one insert run side by side (about +20 %)
}


class UsageRow(msgspec.Struct, gc=False):
    """A row of ``usage_events``: the usage message as sent (``raw``), its labels split out, ``credits_micros``
    in micro-credits (None: priced by the rate card, see the ledger entries), ``ts`` its event time,
    and the Kafka position it came from."""

    tenant_id: str
    id: str
    ts: datetime
    account_id: str
    api_key_id: str
    model_name: str
    operation_type: str
    units_consumed: float
    credits_micros: int | None
    team: str
    cost_center: str
    project: str
    env: str
    labels: dict[str, str]
    response_latency_ms: float | None
    error_code: str
    raw: str
    kafka_partition: int
    kafka_offset: int


class AlertRow(msgspec.Struct, gc=False):
    """A row of ``alerts``: one ``finops.alerts.v1`` record, its usage and period budget in micro-credits,
    ``action`` as JSON text ('' for none), ``ts`` the event time of its cause."""

    id: str
    tenant_id: str
    account_id: str
    type: str
    severity: str
    status: str
    threshold: int
    current_usage_micros: int
    monthly_allocation_micros: int
    period: str
    action: str
    ts: datetime
    kafka_partition: int
    kafka_offset: int


class BalanceRow(msgspec.Struct, gc=False):
    """A row of ``balance_snapshots``: one ``finops.balances.v1`` record, amounts in micro-credits, ``ts``
    the event time of the account's last change."""

    tenant_id: str
    account_id: str
    kind: str
    parent_id: str
    available_micros: int
    consumed_micros: int
    reserved_micros: int
    overage_micros: int
    ts: datetime | None
    kafka_partition: int
    kafka_offset: int


class AllocationRow(msgspec.Struct, gc=False):
    """A row of ``allocations``: a purchase, allocate or reclaim command as sent, ``credits_micros`` in
    micro-credits (None for a reclaim of everything, ``reclaim_all``), times as event time."""

    id: str
    tenant_id: str
    type: str
    ts: datetime
    from_account: str
    to_account: str
    credits_micros: int | None
    reclaim_all: bool
    starts_at: datetime | None
    ends_at: datetime | None
    expires_at: datetime | None
    recurrence_every: str
    rollover_pct: int
    cap: str
    thresholds: list[int]
    kafka_partition: int
    kafka_offset: int


_balance_decoder = msgspec.json.Decoder(outputs.Balance)
_alert_decoder = msgspec.json.Decoder(outputs.Alert)
_json = msgspec.json.Encoder()


def usage_row(value: bytes, partition: int, offset: int) -> UsageRow | None:
    """A ``usage_events`` row, or None for input that is not a readable usage message."""
    m = wire.decode(value)
    if type(m) is not wire.Usage:
        return None
    labels = m.usage_labels
    return UsageRow(
        m.tenant_id, m.id, m.ts, m.account_id or "", m.api_key_id, m.model_name, m.operation_type,
        m.units_consumed, None if m.credits_consumed is None else int(m.credits_consumed),
        labels.get("team", ""), labels.get("cost_center", ""), labels.get("project", ""), labels.get("env", ""),
        labels, m.response_latency_ms, m.error_code or "", value.decode("utf-8", errors="replace"), partition, offset)


def ledger_line(value: bytes, partition: int, offset: int) -> bytes:
    """Entries are the processor's own JSON: passed through, with the Kafka position added."""
    return b'{"kafka_partition":%d,"kafka_offset":%d,%s' % (partition, offset, value[1:])


def alert_row(value: bytes, partition: int, offset: int) -> AlertRow:
    """The ``alerts`` row of one alert record. Raises msgspec's error for a record this version cannot read."""
    a = _alert_decoder.decode(value)
    return AlertRow(a.id, a.tenant_id, a.account_id, a.type, a.severity, a.status, a.threshold,
                    int(to_micros(a.current_usage)), int(to_micros(a.monthly_allocation)), a.period,
                    "" if a.action is None else _json.encode(a.action).decode(), a.ts, partition, offset)


def balance_row(value: bytes, partition: int, offset: int) -> BalanceRow:
    """The ``balance_snapshots`` row of one balance record. Raises msgspec's error for an unreadable one."""
    b = _balance_decoder.decode(value)
    return BalanceRow(b.tenant_id, b.account_id, b.kind, b.parent_id or "", b.available_micros, b.consumed_micros,
                      b.reserved_micros, b.overage_micros, b.ts, partition, offset)


def allocation_row(value: bytes, partition: int, offset: int) -> AllocationRow | None:
    """The ``allocations`` row of a purchase, allocate or reclaim; None for other commands and unreadable input."""
    m = wire.decode(value)
    kind = type(m)
    if kind is wire.Purchase:
        return AllocationRow(m.id, m.tenant_id, "purchase", m.ts, "", m.tenant_id, int(m.credits), False, None, None,
                             m.expires_at, "", 0, "", [], partition, offset)
    if kind is wire.Allocate:
        rec = m.recurrence
        return AllocationRow(m.id, m.tenant_id, "allocate", m.ts, m.from_account, m.to_account, int(m.credits), False,
                             m.starts_at, m.ends_at, m.expires_at, rec.every if rec else "",
                             rec.rollover_pct if rec else 0, m.cap or "", [int(t) for t in m.thresholds], partition, offset)
    if kind is wire.Reclaim:
        return AllocationRow(m.id, m.tenant_id, "reclaim", m.ts, m.from_account, m.to_account,
                             None if m.credits is None else int(m.credits), m.all, None, None, None, "", 0, "", [],
                             partition, offset)
    return None


@dataclass(frozen=True)
class Table:
    """Where one topic goes: the ClickHouse table and the function that builds a row from
    ``(value, partition, offset)``."""

    name: str
    build: Callable[[bytes, int, int], object]  # a row struct, JSON line bytes, or None (not stored)


# The table of each topic the sink stores: the topics of topics.SINK_TOPICS, in its order (a unit test
# holds them equal; `finops wait` waits on the same set).
TABLES: dict[str, Table] = {
    topics.USAGE: Table("usage_events", usage_row),
    topics.LEDGER: Table("ledger_entries", ledger_line),
    topics.ALERTS: Table("alerts", alert_row),
    topics.BALANCES: Table("balance_snapshots", balance_row),
    topics.COMMANDS: Table("allocations", allocation_row),
}


def encode_rows(rows: list) -> bytes:
    """JSONEachRow bytes for a checkpoint's rows: row structs encoded in one call, or lines as they are."""
    if rows and isinstance(rows[0], bytes):
        return b"\n".join(rows) + b"\n"
    return _json.encode_lines(rows)


@dataclass
class SinkCheckpoint:
    """One (topic, partition) range of a batch, offsets ``first``..``last`` and their rows: logged in
    ``sink_batches`` (the sink's checkpoint) before its rows are inserted with :attr:`token`."""

    topic: str
    partition: int
    first: int
    last: int
    rows: list = field(default_factory=list)

    @property
    def token(self) -> str:
        """``"<topic>:<partition>:<first>-<last>"``, the insert's deduplication token: the same range
        inserted again is dropped by ClickHouse."""
        return f"{self.topic}:{self.partition}:{self.first}-{self.last}"


@dataclass
class SinkProgress:
    """Counters of the sink: rows inserted per table, batches, messages that are no rows, statements
    ClickHouse refused, and the wall seconds spent paused."""

    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    skipped: int = 0  # messages that are not rows (bad usage, commands other than allocations)
    refused: int = 0  # statements ClickHouse refused (each was retried)
    paused_s: float = 0.0


class Sink(Service):
    """Consumes (read_committed) and inserts batches; see the module docstring for the order."""

    def __init__(self, settings: Settings, *, client=None, batch_max: int = 50_000, poll_s: float = 0.2,
                 group_id: str | None = None, topics_: tuple[str, ...] | None = None,
                 retry_max_s: float = 30.0) -> None:
        super().__init__()
        self.settings = settings
        self.client = client or clickhouse.connect(settings, lock_wait_s=30.0)
        self.batch_max = batch_max
        self.poll_s = poll_s
        self.retry_max_s = retry_max_s
        self.progress = SinkProgress()
        self.lock = threading.RLock()  # chdb: one client in this process, shared with readers
        self.replay: dict[tuple[str, int], SinkCheckpoint] = {}  # the logged checkpoint to insert again, per partition
        self.dropped: dict[tuple[str, int], int] = {}  # first offset dropped while paused, per partition
        self.consumer = clients.consumer(settings, group_id or settings.group("sink"),
                                         **{"enable.partition.eof": True})
        self.consumer.subscribe(list(topics_ or topics.SINK_TOPICS), on_assign=self._on_assign,
                                on_revoke=self._on_revoke)

    # ------------------------------------------------------------------ position

    def logged_positions(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """The newest logged checkpoint ``(first, last)`` of each wanted partition."""
        if not wanted:
            return {}
        _, rows = self.query(
            "SELECT topic, partition, argMax(first_offset, last_offset), max(last_offset) FROM sink_batches "
            "WHERE topic IN {topics:Array(String)} GROUP BY topic, partition",
            {"topics": sorted({t for t, _ in wanted})})
        want = set(wanted)
        return {(t, p): (first, last) for t, p, first, last in rows if (t, p) in want}

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        logged = self._retrying("read the sink position", lambda: self.logged_positions(keys), poll=False)
        for p in partitions:
            position = logged.get((p.topic, p.partition))
            if position is not None:
                p.offset = position[0]
                self.replay[(p.topic, p.partition)] = SinkCheckpoint(p.topic, p.partition, position[0], position[1])
            else:  # ClickHouse holds nothing of it: all of it (a new or dropped database is a rebuild)
                p.offset = OFFSET_BEGINNING
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))
        consumer.assign(partitions)

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.replay.pop((p.topic, p.partition), None)
        consumer.unassign()

    # ------------------------------------------------------------------ work

    def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        """Query ClickHouse through the sink's client, between inserts."""
        with self.lock:
            return clickhouse.query(self.client, sql, parameters)

    def close(self) -> None:
        """Close the consumer; the ClickHouse client is left open (the query server may still use it)."""
        self.consumer.close()

    def step(self) -> int:
        """One batch: consume, log the checkpoints, insert them, commit. Returns the messages consumed."""
        messages = self.consumer.consume(self.batch_max, self.poll_s)
        if not messages:
            return 0
        checkpoints: dict[tuple[str, int], SinkCheckpoint] = {}
        replayed: set[tuple[str, int]] = set()  # logged checkpoints read whole again in this batch
        for m in messages:
            key = (m.topic(), m.partition())
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if key in self.replay:
                        replayed.add(key)  # compaction removed the rest of the logged checkpoint
                else:
                    log.warning("consume error: %s", m.error())
                continue
            offset = m.offset()
            s = self.replay.get(key)
            if s is not None:
                if offset >= s.last:
                    replayed.add(key)
                if offset > s.last:
                    continue  # beyond the logged checkpoint: read again after the seek below
            else:
                s = checkpoints.get(key)
                if s is None:
                    s = checkpoints[key] = SinkCheckpoint(key[0], key[1], offset, offset)
                s.last = offset
            value = m.value()
            row = TABLES[key[0]].build(value, key[1], offset) if value is not None else None
            if row is None:
                self.progress.skipped += 1
            else:
                s.rows.append(row)
        done = [self.replay.pop(key) for key in replayed]
        if done or checkpoints:
            self.write(done + list(checkpoints.values()))
            for s in done:  # the same offsets and token as logged, whatever compaction left
                self.consumer.seek(TopicPartition(s.topic, s.partition, s.last + 1))
            self.consumer.commit(offsets=[TopicPartition(s.topic, s.partition, s.last + 1)
                                          for s in (*done, *checkpoints.values())], asynchronous=False)
            self.progress.batches += 1
        return len(messages)

    def write(self, checkpoints: list[SinkCheckpoint]) -> None:
        """Log, then insert, every checkpoint; while ClickHouse refuses, pause and retry the same checkpoints."""
        try:
            self._write_once(checkpoints)
            return
        except clickhouse.ClickHouseError as exc:
            self.progress.refused += 1
            log.warning("ClickHouse refused a batch (%s); pausing the sink and retrying", exc)
        started = time.monotonic()
        self.consumer.pause(self.consumer.assignment())
        self.dropped = {}
        try:
            self._retrying("insert a batch", lambda: self._write_once(checkpoints), first_delay=0.5)
        finally:
            self.progress.paused_s += time.monotonic() - started
            # what was fetched before the pause and read while waiting is dropped: go back to it
            back = dict(self.dropped)
            for s in checkpoints:
                back[(s.topic, s.partition)] = s.last + 1
            for (topic, partition), offset in back.items():
                self.consumer.seek(TopicPartition(topic, partition, offset))
            self.consumer.resume(self.consumer.assignment())

    def _write_once(self, checkpoints: list[SinkCheckpoint]) -> None:
        log_rows = [[s.topic, s.partition, s.first, s.last, len(s.rows)] for s in checkpoints]
        with self.lock:
            try:
                self.client.insert("sink_batches", log_rows,
                                   column_names=["topic", "partition", "first_offset", "last_offset", "rows"])
                for s in checkpoints:
                    if s.rows:
                        self.client.raw_insert(TABLES[s.topic].name, None, encode_rows(s.rows), fmt="JSONEachRow",
                                               settings={**INSERT_SETTINGS, "insert_deduplication_token": s.token})
            except Exception as exc:  # the drivers raise many types: all mean "not written"
                raise clickhouse.ClickHouseError(clickhouse.first_line(exc)) from exc
        for s in checkpoints:
            self.progress.rows[TABLES[s.topic].name] += len(s.rows)

    def _retrying(self, what: str, action: Callable, first_delay: float = 1.0, poll: bool = True):
        """Run ``action`` until it succeeds or the sink stops.

        With ``poll`` the wait keeps polling Kafka (the partitions are paused) so the sink
        stays in its group; a message that still arrives is dropped and its partition
        marked in ``self.dropped`` for a seek back. Rebalance callbacks wait without polling.
        """
        delay = first_delay
        while True:
            try:
                return action()
            except clickhouse.ClickHouseError as exc:
                if self._stop.is_set():
                    raise
                self.progress.refused += 1
                log.warning("cannot %s: %s; retrying in %.1f s", what, exc, delay)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self._stop.is_set():
                    if not poll:
                        time.sleep(min(0.2, delay))
                        continue
                    for m in self.consumer.consume(1000, min(0.5, max(deadline - time.monotonic(), 0.01))):
                        if not m.error():
                            self.dropped.setdefault((m.topic(), m.partition()), m.offset())
                delay = min(delay * 2, self.retry_max_s)
