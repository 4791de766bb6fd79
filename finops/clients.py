"""Every Kafka and ClickHouse client is built here, from :class:`Settings` (docs/architecture.md).

Kafka: :func:`producer`, :func:`transactional_producer`, :func:`consumer`, :func:`admin`.
ClickHouse: :func:`clickhouse` (``projections.clickhouse.connect`` adds the database and its
migrations). Consumer group names come from :meth:`Settings.group`. The one loop that reads
partitions to their end is :func:`consume_to_end`.

librdkafka logs connection failures to stderr by itself; we route its log lines to the
``finops.kafka`` logger (quiet unless asked) and report failures as one clear line.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from .settings import Settings

kafka_log = logging.getLogger("finops.kafka")

# Java's default partitioner, so that apps in any language put a tenant on the same partition.
PARTITIONER = "murmur2_random"


def _base(settings: Settings, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap, "logger": kafka_log}
    conf.update(extra)
    return conf


def producer(settings: Settings, **extra: Any) -> Producer:
    """An idempotent producer: retries never duplicate or reorder a partition's messages."""
    return Producer(_base(settings, **{
        "enable.idempotence": True,
        "partitioner": PARTITIONER,
        "linger.ms": 20,
        "compression.type": "lz4",
        **extra,
    }))


def transactional_producer(settings: Settings, transactional_id: str, **extra: Any) -> Producer:
    """An idempotent producer with ``transactional_id`` (a transaction times out after 60 s); the
    caller runs ``init_transactions``."""
    return producer(settings, **{"transactional.id": transactional_id, "transaction.timeout.ms": 60_000, **extra})


def consumer(settings: Settings, group_id: str, **extra: Any) -> Consumer:
    """A read_committed consumer that commits only what the caller says (no auto commit)."""
    return Consumer(_base(settings, **{
        "group.id": group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",  # usage p and commands p go to one instance
        "session.timeout.ms": 10_000,  # a dead or frozen instance loses its partitions within 10 s
        "fetch.wait.max.ms": 50,
        "max.partition.fetch.bytes": 8_388_608,  # batches of thousands of events per partition
        "fetch.max.bytes": 67_108_864,
        **extra,
    }))


def admin(settings: Settings) -> AdminClient:
    """An admin client on ``settings.bootstrap`` (topics, offsets, consumer groups)."""
    return AdminClient(_base(settings))


def clickhouse(settings: Settings):
    """A clickhouse-connect client on ``settings.clickhouse_dsn`` (``chdb:///path``: embedded;
    ``http(s)://``: a server), no database chosen. Raises what the driver raises; callers use
    :func:`finops.projections.clickhouse.connect`, which reports one line and migrates."""
    import clickhouse_connect

    return clickhouse_connect.get_client(dsn=settings.clickhouse_dsn)


def check_reachable(settings: Settings, timeout: float = 10.0) -> None:
    """Raise :class:`FinopsError` (one line) when no broker answers at ``settings.bootstrap``
    within ``timeout`` seconds (wall time): before a long start-up, instead of a traceback."""
    from .errors import FinopsError

    try:
        admin(settings).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise FinopsError(f"cannot reach Kafka at {settings.bootstrap} within {timeout:g} s "
                          f"({exc.args[0].str() if exc.args else exc})") from None


def consume_to_end(consumer: Consumer, pending: set[tuple[str, int]], *, deadline: float,
                   max_messages: int = 10_000, wait_s: float = 0.5, strict: bool = True) -> Iterator[Message]:
    """The messages of the partitions in ``pending`` (``(topic, partition)``, already assigned to
    ``consumer``, which has ``enable.partition.eof``), up to each one's end.

    A partition leaves ``pending`` when the consumer reports its end; the caller may take one
    out to stop reading it (its later messages are skipped). At ``deadline`` (``time.monotonic``
    seconds) this returns with the partitions not read to their end still in ``pending``: what
    that means is the caller's to say. ``strict``: a consume error other than a partition's end
    raises :class:`KafkaException`; otherwise it is skipped.
    """
    while pending and time.monotonic() < deadline:
        for m in consumer.consume(max_messages, wait_s):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((m.topic(), m.partition()))
                elif strict:
                    raise KafkaException(err)
                continue
            if (m.topic(), m.partition()) in pending:
                yield m


def read_to_end(settings: Settings, topic: str, partitions: Iterable[int], *,
                timeout: float = 120.0, start: dict[int, int] | None = None) -> Iterator[Message]:
    """Every committed message of these partitions, from the beginning (or from ``start``,
    ``{partition: offset}``, where given) to the current end. Raises :class:`TimeoutError`
    when that takes over ``timeout`` seconds, :class:`KafkaException` on a consume error.

    First the partitions are settled (:func:`settle`): whatever a transaction had written
    when this is called is read once it is committed (or skipped once aborted), so a
    reader sees what a processor that already committed wrote.
    """
    pending = {(topic, p) for p in partitions}
    start = start or {}
    if not pending:
        return
    settle(settings, pending, timeout=min(timeout, 60.0))
    reader = consumer(settings, settings.group("reader", unique=True), **{"enable.partition.eof": True})
    try:
        reader.assign([TopicPartition(topic, p, start[p] if start.get(p, 0) > 0 else OFFSET_BEGINNING)
                       for _topic, p in pending])
        yield from consume_to_end(reader, pending, deadline=time.monotonic() + timeout)
        if pending:
            raise TimeoutError(f"reading {topic} partitions {sorted(p for _t, p in pending)} took over {timeout:g} s")
    finally:
        reader.close()


_COORDINATOR_BUSY = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                     KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT, KafkaError._TRANSPORT)


def committed_offsets(consumer: Consumer, partitions: list[TopicPartition],
                      timeout: float = 60.0) -> list[TopicPartition]:
    """``Consumer.committed``, retried while the group coordinator is moving or loading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.committed(partitions, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            error = exc.args[0]
            if not error.retriable() and error.code() not in _COORDINATOR_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def partitions(settings: Settings, topic_names: Iterable[str]) -> list[tuple[str, int]]:
    """Every (topic, partition) of these topics, from the cluster's metadata."""
    from .errors import FinopsError

    meta = admin(settings).list_topics(timeout=10)
    found = []
    for topic in topic_names:
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise FinopsError(f"topic {topic} is missing at {settings.bootstrap} (run `finops stack up`)")
        found.extend((topic, p) for p in sorted(meta.topics[topic].partitions))
    return found


def end_offsets(settings: Settings, topic_names: Iterable[str]) -> dict[tuple[str, int], int]:
    """The end offset (high watermark) of every partition of these topics now."""
    keys = partitions(settings, topic_names)
    probe = consumer(settings, settings.group("probe"))
    try:
        return {(t, p): probe.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1] for t, p in keys}
    finally:
        probe.close()


def produce(producer: Producer, topic: str, value: bytes, key: bytes | None, on_delivery=None) -> None:
    """``producer.produce``, waiting while its local queue is full (deliveries drain it)."""
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def settle(settings: Settings, partitions: Iterable[tuple[str, int]], *, timeout: float = 60.0) -> None:
    """Wait until what was written to these partitions when called is readable (read_committed).

    A transaction's commit is acknowledged before its markers reach every partition, so
    right after a processor committed (its consumer offsets are visible), a read_committed
    reader may still stop short of its outputs. This waits until each partition's last
    stable offset reaches the log end measured at the call."""
    from confluent_kafka import IsolationLevel
    from confluent_kafka.admin import OffsetSpec

    from .errors import FinopsError

    client = admin(settings)
    wanted = [TopicPartition(t, p) for t, p in sorted(set(partitions))]
    if not wanted:
        return

    def ends(level) -> dict[tuple[str, int], int]:
        futures = client.list_offsets({tp: OffsetSpec.latest() for tp in wanted}, isolation_level=level,
                                      request_timeout=10)
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}

    target = ends(IsolationLevel.READ_UNCOMMITTED)
    deadline = time.monotonic() + timeout
    while True:
        stable = ends(IsolationLevel.READ_COMMITTED)
        behind = sorted(k for k, end in target.items() if stable[k] < end)
        if not behind:
            return
        if time.monotonic() > deadline:
            raise FinopsError(f"transactions on {', '.join(f'{t}[{p}]' for t, p in behind[:5])} were still open "
                              f"after {timeout:g} s")
        time.sleep(0.02)


def input_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """The end offset of every partition of both input topics now (they are not transactional)."""
    from .schemas import topics

    return end_offsets(settings, topics.INPUTS)
