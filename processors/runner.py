"""The exactly-once ledger processor: consume -> fold -> produce, one Kafka transaction a batch.

This module is the I/O shell; what a batch writes is computed by the pure :func:`.plan.plan`.

Commit order of one batch (quix-streams' checkpoint order; all or nothing in Kafka):
  1. ``begin_transaction``;
  2. produce, inside the transaction: ledger entries, alerts, enforcement changes,
     rejections, spend and balances of changed accounts (each to its input's partition
     number), and every state key the batch changed to the changelog topic
     ``<group>-state-changelog`` (:mod:`.store`), same partition number;
  3. the input offsets of exactly the items applied, by ``send_offsets_to_transaction``
     (bound to the consumer group generation, so a zombie of an older generation is fenced);
  4. ``commit_transaction`` (flushes, then commits);
  5. only then, the same state changes to the local RocksDB store of each partition, with
     the changelog offset they reach as its checkpoint, in one atomic write batch.
A crash before 4 aborts the transaction: the store never saw it, the committed offsets and
changelog are unchanged. A crash between 4 and 5 leaves the store behind its changelog:
restore (below) replays the changelog from the store's checkpoint. Nothing is applied twice
and nothing is skipped.

Restore: when partition *p* is assigned, the instance first asks for the committed input
offsets (this waits for any transaction still pending on them, KIP-447), then brings the
store of *p* up to the end of changelog partition *p* (read_committed) and loads its
tenants' small state into memory; id memories are read from disk per lookup.

Order: the two input topics are merged per partition number in the order Kafka stored
them (:mod:`.merge`), so a tenant's commands and usage are applied in one deterministic order.
A topic is *idle* (the other may go on without it) only when a high watermark asked of the
broker after the waiting messages arrived shows nothing more in it: a cached watermark may
predate a command that was already stored, and applying usage before it would differ from
a replay (wire-v1.md, "Publishing files").
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, IsolationLevel, KafkaError, KafkaException, TopicPartition,
)
from confluent_kafka.admin import NewTopic, OffsetSpec

from .. import clients
from ..errors import FinopsError
from ..schemas import topics, wire
from ..service import Service
from ..settings import Settings
from .ledger import Ledger
from .merge import Item, PartitionBuffer
from .plan import Plan, plan
from .state import Rules
from .store import TRUST_CHECKPOINT_S, PartitionStore

log = logging.getLogger("finops.ledger")

_REFRESH_S = 2.0  # after this long waiting on a partition, re-read its high watermark
_FLOWING_WAIT_S = 0.002  # consume's wait while input flows (see LedgerProcessor._step)
_RESTORE_TIMEOUT_S = 6 * 3600.0  # reading one changelog partition to its end may take this long
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
    """Counters of the ledger processor (its metrics line): input records consumed, applied and
    rejected; transactions committed and aborted; the last batch's size and its transaction's
    wall milliseconds; and cumulative wall seconds per phase (consume, decode and merge, apply and
    produce, commit)."""

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
    watermark_s: float = 0.0  # of decode_s: asking the broker for high watermarks (the merge's idle test)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per input partition
    lag: int = 0  # input messages in Kafka not yet committed, on this instance's partitions
    changelog_records: int = 0  # state-store changes written to the changelog (committed transactions)
    changelog_bytes: int = 0  # their keys and values, in bytes (before compression)
    restored_records: int = 0  # changelog records applied to local stores when partitions were assigned
    restore_s: float = 0.0  # wall seconds spent restoring (bringing stores up to their changelog)




def ensure_changelog(settings: Settings, group: str) -> str:
    """The changelog topic of this ledger group: created when missing (``finops stack up`` creates the
    default group's), checked to have a partition for every input partition.

    Raises :class:`FinopsError` (one line) when it is missing while the group has committed
    input offsets: the state those offsets belong to is gone, and going on would fold the
    rest of the input into empty balances. The way out is a rebuild (docs/operations.md).
    """
    name = topics.changelog_name(group)
    admin = clients.admin(settings)
    metadata = admin.list_topics(timeout=30)
    inputs = max(len(metadata.topics[topic].partitions) for topic in topics.INPUTS if topic in metadata.topics)
    if name in metadata.topics:
        have = len(metadata.topics[name].partitions)
        if have < inputs:
            raise FinopsError(f"the changelog topic {name} has {have} partitions, the input topics {inputs}: "
                              f"add partitions to it (kafka-topics.sh --alter --partitions {inputs})")
        return name
    probe = clients.consumer(settings, group)
    try:
        offsets = clients.committed_offsets(probe, [TopicPartition(t, p) for t in topics.INPUTS
                                                    for p in range(inputs)], timeout=30)
    finally:
        probe.close()
    if any(tp.offset > 0 for tp in offsets):
        raise FinopsError(f"the changelog topic {name} is missing but group {group} has committed input offsets: "
                          f"its state is lost. Rebuild it from offset 0 under a new FINOPS_GROUP_PREFIX "
                          f"(docs/operations.md, \"Replay and rebuild\")")
    spec = topics.changelog_spec(name)
    replication = -1 if settings.external_kafka else 1
    future = admin.create_topics([NewTopic(name, inputs, replication, config=topics.topic_config(spec))])[name]
    try:
        future.result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise FinopsError(f"cannot create the changelog topic {name}: {exc.args[0].str()}") from None
    return name


class _Collector:
    """Keeps Python's cyclic garbage collector off the hot path.

    Measured with ``finops bench ledger``: automatic collections took about a fifth of the
    processor's time, scanning each batch's survivors (and the growing state) again and
    again. Automatic collection is off during a step; after it, the young objects are
    collected (a batch's cyclic garbage, if any) and what survives is frozen: the ledger's
    state is never scanned again. Every ``full_every_s`` of wall time a full collection
    frees cycles among frozen objects. Memory is freed by reference counting as before.
    The collector is one per process: under ``finops run`` the other processors' threads
    (sink, scheduler) share this policy, so a reference cycle of theirs may live up to
    ``full_every_s`` before it is freed.
    """

    def __init__(self, full_every_s: float = 600.0) -> None:
        self.full_every_s = full_every_s
        self._full_at = time.monotonic()
        self._was_enabled = True

    def pause(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()

    def resume(self) -> None:
        now = time.monotonic()
        if now - self._full_at >= self.full_every_s:
            self._full_at = now
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(0)
        gc.freeze()
        if self._was_enabled:
            gc.enable()


class LedgerProcessor(Service):
    """One instance of the ledger processor; several instances share the input partitions."""

    def __init__(self, settings: Settings, *, instance: str = "0", batch_max: int = 20_000,
                 batch_s: float = 0.1, group_id: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.batch_max = batch_max
        self.batch_s = batch_s
        self.rules = Rules(id_horizon_s=settings.id_horizon.total_seconds(),
                           max_future_skew_s=settings.max_future_skew.total_seconds(),
                           unknown_account_grace_s=settings.unknown_account_grace.total_seconds())
        self._skew = settings.max_future_skew
        self.ledger = Ledger(self.rules)
        self.stats = LedgerStats()
        self.buffer = PartitionBuffer()
        self.home: dict[str, int] = {}  # tenant -> the partition whose store holds its state
        self.stores: dict[int, PartitionStore] = {}
        self._owned: set[int] = set()  # input partition numbers assigned to this instance now
        self._position: dict[tuple[str, int], int] = {}  # position: next offset after the last message consumed
        self._fresh_high: dict[tuple[str, int], tuple[int, float]] = {}  # (high watermark, monotonic asked at)
        self._eof: dict[tuple[str, int], int] = {}  # end-of-partition offsets librdkafka reported (past markers)
        self._callback_error: Exception | None = None
        self._txn_since: float | None = None  # monotonic start of the open transaction
        self._lag_at = 0.0
        self._delivered: dict[int, int] = {}  # changelog partition -> offset of its last delivered record
        self._collector = _Collector()
        self._flowing = False  # did the last step apply anything (then the next one does not wait)
        self._admin = None  # an AdminClient, made when first needed (_ask_high_watermarks)
        self._spend_every_s = settings.spend_every.total_seconds()
        self._spend_at = 0.0  # monotonic time the usage spend was last published (finops.spend.v1)
        group = group_id or settings.group("ledger")
        self.group = group
        self.changelog = ensure_changelog(settings, group)
        self.store_dir = Path(settings.data_dir) / "ledger-state" / group / instance
        self.producer = clients.transactional_producer(
            settings, f"{group}-{instance}", **{"queue.buffering.max.messages": 2_000_000,
                                                 "queue.buffering.max.kbytes": 1_048_576,
                                                 "message.max.bytes": topics.CHANGELOG_MAX_BYTES})
        try:
            self.producer.init_transactions(60)
        except KafkaException as exc:
            raise FinopsError(f"cannot start transactions on {settings.bootstrap}: {exc.args[0].str()}") from None
        self.consumer = clients.consumer(settings, group, **{"enable.partition.eof": True})
        self.consumer.subscribe(list(topics.INPUTS), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the consumer (leaving the group), flush the producer (10 s at most) and close the state stores."""
        try:
            self.consumer.close()
        finally:
            self.producer.flush(10)
            for store in self.stores.values():
                store.close()
            self.stores.clear()

    # ------------------------------------------------------------------ assignment and restore

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka cannot carry an exception out of a callback: keep it, raise it after consume().
        try:
            self._assign(consumer, partitions)
        except Exception as exc:  # noqa: BLE001 - re-raised by step()
            self._callback_error = exc

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        # Waits for transactional offsets still pending, so the changelog read next is theirs.
        for tp in clients.committed_offsets(consumer, partitions):
            self.stats.committed[(tp.topic, tp.partition)] = max(tp.offset, 0)
            self._position[(tp.topic, tp.partition)] = max(tp.offset, 0)
            self._eof.pop((tp.topic, tp.partition), None)
        self._restore(numbers)
        self.buffer.assign(numbers, time.monotonic())
        self._owned |= numbers
        log.info("assigned partitions %s", sorted(numbers))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No transaction is open here: callbacks run inside consume(), between batches.
        numbers = {tp.partition for tp in partitions}
        self._owned -= numbers
        self.buffer.revoke(numbers)
        self._drop(numbers)
        for number in numbers:
            store = self.stores.pop(number, None)
            if store is not None:
                store.close()
        for key in [k for k in self._position if k[1] in numbers]:
            del self._position[key]
            self._eof.pop(key, None)
        log.info("revoked partitions %s", sorted(numbers))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away because this instance missed its heartbeats (frozen, paused,
        cut off from the broker): another instance may own them now, so this one is a zombie.
        It stops (whatever it still tries to commit is fenced by the group generation) and
        asks its supervisor for a restart, which rejoins the group from committed state."""
        self._on_revoke(consumer, partitions)
        self._callback_error = PartitionsLost("ledger processor lost its partitions (missed heartbeats); "
                                              "restarting to rejoin its group")

    def _drop(self, numbers: set[int]) -> None:
        """Forget the in-memory state of the tenants whose home is one of these partitions."""
        for tenant, partition in list(self.home.items()):
            if partition in numbers:
                del self.home[tenant]
                self.ledger.tenants.pop(tenant, None)

    def _restore(self, numbers: set[int]) -> None:
        """Bring each partition's store up to its changelog's end, then load its tenants."""
        started = time.perf_counter()
        ends = clients.end_offsets(self.settings, [self.changelog])
        for number in sorted(numbers):
            store = self.stores.get(number)
            if store is None:
                store = self.stores[number] = PartitionStore.open(self.store_dir, number)
            end = ends.get((self.changelog, number), 0)
            start = store.checkpoint
            if start > end:  # the changelog was recreated: this store is of another history
                if any(self.stats.committed.get((topic, number), 0) > 0 for topic in topics.INPUTS):
                    raise FinopsError(
                        f"the state store of partition {number} is at changelog offset {start}, beyond the end "
                        f"{end} of {self.changelog}: the changelog was recreated and the state of the committed "
                        f"offsets is lost. Rebuild under a new FINOPS_GROUP_PREFIX (docs/operations.md)")
                start = -1
            elif start and store.checkpoint_age() > TRUST_CHECKPOINT_S:
                log.info("state store p%d was last written %.0f h ago: restoring it from the changelog's start",
                         number, store.checkpoint_age() / 3600)
                start = -1
            if start < 0:
                store.wipe()
                start = 0
            if start < end:
                last = start

                def records():
                    nonlocal last
                    for m in clients.read_to_end(self.settings, self.changelog, [number], start={number: start},
                                                 timeout=_RESTORE_TIMEOUT_S):
                        last = m.offset() + 1
                        yield m.key(), m.value()

                self.stats.restored_records += store.apply_changelog(records(), lambda: max(last, start))
            for tenant_id, state in store.load(self.rules).items():
                self.ledger.tenants[tenant_id] = state
                self.home[tenant_id] = number
        self.stats.restore_s += time.perf_counter() - started

    def _rewind(self) -> None:
        """After an aborted transaction: reload the committed state from the stores, seek back."""
        assignment = self.consumer.assignment()
        self._drop(set(self.stores))
        self.buffer.clear()
        committed = clients.committed_offsets(self.consumer, assignment)
        for number, store in self.stores.items():
            for tenant_id, state in store.load(self.rules).items():
                self.ledger.tenants[tenant_id] = state
                self.home[tenant_id] = number
        self._eof.clear()
        for tp in committed:
            self._position[(tp.topic, tp.partition)] = max(tp.offset, 0)
            self.consumer.seek(TopicPartition(tp.topic, tp.partition,
                                              tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))

    # ------------------------------------------------------------------ the loop

    def _idle(self, topic: str, partition: int, idle_for: float) -> bool:
        """May the other topic of this partition go on without waiting for this one?

        Yes when this one holds nothing more in Kafka: what the consumer has fetched (its
        position, or the end-of-partition offset librdkafka reported, which is past any
        transaction markers) has reached a high watermark asked of the broker after the
        other topic's waiting messages arrived, so whatever was stored before them has been
        fetched. No guess from time: a command that is in Kafka is always applied before the
        usage stored after it (wire-v1.md, "Publishing files").
        """
        key = (topic, partition)
        if self._stale(topic, partition, idle_for):
            asked = time.monotonic()
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10,
                                                             cached=False)
            self._fresh_high[key] = (high, asked)
            self.stats.watermark_s += time.monotonic() - asked
        return self._fresh_high[key][0] <= self._reached(key)

    def _reached(self, key: tuple[str, int]) -> int:
        return max(self._position.get(key, 0), self._eof.get(key, 0))

    def _stale(self, topic: str, partition: int, idle_for: float) -> bool:
        """Must the idle test of this topic-partition ask the broker again? Yes when its last
        high watermark was asked before the other topic's waiting messages arrived (or is
        older than ``_REFRESH_S`` of waiting and still ahead of what was fetched)."""
        key = (topic, partition)
        other = topics.USAGE if topic == topics.COMMANDS else topics.COMMANDS
        fresh = self._fresh_high.get(key)
        return fresh is None or fresh[1] < self.buffer.last_arrival.get((other, partition), 0.0) or \
            (idle_for >= _REFRESH_S and fresh[0] > self._reached(key))

    def _ask_high_watermarks(self, now: float) -> None:
        """Ask, in one request, every high watermark the merge's idle test needs this step.

        Measured at a steady 10k usage/s: one synchronous query per partition took half of the
        ledger's time and most of a usage's latency. The idle test (:meth:`_idle`) then finds
        them fresh; it still asks on its own for any this could not get.
        """
        queues = self.buffer.queues
        wanted = []
        for partition in self._owned:
            usage, commands = queues.get((topics.USAGE, partition)), queues.get((topics.COMMANDS, partition))
            if bool(usage) == bool(commands):
                continue  # both waiting (the merge orders them) or neither: no idle test
            empty = topics.COMMANDS if usage else topics.USAGE
            if self._stale(empty, partition, now - self.buffer.last_arrival.get((empty, partition), now)):
                wanted.append(TopicPartition(empty, partition))
        if len(wanted) < 2:
            return
        if self._admin is None:
            self._admin = clients.admin(self.settings)
        asked = time.monotonic()
        futures = self._admin.list_offsets({tp: OffsetSpec.latest() for tp in wanted},
                                           isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=10)
        for tp, future in futures.items():
            try:
                self._fresh_high[(tp.topic, tp.partition)] = (future.result().offset, asked)
            except KafkaException:
                continue  # the idle test asks for this one itself
        self.stats.watermark_s += time.monotonic() - asked

    def step(self) -> int:
        """Consume, then commit what may be applied (in merge order) with its outputs in one transaction.

        The cyclic garbage collector stays off during a step (:class:`_Collector`)."""
        self._collector.pause()
        try:
            return self._step()
        finally:
            self._collector.resume()

    def _step(self) -> int:
        t0 = time.perf_counter()
        # While input flows (the last step applied some), take what has arrived meanwhile at
        # once: waiting ``batch_s`` to fill a batch would only add to every event's latency,
        # since a step's own work already lets the next batch gather. Idle, wait up to batch_s.
        messages = self.consumer.consume(self.batch_max, _FLOWING_WAIT_S if self._flowing else self.batch_s)
        if self._callback_error is not None:
            raise self._callback_error
        t1 = time.perf_counter()
        self.stats.consume_s += t1 - t0
        now = time.monotonic()
        decode = wire.decode
        add = self.buffer.add
        rejection_type = wire.Rejection
        position = self._position
        owned = self._owned
        skew = self._skew
        utc = timezone.utc
        consumed = 0
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if m.partition() in owned:
                        self._eof[(m.topic(), m.partition())] = m.offset()
                else:
                    log.warning("consume error: %s", err)
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if partition not in owned:  # fetched before a revoke: its new owner applies it
                continue
            raw = m.value() or b""
            message = decode(raw)
            kind, stamp = m.timestamp()
            stored_at = None if kind == TIMESTAMP_NOT_AVAILABLE else datetime.fromtimestamp(stamp / 1000, utc)
            if type(message) is rejection_type:
                ts = None
            else:
                ts = message.ts
                if stored_at is not None and ts - stored_at > skew:
                    ts = stored_at  # it will be refused ts_in_future: nothing to wait for
            add(Item(topic, partition, offset, ts, message, raw, stored_at), now)
            position[(topic, partition)] = offset + 1
            consumed += 1
        self.stats.consumed += consumed
        self._ask_high_watermarks(now)
        items = self.buffer.take(self._idle, now, self.batch_max)
        t2 = time.perf_counter()
        self.stats.decode_s += t2 - t1
        self._flowing = bool(items)
        publish_spend = now - self._spend_at >= self._spend_every_s
        if not items and not (publish_spend and self._spend_pending() and self._committed_owned()):
            return 0
        if publish_spend:
            self._spend_at = now
        self._txn_since = time.monotonic()
        try:
            self.producer.begin_transaction()
            batch = plan(self.ledger, items, self.home, self._open_tenant, publish_spend=publish_spend)
            offsets = self._produce(batch)
            t3 = time.perf_counter()
            # Every transaction sends offsets, a transaction of spend alone too (the offsets
            # already committed): that binds it to the group generation, so an instance that
            # lost its partitions and does not know it yet is fenced instead of publishing
            # spend its successor publishes too (or writing its stale state to the changelog).
            fence = offsets or self._committed_owned()
            if fence:
                self.producer.send_offsets_to_transaction(fence, self.consumer.consumer_group_metadata(), 60)
            self.producer.commit_transaction(60)
        except KafkaException as exc:
            self._fail(exc)
            return 0
        finally:
            self._txn_since = None
        self._checkpoint(batch)
        t4 = time.perf_counter()
        self.stats.apply_s += t3 - t2
        self.stats.commit_s += t4 - t3
        self.stats.transactions += 1
        self.stats.last_batch = len(items)
        self.stats.last_txn_ms = (t4 - t2) * 1000
        self.stats.applied += batch.applied
        self.stats.rejected += batch.rejected
        for tp in offsets:
            self.stats.committed[(tp.topic, tp.partition)] = tp.offset
        if now - self._lag_at >= 1.0:
            self._lag_at = now
            self.stats.lag = self._lag()
        return len(items)

    def _committed_owned(self) -> list[TopicPartition]:
        """The input offsets this instance has committed (or found committed) on its partitions."""
        return [TopicPartition(t, p, o) for (t, p), o in self.stats.committed.items() if p in self._owned and o > 0]

    def _spend_pending(self) -> bool:
        """Is there usage spend not yet published (an idle step then publishes it alone)?"""
        return any(state.spend_outbox for state in self.ledger.tenants.values())

    def _open_tenant(self, tenant_id: str, partition: int):
        return self.stores[partition].new_tenant(tenant_id, self.rules)

    def _produce(self, batch: Plan) -> list[TopicPartition]:
        """Produce a plan's records and state changes into the open transaction; the offsets to commit."""
        produce = self.producer.produce
        for topic, value, key, partition in batch.records:
            try:
                produce(topic, value, key, partition=partition)
            except BufferError:
                self.producer.poll(0.05)
                produce(topic, value, key, partition=partition)
        changelog = self.changelog
        self._delivered = {}
        for partition, changes in batch.changelog.items():
            last = len(changes) - 1
            for i, (key, value) in enumerate(changes):
                try:
                    produce(changelog, value, key, partition=partition,
                            on_delivery=self._on_changelog_delivery if i == last else None)
                except BufferError:
                    self.producer.poll(0.05)
                    produce(changelog, value, key, partition=partition,
                            on_delivery=self._on_changelog_delivery if i == last else None)
        return [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]

    def _on_changelog_delivery(self, error, message) -> None:
        if error is None:
            self._delivered[message.partition()] = message.offset()

    def _checkpoint(self, batch: Plan) -> None:
        """After the commit: the batch's state changes to the local stores, with their changelog offsets."""
        deadline = time.monotonic() + 30
        while len(self._delivered) < len(batch.changelog) and time.monotonic() < deadline:
            self.producer.poll(0.01)  # delivery reports of the committed changelog records
        for partition, changes in batch.changelog.items():
            self.stats.changelog_records += len(changes)
            self.stats.changelog_bytes += sum(len(key) + (len(value) if value is not None else 0)
                                              for key, value in changes)
            store = self.stores.get(partition)
            if store is None:
                continue
            offset = self._delivered.get(partition)
            local = batch.local.get(partition)
            store.write(changes + local if local else changes, None if offset is None else offset + 1)

    def _lag(self) -> int:
        lag = 0
        for (topic, partition), offset in self._position.items():
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
