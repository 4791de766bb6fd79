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


class Publisher:
    """An idempotent producer that routes raw lines (usage or command topic, keyed by
    tenant), waits when its queue is full and counts deliveries into a :class:`PublishReport`."""

    def __init__(self, settings: Settings) -> None:
        check_reachable(settings)
        self.settings = settings
        self.report = PublishReport()
        self._producer = clients.producer(settings, **{"message.timeout.ms": 30_000,
                                                       "queue.buffering.max.messages": 500_000})

    def _delivered(self, err, msg) -> None:
        if err is None:
            self.report.sent += 1
            self.report.by_topic[msg.topic()] = self.report.by_topic.get(msg.topic(), 0) + 1
        else:
            self.report.fail(f"delivery to {msg.topic()}: {err.str()}")

    def send(self, line: bytes) -> None:
        topic, key = route(line)
        clients.produce(self._producer, topic, line, key, self._delivered)

    def send_all(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            self.send(line)

    def close(self, timeout: float = 40.0) -> PublishReport:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise PublishError(f"{remaining} messages were not delivered to {self.settings.bootstrap} in time")
        return self.report


def publish_lines(settings: Settings, lines: Iterable[bytes], *, validate: bool = True,
                  progress: Callable[[int], None] | None = None) -> PublishReport:
    """Send every line; returns what went and what failed (with reasons). ``progress(n)``
    is called with the number of lines read so far, every 10,000 lines."""
    publisher = Publisher(settings)
    report = publisher.report
    for number, line in enumerate(lines, start=1):
        if progress and number % 10_000 == 0:
            progress(number)
        line = line.strip()
        if not line:
            continue
        if validate:
            message = wire.decode(line)
            if isinstance(message, wire.Rejection):
                report.fail(f"line {number}: {message.reason}: {message.detail}")
                continue
        publisher.send(line)
    return publisher.close()
