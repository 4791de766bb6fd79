"""The exactly-once ledger processor: consume -> fold -> produce, one Kafka transaction a batch.

Commit order of one batch (all or nothing, in one transaction):
  1. ledger entries, rejections, balances of touched accounts, snapshots of touched
     tenants — produced inside the transaction, to the input's partition number;
  2. the input offsets, by ``send_offsets_to_transaction`` (bound to the consumer group
     generation, so a zombie from an older generation is fenced);
  3. ``commit_transaction``.
Nothing is written outside a transaction, so a crash anywhere aborts the whole batch and
the restarted instance resumes from the committed offsets with the committed snapshots.

Restore: when partition *p* is assigned, the instance first asks for the committed
offsets (this waits for any transaction still pending on them), then reads partition *p*
of ``finops.snapshots.v1`` to its end; the latest snapshot of each tenant is exactly the
state after the last committed batch. Input order: within a batch messages are applied in
event-time order (commands before usage on equal time), each topic-partition in offset
order otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from ..errors import FinopsError
from .. import clients
from ..schemas import outputs, topics, wire
from ..settings import Settings
from .ledger import Book, balance_of
from .state import restore, snapshot

log = logging.getLogger("finops.ledger")

_TOPIC_RANK = {topics.COMMANDS: 0, topics.USAGE: 1}
_OUTPUT_TOPIC = {outputs.LedgerEntry: topics.LEDGER, outputs.Alert: topics.ALERTS,
                 outputs.Enforcement: topics.ENFORCEMENT}
_encoder = msgspec.json.Encoder(enc_hook=wire._enc_hook)


class Fenced(FinopsError):
    """Another instance took over this transactional id or group generation."""


@dataclass
class LedgerStats:
    consumed: int = 0
    applied: int = 0
    rejected: int = 0
    transactions: int = 0
    last_txn_ms: float = 0.0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per input partition


class LedgerProcessor:
    """One instance of the ledger processor; several instances share the input partitions."""

    def __init__(self, settings: Settings, *, instance: str = "0", batch_max: int = 10_000,
                 batch_s: float = 0.1, group_id: str | None = None) -> None:
        self.settings = settings
        self.batch_max = batch_max
        self.batch_s = batch_s
        self.book = Book()
        self.stats = LedgerStats()
        self.partition_of: dict[str, int] = {}  # tenant -> input partition number
        self._stop = threading.Event()
        self._callback_error: Exception | None = None
        group = group_id or f"{settings.group_prefix}-ledger"
        self.producer = clients.transactional_producer(
            settings, f"{group}-{instance}", **{"queue.buffering.max.messages": 1_000_000})
        self.producer.init_transactions(60)
        self.consumer = clients.consumer(settings, group)
        self.consumer.subscribe(list(topics.INPUTS), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.flush(10)

    # ------------------------------------------------------------------ assignment and restore

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka cannot carry an exception out of a callback: keep it, raise it after consume().
        try:
            self._assign(consumer, partitions)
        except Exception as exc:  # noqa: BLE001 - re-raised by step()
            self._callback_error = exc

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        # Waits for transactional offsets still pending, so the snapshots read next are theirs.
        for tp in consumer.committed(partitions, timeout=60):
            self.stats.committed[(tp.topic, tp.partition)] = max(tp.offset, 0)
        self._restore(numbers)
        log.info("assigned partitions %s", sorted(numbers))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        for tenant, partition in list(self.partition_of.items()):
            if partition in numbers:
                del self.partition_of[tenant]
                self.book.tenants.pop(tenant, None)
        log.info("revoked partitions %s", sorted(numbers))

    def _restore(self, numbers: set[int]) -> None:
        """Load the latest committed snapshot of every tenant on these partitions."""
        for m in clients.read_to_end(self.settings, topics.SNAPSHOTS, numbers):
            state = restore(m.value())
            self.book.tenants[state.tenant_id] = state
            self.partition_of[state.tenant_id] = m.partition()

    def _rewind(self) -> None:
        """After an aborted transaction: drop the in-memory state, restore it, seek back."""
        assignment = self.consumer.assignment()
        self.book = Book()
        self.partition_of.clear()
        committed = self.consumer.committed(assignment, timeout=60)
        self._restore({tp.partition for tp in assignment})
        for tp in committed:
            self.consumer.seek(TopicPartition(tp.topic, tp.partition,
                                              tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))

    # ------------------------------------------------------------------ the loop

    def step(self) -> int:
        """Consume one batch and commit it with its outputs in one transaction."""
        messages = self.consumer.consume(self.batch_max, self.batch_s)
        if self._callback_error is not None:
            raise self._callback_error
        batch = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            batch.append(m)
        if not batch:
            return 0
        started = time.perf_counter()
        self.producer.begin_transaction()
        try:
            offsets = self._process(batch)
            self.producer.send_offsets_to_transaction(
                offsets, self.consumer.consumer_group_metadata(), 60)
            self.producer.commit_transaction(60)
        except KafkaException as exc:
            self._fail(exc)
            return 0
        self.stats.transactions += 1
        self.stats.consumed += len(batch)
        self.stats.last_txn_ms = (time.perf_counter() - started) * 1000
        for tp in offsets:
            self.stats.committed[(tp.topic, tp.partition)] = tp.offset
        return len(batch)

    def _fail(self, exc: KafkaException) -> None:
        error = exc.args[0]
        if error.fatal() or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                             KafkaError.INVALID_PRODUCER_EPOCH):
            raise Fenced(f"ledger processor fenced: {error.str()}") from exc
        log.warning("transaction aborted (%s); restoring and retrying", error.str())
        self.producer.abort_transaction(60)
        self._rewind()

    def _process(self, batch: list) -> list[TopicPartition]:
        decoded = []
        rejections = []
        for m in batch:
            message = wire.decode(m.value() or b"")
            if isinstance(message, wire.Rejection):
                rejections.append((m, message))
            else:
                decoded.append((message.ts, _TOPIC_RANK[m.topic()], m.offset(), m, message))
        decoded.sort(key=lambda item: item[:3])

        produce = self.producer.produce
        handle = self.book.handle
        touched: set[str] = set()
        for _ts, _rank, _offset, m, message in decoded:
            partition = m.partition()
            tenant_id = message.tenant_id
            self.partition_of[tenant_id] = partition
            touched.add(tenant_id)  # even a refused message may let time pass
            produced, refused = handle(message, m.value())
            if refused is None:
                self.stats.applied += 1
            else:
                rejections.append((m, wire.Rejection(id=message.id, tenant_id=tenant_id, reason=refused.reason,
                                                     detail=refused.detail, input=wire.raw_text(m.value()))))
            key = tenant_id.encode()
            for output in produced:
                topic = _OUTPUT_TOPIC[type(output)]
                if topic is topics.ENFORCEMENT:
                    produce(topic, _encoder.encode(output),
                            outputs.balance_key(tenant_id, output.account_id).encode(), partition=partition)
                else:
                    produce(topic, _encoder.encode(output), key, partition=partition)

        for m, rejection in rejections:
            key = rejection.tenant_id.encode() if rejection.tenant_id else None
            produce(topics.REJECTED, _encoder.encode(rejection), key, partition=m.partition())
        self.stats.rejected += len(rejections)

        for tenant_id in touched:
            state = self.book.tenants[tenant_id]
            partition = self.partition_of[tenant_id]
            for account_id in state.drain_touched():
                balance = balance_of(state, state.accounts[account_id])
                produce(topics.BALANCES, _encoder.encode(balance),
                        outputs.balance_key(tenant_id, account_id).encode(), partition=partition)
            produce(topics.SNAPSHOTS, snapshot(state), tenant_id.encode(), partition=partition)

        positions: dict[tuple[str, int], int] = {}
        for m in batch:
            positions[(m.topic(), m.partition())] = m.offset() + 1
        return [TopicPartition(t, p, o) for (t, p), o in positions.items()]
