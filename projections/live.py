"""The live view: a read replica of the ledger's state in the memory of ``finops serve``.

The ledger writes every state key a transaction changed to its changelog topic
``<group>-state-changelog`` in the same Kafka transaction as its outputs (processors/store.py).
Read with ``read_committed``, the changelog is the ledger's state, a transaction at a time:
the design of Kafka Streams' standby replicas and interactive queries. The view keeps, per
tenant, the accounts with their grants (spend windows, pools, fallback, caps, period budget
and use), the key bindings, the rate card, holds, recurring allocations and the ledger
clock, as the ledger's own :class:`~finops.processors.state.TenantState` objects, so an
entitlement check runs the ledger's own cascade (``processors.ledger.entitlement``) on them.
It also keeps the latest record of every account on the compacted ``finops.enforcement.v1``
(what gateways must refuse, with the keys concerned).

``finops.balances.v1`` holds a subset of the same account state (no grants, no pools), so the
view reads the changelog instead; both come from the same transactions.

Freshness: the view is *fresh at* a wall time when every partition had reached its end as of
that time; ``lag_s()`` is the wall time since then (about 0.05 s when nothing is happening, the
poll interval). A long catch-up (a start from the beginning of the changelog) shows as lag.
Records of one transaction can arrive in two polls: for a few milliseconds a reader may see a
parent's change before a child's. Records this version cannot decode are counted in
``refused`` and skipped; nothing stops the view.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import msgspec
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from .. import clients
from ..processors.state import TenantState
from ..processors.changelog import ACCOUNT, HEADER, HOLD, KEY, RATES, RECURRING, replica_change
from ..schemas import outputs, topics
from ..schemas.wire import dec_hook
from ..service import Service
from ..settings import Settings

log = logging.getLogger("finops.live")

T = TypeVar("T")

_enforcement = msgspec.json.Decoder(outputs.Enforcement, dec_hook=dec_hook)
_BATCH = 20_000
_POLL_S = 0.05  # how often an idle view notes that it is still fresh
_FETCH_WAIT_S = 0.01  # fetch.wait.max.ms: how long the broker may hold a fetch that found nothing
_FIND_TOPICS_EVERY_S = 1.0


@dataclass
class ViewStats:
    """Counters of the live view (``/metrics``)."""

    records: int = 0  # changelog and enforcement records read
    applied: int = 0  # of which changed the view (the rest are kinds a replica skips)
    refused: int = 0  # records that could not be decoded (skipped)
    batches: int = 0


# The keyed parts of a tenant's state a changelog record replaces one entry of: kind -> TenantState attribute.
_KEYED = {ACCOUNT: "accounts", KEY: "keys", HOLD: "holds", RECURRING: "recurring"}


def _put(table: dict, key, value) -> None:
    """A changelog record's effect on one entry: its new value, or gone for a tombstone (None)."""
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


class LedgerProgress:
    """How far the ledger is behind its input: asked of Kafka every ``every_s`` (wall time) in a thread.

    ``pending``: input records (usage and commands) the ledger's consumer group has not
    committed yet; ``stalled_s()``: wall seconds since its committed offsets last moved while
    something was pending (0 when nothing is). The view can be fresh while the ledger is
    stopped: a gateway that must fail closed reads these. Errors reaching Kafka leave the last
    figures and set ``error``.
    """

    def __init__(self, settings: Settings, group: str, every_s: float = 1.0) -> None:
        self.settings = settings
        self.group = group
        self.every_s = every_s
        self.pending: int | None = None
        self.error: str | None = None
        self._moved_at = time.time()  # wall time the committed offsets last moved (or nothing was pending)
        self._committed: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finops-ledger-progress", daemon=True)

    def start(self) -> None:
        """Start asking Kafka, every ``every_s`` wall seconds, in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end before its next look (it does not wait for it)."""
        self._stop.set()

    def stalled_s(self) -> float:
        """Wall seconds since the ledger's committed input offsets last moved while input was
        pending; 0.0 when nothing is pending (or before the first look)."""
        if not self.pending:
            return 0.0
        return max(0.0, time.time() - self._moved_at)

    def _run(self) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import OffsetSpec

        admin = clients.admin(self.settings)
        while not self._stop.wait(self.every_s):
            try:
                meta = admin.list_topics(timeout=5)
                partitions = [TopicPartition(t, p) for t in topics.INPUTS if t in meta.topics
                              for p in meta.topics[t].partitions]
                ends = {(tp.topic, tp.partition): f.result().offset for tp, f in admin.list_offsets(
                    {tp: OffsetSpec.latest() for tp in partitions}, request_timeout=5).items()}
                group = admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(self.group, partitions)], request_timeout=5)[self.group].result()
                committed = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in group.topic_partitions}
            except (KafkaException, KeyError, ValueError) as exc:
                self.error = str(exc)
                continue
            pending = sum(max(0, end - committed.get(key, 0)) for key, end in ends.items())
            if committed != self._committed or not pending:
                self._moved_at = time.time()
            self._committed = committed
            self.pending = pending
            self.error = None


class LiveView(Service):
    """The ledger's state, kept current from its changelog; read it with :meth:`read`.

    ``group`` is the ledger's consumer group (default ``<FINOPS_GROUP_PREFIX>-ledger``): its
    changelog is ``<group>-state-changelog``. Thread-safe: one thread runs :meth:`run`, any
    number call :meth:`read`, which holds the view's lock while ``fn`` runs (keep it short).
    """

    def __init__(self, settings: Settings, *, group: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        group = group or settings.group("ledger")
        self.changelog = topics.changelog_name(group)
        self.ledger = LedgerProgress(settings, group)
        self.consumer = clients.consumer(settings, settings.group("view", unique=True),
                                         **{"enable.partition.eof": True,
                                            "fetch.wait.max.ms": int(_FETCH_WAIT_S * 1000)})
        self.tenants: dict[str, TenantState] = {}
        self.enforcement: dict[tuple[str, str], outputs.Enforcement] = {}
        self.stats = ViewStats()
        self.lock = threading.Lock()
        self.ready = threading.Event()  # set once every partition was read to its end
        self._assigned: set[tuple[str, int]] = set()
        self._at_end: set[tuple[str, int]] = set()
        self._fresh_at: float | None = None  # wall time (epoch s) the view was last known complete
        self._looked_at = -1e9
        self._has_changelog = False

    # ------------------------------------------------------------------ reading

    def read(self, fn: Callable[[dict[str, TenantState], dict[tuple[str, str], outputs.Enforcement]], T]) -> T:
        """``fn(tenants, enforcement)`` under the view's lock: a consistent read of both."""
        with self.lock:
            return fn(self.tenants, self.enforcement)

    def lag_s(self) -> float | None:
        """Wall seconds since the view last held everything committed, or None before it ever did."""
        if self._fresh_at is None:
            return None
        return max(0.0, time.time() - self._fresh_at)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Read until :meth:`~finops.service.Service.stop`, watching the ledger's progress meanwhile;
        closes the consumer at the end."""
        self.ledger.start()
        try:
            super().run()
        finally:
            self.ledger.stop()

    def step(self) -> int:
        """Read one batch (up to 20,000 records, waiting at most 0.05 s for the first) and apply it under
        the lock; the number of records read. Raises :class:`KafkaException` for an error other than
        a partition's end or a topic not there yet."""
        if not self._has_changelog and time.monotonic() - self._looked_at > _FIND_TOPICS_EVERY_S:
            self._find_topics()  # until the ledger has made its changelog
        if not self._assigned:
            self._stop.wait(_FIND_TOPICS_EVERY_S)
            return 0
        started = time.time()
        first = self.consumer.poll(_POLL_S)
        if first is None:  # nothing came: all committed before now (less a fetch in flight) is here
            self._mark_fresh(time.time() - _FETCH_WAIT_S)
            return 0
        batch = [first, *self.consumer.consume(_BATCH, 0)]
        changes = []
        for m in batch:
            error = m.error()
            key = (m.topic(), m.partition())
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(key)
                    continue
                if error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
                    log.warning("live view: %s", error.str())
                    continue
                raise KafkaException(error)
            self._at_end.discard(key)
            self.stats.records += 1
            change = self._decode(m)
            if change is not None:
                changes.append(change)
        if changes:
            with self.lock:
                for change in changes:
                    self._apply(change)
            self.stats.applied += len(changes)
        self.stats.batches += 1
        self._mark_fresh(started)
        return len(batch)

    def _mark_fresh(self, started: float) -> None:
        if self._has_changelog and self._at_end >= self._assigned:
            self._fresh_at = started
            if not self.ready.is_set():
                log.info("live view loaded: %d tenants", len(self.tenants))
                self.ready.set()

    def _find_topics(self) -> None:
        """Assign every partition of the changelog and the enforcement topic there are, from the start."""
        self._looked_at = time.monotonic()
        try:
            meta = self.consumer.list_topics(timeout=5)
        except KafkaException as exc:
            log.warning("live view: cannot reach Kafka at %s: %s", self.settings.bootstrap, exc.args[0].str())
            return
        wanted = []
        for name in (self.changelog, topics.ENFORCEMENT):
            topic = meta.topics.get(name)
            if topic is None or topic.error is not None or not topic.partitions:
                continue
            wanted.extend((name, p) for p in topic.partitions)
        new = [k for k in wanted if k not in self._assigned]
        if new:
            self.consumer.incremental_assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in new])
            self._assigned.update(new)
            log.info("live view: reading %s", ", ".join(sorted({t for t, _p in self._assigned})))
        self._has_changelog = any(t == self.changelog for t, _p in self._assigned)

    def _decode(self, m) -> tuple | None:
        try:
            if m.topic() == topics.ENFORCEMENT:
                if m.value() is None:
                    tenant_id, _, account_id = (m.key() or b"").decode("utf-8", "replace").partition("/")
                    return ("enforcement", tenant_id, account_id, None)
                record = _enforcement.decode(m.value())
                return ("enforcement", record.tenant_id, record.account_id, record)
            return replica_change(m.key() or b"", m.value())
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError) as exc:
            self.stats.refused += 1
            log.warning("live view: skipped a record of %s [%d] at offset %d: %s", m.topic(), m.partition(),
                        m.offset(), exc)
            return None

    def _apply(self, change: tuple) -> None:
        kind, tenant_id, rest, value = change
        if kind == "enforcement":
            _put(self.enforcement, (tenant_id, rest), value)
            return
        state = self.tenants.get(tenant_id)
        if state is None:
            if value is None:
                return
            state = self.tenants[tenant_id] = TenantState(tenant_id)
            state.balance_outbox.clear()
        if kind == HEADER:
            if value is not None:
                state.clock, state.seq, state.totals, state.pruned_at = value  # type: ignore[misc]
        elif kind == RATES:
            state.rates = value or {}  # type: ignore[assignment]
        else:  # one entry of a keyed part of the state
            _put(getattr(state, _KEYED[kind]), rest, value)

    def close(self) -> None:
        """Close the consumer (errors on the way out are ignored)."""
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError):
            pass
