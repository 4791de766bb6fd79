"""The ClickHouse sink: usage and ledger topics into ClickHouse tables, once each.

Commit order, per batch:
  1. insert each (topic, partition) slice with ``insert_deduplication_token``
     ``"<topic>:<partition>:<first offset>-<last offset>"``;
  2. commit the consumer offsets (synchronously).
A crash between 1 and 2 re-reads the same slice; ClickHouse drops the repeated block
because the token is the same (tables keep ``non_replicated_deduplication_window``).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, TopicPartition

from .. import clients
from ..schemas import outputs, topics, wire
from ..service import Service
from ..settings import Settings
from . import clickhouse

log = logging.getLogger("finops.sink")

USAGE_COLUMNS = [
    "tenant_id", "id", "ts", "account_id", "api_key_id", "model_name", "operation_type", "units_consumed",
    "credits_micros", "team", "cost_center", "project", "env", "labels", "response_latency_ms", "error_code",
    "raw", "kafka_partition", "kafka_offset",
]
LEDGER_COLUMNS = [
    "entry_id", "kind", "tenant_id", "account_id", "cause_id", "cause_type", "ts", "amount_micros",
    "balance_micros", "charged_to", "grant_id", "late", "kafka_partition", "kafka_offset",
]
TABLES = {topics.USAGE: ("usage_events", USAGE_COLUMNS), topics.LEDGER: ("ledger_entries", LEDGER_COLUMNS)}




def usage_row(value: bytes, partition: int, offset: int) -> list | None:
    """A ``usage_events`` row, or None for input that is not a readable usage message."""
    message = wire.decode(value)
    if not isinstance(message, wire.Usage):
        return None
    labels = message.usage_labels
    return [
        message.tenant_id, message.id, message.ts, message.account_id or "", message.api_key_id,
        message.model_name, message.operation_type, message.units_consumed,
        None if message.credits_consumed is None else int(message.credits_consumed),
        labels.get("team", ""), labels.get("cost_center", ""), labels.get("project", ""), labels.get("env", ""),
        labels, message.response_latency_ms, message.error_code or "",
        value.decode("utf-8", errors="replace"), partition, offset,
    ]


def ledger_row(value: bytes, partition: int, offset: int) -> list:
    e = outputs.entry_decoder.decode(value)
    return [e.entry_id, e.kind, e.tenant_id, e.account_id, e.cause_id, e.cause_type, e.ts, e.amount_micros,
            e.balance_micros, e.charged_to or "", e.grant_id or "", e.late, partition, offset]


ROW_BUILDERS = {topics.USAGE: usage_row, topics.LEDGER: ledger_row}


@dataclass
class SinkProgress:
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    skipped: int = 0


class Sink(Service):
    """Consumes (read_committed) and inserts batches; see the module docstring for the order."""

    def __init__(self, settings: Settings, *, client=None, batch_max: int = 20_000, poll_s: float = 0.2,
                 group_id: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.client = client or clickhouse.connect(settings)
        self.batch_max = batch_max
        self.poll_s = poll_s
        self.progress = SinkProgress()
        self.consumer = clients.consumer(settings, group_id or f"{settings.group_prefix}-sink")
        self.consumer.subscribe(list(TABLES))
        self.lock = threading.Lock()  # chdb: one client in this process, shared with readers

    def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        """Query ClickHouse through the sink's client, between inserts."""
        with self.lock:
            return clickhouse.query(self.client, sql, parameters)

    def close(self) -> None:
        self.consumer.close()

    def step(self) -> int:
        """One batch: consume, insert every slice, commit. Returns the messages consumed."""
        messages = self.consumer.consume(self.batch_max, self.poll_s)
        if not messages:
            return 0
        slices: dict[tuple[str, int], list] = defaultdict(list)
        last: dict[tuple[str, int], int] = {}
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", m.error())
                continue
            key = (m.topic(), m.partition())
            first.setdefault(key, m.offset())
            last[key] = m.offset()
            row = ROW_BUILDERS[m.topic()](m.value(), m.partition(), m.offset())
            if row is None:
                self.progress.skipped += 1
            else:
                slices[key].append(row)
        for key, rows in slices.items():
            topic, partition = key
            table, columns = TABLES[topic]
            token = f"{topic}:{partition}:{first[key]}-{last[key]}"
            with self.lock:
                self.client.insert(table, rows, column_names=columns,
                                   settings={"insert_deduplication_token": token})
            self.progress.rows[table] += len(rows)
        self.consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()], asynchronous=False)
        self.progress.batches += 1
        return len(messages)
