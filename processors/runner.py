"""The exactly-once ledger processor: consume -> fold -> produce, one Kafka transaction a batch.

Commit order of one batch (all or nothing, in one transaction):
  1. ledger entries, alerts, enforcement changes, rejections, balances of touched
     accounts and snapshots of touched tenants — produced inside the transaction, each to
     the input's partition number;
  2. the input offsets of exactly the messages applied, by ``send_offsets_to_transaction``
     (bound to the consumer group generation, so a zombie of an older generation is fenced);
  3. ``commit_transaction``.
Nothing is written outside a transaction, so a crash anywhere aborts the whole batch and
the restarted (or newly assigned) instance resumes from the committed offsets with the
committed snapshots: nothing is applied twice and nothing is skipped.

Restore: when partition *p* is assigned, the instance first asks for the committed
offsets (this waits for any transaction still pending on them, KIP-447), then reads
partition *p* of ``finops.snapshots.v1`` to its end; the latest snapshot of each tenant is
exactly the state after the last committed batch.

Order: the two input topics are merged per partition number by event time
(:mod:`.merge`), so a tenant's commands and usage are applied in one deterministic order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from .. import clients
from ..errors import FinopsError
from ..schemas import outputs, topics, wire
from ..service import Service
from ..settings import Settings
from .ledger import Book, balance_of
from .merge import Item, Merger
from .state import restore, snapshot

log = logging.getLogger("finops.ledger")

_OUTPUT_TOPIC = {outputs.LedgerEntry: topics.LEDGER, outputs.Alert: topics.ALERTS,
                 outputs.Enforcement: topics.ENFORCEMENT}
_encoder = msgspec.json.Encoder(enc_hook=wire.enc_hook)
_REFRESH_S = 2.0  # after this long waiting on a partition, re-read its high watermark
_MARKER_GAP = 8  # offsets at a partition's end that may be transaction markers, not messages
_FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


class Fenced(FinopsError):
    """Another instance took over this transactional id or group generation."""


class PartitionsLost(FinopsError):
    """This instance missed its heartbeats (frozen, or cut off from the broker) and its
    partitions went elsewhere: it drops its state and restarts to rejoin the group."""


class Stuck(FinopsError):
    """A transaction call has not returned for far longer than its timeout.

    librdkafka can block in ``send_offsets_to_transaction`` past its timeout after the
    group coordinator went away (librdkafka issues #5456, #5511). Nothing is lost: the
    transaction is aborted by the broker; a fresh process resumes from the committed state.
    """


@dataclass
class LedgerStats:
    consumed: int = 0
    applied: int = 0
    rejected: int = 0
    transactions: int = 0
    aborted: int = 0
    last_batch: int = 0
    last_txn_ms: float = 0.0
    # cumulative seconds per phase: waiting in consume, decoding + merging, applying and
    # producing, committing the transaction
    consume_s: float = 0.0
    decode_s: float = 0.0
    apply_s: float = 0.0
    commit_s: float = 0.0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per input partition
    lag: int = 0  # input messages in Kafka not yet committed, on this instance's partitions


class LedgerProcessor(Service):
    """One instance of the ledger processor; several instances share the input partitions."""

    def __init__(self, settings: Settings, *, instance: str = "0", batch_max: int = 20_000,
                 batch_s: float = 0.1, idle_s: float = 0.5, group_id: str | None = None,
                 spend_every: float = 0.5) -> None:
        super().__init__()
        self.settings = settings
        self.batch_max = batch_max
        self.batch_s = batch_s
        self.book = Book()
        self.stats = LedgerStats()
        self.merger = Merger()
        self.idle_s = idle_s
        self.partition_of: dict[str, int] = {}  # tenant -> input partition number
        self._owned: set[int] = set()  # input partition numbers assigned to this instance now
        self._fetched: dict[tuple[str, int], int] = {}  # next offset after the last message consumed
        self._callback_error: Exception | None = None
        self._txn_since: float | None = None  # monotonic start of the open transaction
        self._lag_at = 0.0
        self.spend_every = spend_every
        self._spend_flushed = 0.0
        group = group_id or f"{settings.group_prefix}-ledger"
        # Snapshots belong to the consumer group whose offsets they match: a rebuild under a
        # new group starts from nothing, not from another group's state.
        self._snapshot_prefix = f"{group}/".encode()
        self.producer = clients.transactional_producer(
            settings, f"{group}-{instance}", **{"queue.buffering.max.messages": 2_000_000,
                                                 "queue.buffering.max.kbytes": 1_048_576,
                                                 "message.max.bytes": topics.SNAPSHOT_MAX_BYTES})
        try:
            self.producer.init_transactions(60)
        except KafkaException as exc:
            raise FinopsError(f"cannot start transactions on {settings.bootstrap}: {exc.args[0].str()}") from None
        self.consumer = clients.consumer(settings, group)
        self.consumer.subscribe(list(topics.INPUTS), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    # ------------------------------------------------------------------ lifecycle

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
        for tp in clients.committed_offsets(consumer, partitions):
            self.stats.committed[(tp.topic, tp.partition)] = max(tp.offset, 0)
            self._fetched[(tp.topic, tp.partition)] = max(tp.offset, 0)
        self._restore(numbers)
        self.merger.assign(numbers, time.monotonic())
        self._owned |= numbers
        log.info("assigned partitions %s", sorted(numbers))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No transaction is open here: callbacks run inside consume(), between batches.
        numbers = {tp.partition for tp in partitions}
        self._owned -= numbers
        self.merger.revoke(numbers)
        for tenant, partition in list(self.partition_of.items()):
            if partition in numbers:
                del self.partition_of[tenant]
                self.book.tenants.pop(tenant, None)
        for key in [k for k in self._fetched if k[1] in numbers]:
            del self._fetched[key]
        log.info("revoked partitions %s", sorted(numbers))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away because this instance missed its heartbeats (frozen, paused,
        cut off from the broker): another instance may own them now, so this one is a zombie.
        It stops (whatever it still tries to commit is fenced by the group generation) and
        asks its supervisor for a restart, which rejoins the group from committed state."""
        self._on_revoke(consumer, partitions)
        self._callback_error = PartitionsLost("ledger processor lost its partitions (missed heartbeats); "
                                              "restarting to rejoin its group")

    def _restore(self, numbers: set[int]) -> None:
        """Load the latest committed snapshot of every tenant on these partitions."""
        prefix = self._snapshot_prefix
        for m in clients.read_to_end(self.settings, topics.SNAPSHOTS, numbers):
            if not m.key().startswith(prefix) or m.value() is None:
                continue
            state = restore(m.value())
            self.book.tenants[state.tenant_id] = state
            self.partition_of[state.tenant_id] = m.partition()

    def _rewind(self) -> None:
        """After an aborted transaction: drop the in-memory state, restore it, seek back."""
        assignment = self.consumer.assignment()
        self.book = Book()
        self.partition_of.clear()
        self.merger.clear()
        committed = clients.committed_offsets(self.consumer, assignment)
        self._restore({tp.partition for tp in assignment})
        for tp in committed:
            self._fetched[(tp.topic, tp.partition)] = max(tp.offset, 0)
            self.consumer.seek(TopicPartition(tp.topic, tp.partition,
                                              tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))

    # ------------------------------------------------------------------ the loop

    def _quiet(self, topic: str, partition: int, idle_for: float) -> bool:
        """May the other topic of this partition go on without waiting for this one?

        Yes when this one holds nothing more in Kafka now (position >= high watermark). A
        gap of a few offsets that stays idle for ``idle_s`` is transaction markers (apps
        that publish with transactions), which never arrive as messages.
        """
        tp = TopicPartition(topic, partition)
        _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
        if high < 0 or (idle_for >= _REFRESH_S and high > self._fetched.get((topic, partition), 0)):
            # not fetched yet, or waiting long on a gap: ask the broker rather than trust the cache
            _low, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        gap = high - self._fetched.get((topic, partition), 0)
        return gap <= 0 or (gap <= _MARKER_GAP and idle_for >= self.idle_s)

    def step(self) -> int:
        """Consume, then commit what may be applied (in merge order) with its outputs in one transaction."""
        t0 = time.perf_counter()
        messages = self.consumer.consume(self.batch_max, self.batch_s)
        if self._callback_error is not None:
            raise self._callback_error
        t1 = time.perf_counter()
        self.stats.consume_s += t1 - t0
        now = time.monotonic()
        decode = wire.decode
        add = self.merger.add
        rejection_type = wire.Rejection
        fetched = self._fetched
        owned = self._owned
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if partition not in owned:  # fetched before a revoke: its new owner applies it
                continue
            raw = m.value() or b""
            message = decode(raw)
            add(Item(topic, partition, offset, None if type(message) is rejection_type else message.ts,
                     message, raw), now)
            fetched[(topic, partition)] = offset + 1
        self.stats.consumed += len(messages)
        items = self.merger.take(self._quiet, now, self.batch_max)
        t2 = time.perf_counter()
        self.stats.decode_s += t2 - t1
        spend_due = now - self._spend_flushed >= self.spend_every and self._spend_pending()
        if not items and not spend_due:
            return 0
        self._txn_since = time.monotonic()
        try:
            self.producer.begin_transaction()
            offsets = self._process(items, spend_due)
            t3 = time.perf_counter()
            if offsets:
                self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 60)
            self.producer.commit_transaction(60)
        except KafkaException as exc:
            self._fail(exc)
            return 0
        finally:
            self._txn_since = None
        t4 = time.perf_counter()
        self.stats.apply_s += t3 - t2
        self.stats.commit_s += t4 - t3
        self.stats.transactions += 1
        self.stats.last_batch = len(items)
        self.stats.last_txn_ms = (t4 - t2) * 1000
        for tp in offsets:
            self.stats.committed[(tp.topic, tp.partition)] = tp.offset
        if now - self._lag_at >= 1.0:
            self._lag_at = now
            self.stats.lag = self._lag()
        return len(items)

    def _lag(self) -> int:
        lag = 0
        for (topic, partition), offset in self._fetched.items():
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            lag += max(high - self.stats.committed.get((topic, partition), offset), 0) if high >= 0 else 0
        return lag

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        """Has this instance committed every input up to these end offsets (see clients.input_ends)?"""
        committed = self.stats.committed
        return all(committed.get(key, 0) >= end for key, end in ends.items() if end > 0)

    def stuck_for(self) -> float:
        """Seconds the current transaction has been open (0 when none is)."""
        since = self._txn_since
        return time.monotonic() - since if since is not None else 0.0

    def _fail(self, exc: KafkaException) -> None:
        error = exc.args[0]
        if error.fatal() or error.code() in _FENCED:
            raise Fenced(f"ledger processor fenced, another instance owns its work now: {error.str()}") from exc
        log.warning("transaction failed (%s); aborting, restoring and retrying", error.str())
        self.stats.aborted += 1
        try:
            self.producer.abort_transaction(60)
        except KafkaException as abort_exc:
            if abort_exc.args[0].fatal() or abort_exc.args[0].code() in _FENCED:
                raise Fenced(f"ledger processor fenced: {abort_exc.args[0].str()}") from abort_exc
            raise
        self._rewind()

    def _spend_pending(self) -> bool:
        return any(state.spend for state in self.book.tenants.values())

    def _flush_spend(self) -> set[str]:
        """Publish every tenant's pending spend (outputs.Spend per account and hour); the tenants flushed.

        Called inside the transaction; their snapshots (written after) no longer hold it.
        """
        produce = self.producer.produce
        flushed = set()
        for tenant_id, state in self.book.tenants.items():
            if not state.spend or tenant_id not in self.partition_of:
                continue
            partition = self.partition_of[tenant_id]
            for key, (micros, requests, last) in state.spend.items():
                account_id, hour = key.split("\x1f")
                acct = state.accounts[account_id]
                ends = [g.ends_at for g in acct.grants if g.ends_at is not None and g.remaining > 0]
                record = outputs.Spend(
                    tenant_id=tenant_id, account_id=account_id,
                    hour=datetime.fromtimestamp(int(hour), timezone.utc), spent_micros=micros, requests=requests,
                    ts=datetime.fromtimestamp(last, timezone.utc), available_micros=acct.available,
                    granted_micros=acct.period_granted, period=acct.period, window_end=min(ends) if ends else None)
                produce(topics.SPEND, _encoder.encode(record), outputs.balance_key(tenant_id, account_id).encode(),
                        partition=partition)
            state.spend.clear()
            flushed.add(tenant_id)
        self._spend_flushed = time.monotonic()
        return flushed

    def _process(self, items: list[Item], flush_spend: bool = False) -> list[TopicPartition]:
        """Apply items in order; produce every output into the open transaction; return the offsets."""
        produce = self.producer.produce
        handle = self.book.handle
        touched: set[str] = set()
        positions: dict[tuple[str, int], int] = {}
        rejected = 0
        for item in items:
            positions[(item.topic, item.partition)] = item.offset + 1
            message = item.message
            partition = item.partition
            if item.ts is None:
                rejection = message
            else:
                tenant_id = message.tenant_id
                self.partition_of[tenant_id] = partition
                touched.add(tenant_id)  # even a refused message may let time pass
                produced, refused = handle(message, item.raw)
                key = tenant_id.encode()
                for output in produced:
                    topic = _OUTPUT_TOPIC[type(output)]
                    if topic is topics.ENFORCEMENT:
                        produce(topic, _encoder.encode(output),
                                outputs.balance_key(tenant_id, output.account_id).encode(), partition=partition)
                    else:
                        produce(topic, _encoder.encode(output), key, partition=partition)
                if refused is None:
                    continue
                rejection = wire.Rejection(id=message.id, tenant_id=tenant_id, reason=refused.reason,
                                           detail=refused.detail, **wire.raw_fields(item.raw))
            rejected += 1
            key = rejection.tenant_id.encode() if rejection.tenant_id else None
            produce(topics.REJECTED, _encoder.encode(rejection), key, partition=partition)
        self.stats.applied += len(items) - rejected
        self.stats.rejected += rejected
        if flush_spend:
            touched |= self._flush_spend()  # their snapshots must say the spend was published

        for tenant_id in touched:
            state = self.book.tenants[tenant_id]
            partition = self.partition_of[tenant_id]
            for account_id in state.drain_touched():
                balance = balance_of(state, state.accounts[account_id])
                produce(topics.BALANCES, _encoder.encode(balance),
                        outputs.balance_key(tenant_id, account_id).encode(), partition=partition)
            produce(topics.SNAPSHOTS, snapshot(state), self._snapshot_prefix + tenant_id.encode(),
                    partition=partition)
        return [TopicPartition(t, p, o) for (t, p), o in positions.items()]
