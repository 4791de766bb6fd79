"""Publish wire-v1 messages (JSONL) to Kafka: usage to the usage topic, commands to the
commands topic, keyed by tenant so one tenant's traffic stays ordered on one partition.

Lines are checked before they are sent (bad events fail here, not downstream) unless
``validate=False``, which sends every line as-is (to exercise the pipeline's own
rejection path: an unreadable line then goes to the usage topic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import msgspec
from confluent_kafka import KafkaException

from ..errors import FinopsError
from .. import clients
from ..schemas import topics, wire
from ..settings import Settings


class PublishError(FinopsError):
    """Kafka could not be reached or did not take the messages; one line for people."""


@dataclass
class PublishReport:
    sent: int = 0
    failed: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # "line N: reason", the first 20

    def fail(self, text: str) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(text)


class _Route(msgspec.Struct):
    type: str | None = None
    tenant_id: str | None = None


_route_decoder = msgspec.json.Decoder(_Route)


def route(line: bytes) -> tuple[str, bytes | None]:
    """(topic, key) for a raw line; unreadable lines go to the usage topic without key."""
    try:
        r = _route_decoder.decode(line)
    except msgspec.MsgspecError:
        return topics.USAGE, None
    topic = topics.COMMANDS if r.type in wire.COMMAND_TYPES else topics.USAGE
    return topic, r.tenant_id.encode() if r.tenant_id else None


def check_reachable(settings: Settings, timeout: float = 10.0) -> None:
    try:
        clients.admin(settings).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise PublishError(f"cannot reach Kafka at {settings.bootstrap} within {timeout:g} s "
                           f"({exc.args[0].str() if exc.args else exc})") from None


def publish_lines(settings: Settings, lines: Iterable[bytes], *, validate: bool = True,
                  progress: Callable[[int], None] | None = None) -> PublishReport:
    """Send every line; returns what went and what failed (with reasons)."""
    check_reachable(settings)
    report = PublishReport()
    producer = clients.producer(settings, **{"message.timeout.ms": 30_000,
                                             "queue.buffering.max.messages": 500_000})

    def delivered(err, msg) -> None:
        if err is None:
            report.sent += 1
            report.by_topic[msg.topic()] = report.by_topic.get(msg.topic(), 0) + 1
        else:
            report.fail(f"delivery to {msg.topic()}: {err.str()}")

    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if validate:
            message = wire.decode(line)
            if isinstance(message, wire.Rejection):
                report.fail(f"line {number}: {message.reason}: {message.detail}")
                continue
        topic, key = route(line)
        while True:
            try:
                producer.produce(topic, line, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if progress and number % 10_000 == 0:
            progress(number)
    remaining = producer.flush(40)
    if remaining:
        raise PublishError(f"{remaining} messages were not delivered to {settings.bootstrap} in time")
    return report
