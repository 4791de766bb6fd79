"""Publish wire-v1 messages (JSONL) to Kafka: usage to the usage topic, commands to the
commands topic, keyed by tenant so one tenant's traffic stays ordered on one partition.

Lines are checked before they are sent (bad events fail here, not downstream) unless
``validate=False``, which sends every line as-is (to exercise the pipeline's own
rejection path: an unreadable line then goes to the usage topic).

A tenant's commands are in Kafka before the usage lines that follow them (wire v1,
"Publishing files"), and its usage before the commands that follow it: the ledger applies
the two topics in the order Kafka stored them, so the file's order is the ledger's. Commands and usage go to two topics, so Kafka alone does not keep
that order: before a usage line of a tenant with commands not yet acknowledged, the
publisher waits for their delivery reports. That is one wait per switch from a tenant's
commands to its usage (a file of commands, then usage, waits once), not one per line. A
usage line that follows a command of its tenant that was not delivered is not sent: it
is reported failed, as the command is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable

import msgspec

from ..errors import FinopsError
from .. import clients
from ..clients import check_reachable
from ..schemas import topics, wire
from ..settings import Settings


class PublishError(FinopsError):
    """Kafka could not be reached or did not take the messages; one line for people."""


@dataclass
class PublishReport:
    """What a publish did: lines acknowledged by Kafka (per topic), lines that failed with the first 20
    reasons (``"line N: reason"``), and how often usage waited for its tenant's commands."""

    sent: int = 0
    failed: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # "line N: reason", the first 20
    command_waits: int = 0  # times usage waited for its tenant's commands to be acknowledged

    def fail(self, text: str) -> None:
        """Count one failed line; keep its reason among the first 20."""
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
    except (msgspec.MsgspecError, RecursionError):  # nested too deeply to read: the ledger refuses it
        return topics.USAGE, None
    topic = topics.COMMANDS if r.type in wire.COMMAND_TYPES else topics.USAGE
    return topic, r.tenant_id.encode() if r.tenant_id else None


class Publisher:
    """An idempotent producer that routes raw lines (usage or command topic, keyed by
    tenant), waits when its queue is full and counts deliveries into a :class:`PublishReport`.

    It keeps each tenant's commands ahead of the usage sent after them: a usage line whose
    tenant has commands in flight waits until Kafka has acknowledged them (or failed them;
    ``command_wait`` seconds at most, then :class:`PublishError`). Once a command of a
    tenant failed, that tenant's later usage is held back: :meth:`send` reports each such
    line failed and returns False.
    """

    def __init__(self, settings: Settings, *, command_wait: float = 40.0) -> None:
        check_reachable(settings)
        self.settings = settings
        self.report = PublishReport()
        self.command_wait = command_wait  # above message.timeout.ms: a delivery report comes first
        self._producer = clients.producer(settings, **{"message.timeout.ms": 30_000,
                                                       "queue.buffering.max.messages": 500_000})
        self._in_flight: dict[bytes | None, int] = {}  # commands queued, not yet reported, per tenant key
        self._lost: dict[bytes, str] = {}  # tenant key -> where its first failed command was ("line N")
        self._given = 0  # lines given to send, to name a line without a number
        self._usage_sent: set[bytes | None] = set()  # tenants with usage queued since their last command

    def _delivered(self, err, msg) -> None:
        if err is None:
            self.report.sent += 1
            self.report.by_topic[msg.topic()] = self.report.by_topic.get(msg.topic(), 0) + 1
        else:
            self.report.fail(f"delivery to {msg.topic()}: {err.str()}")

    def _command_delivered(self, where: str, err, msg) -> None:
        key = msg.key()
        self._one_less_in_flight(key)
        if err is None:
            self._delivered(err, msg)
        else:
            self.report.fail(f"{where}: delivery to {msg.topic()}: {err.str()}")
            if key is not None:
                self._lost.setdefault(key, where)

    def _one_less_in_flight(self, key: bytes | None) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def send(self, line: bytes, number: int | None = None) -> bool:
        """Route and queue one line (``number``: its line number, for the report). False when
        it is usage that was not sent because a command of its tenant before it failed."""
        self._given += 1
        topic, key = route(line)
        if topic == topics.COMMANDS:
            if key in self._usage_sent:  # usage of this tenant before it: in Kafka first
                self._usage_sent.clear()
                self._await_all()
            where = f"line {number}" if number is not None else f"message {self._given}"
            self._in_flight[key] = self._in_flight.get(key, 0) + 1  # before: produce may serve the report
            try:
                clients.produce(self._producer, topic, line, key, partial(self._command_delivered, where))
            except BaseException:  # not queued: no delivery report will come
                self._one_less_in_flight(key)
                raise
            return True
        if key is not None and key in self._in_flight:
            self._await_commands(key)
        if key is not None and key in self._lost:
            where = f"line {number}" if number is not None else f"message {self._given}"
            self.report.fail(f"{where}: not sent: the command of tenant {key.decode(errors='replace')} on "
                             f"{self._lost[key]} before it was not delivered")
            return False
        clients.produce(self._producer, topic, line, key, self._delivered)
        self._usage_sent.add(key)
        return True

    def _await_all(self) -> None:
        """Wait until everything queued is acknowledged (usage before a command that follows it)."""
        self.report.command_waits += 1
        if self._producer.flush(self.command_wait):
            raise PublishError(f"Kafka at {self.settings.bootstrap} did not acknowledge the usage before a "
                               f"command within {self.command_wait:g} s")

    def _await_commands(self, key: bytes) -> None:
        """Serve delivery reports until none of this tenant's commands is in flight."""
        self.report.command_waits += 1
        deadline = time.monotonic() + self.command_wait
        while key in self._in_flight:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishError(f"Kafka at {self.settings.bootstrap} did not acknowledge "
                                   f"{self._in_flight[key]} command(s) of tenant {key.decode(errors='replace')} "
                                   f"within {self.command_wait:g} s")
            self._producer.flush(min(left, 0.1))  # sends at once (no linger) and serves delivery reports

    def send_all(self, lines: Iterable[bytes]) -> None:
        """:meth:`send` each line, in order (no line numbers in the report)."""
        for line in lines:
            self.send(line)

    def close(self, timeout: float = 40.0) -> PublishReport:
        """Wait up to ``timeout`` seconds for every queued line's delivery report; the report. Raises
        :class:`PublishError` when some were still undelivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise PublishError(f"{remaining} messages were not delivered to {self.settings.bootstrap} in time")
        return self.report


def publish_lines(settings: Settings, lines: Iterable[bytes], *, validate: bool = True,
                  progress: Callable[[int], None] | None = None) -> PublishReport:
    """Send every line; returns what went and what failed (with reasons). ``progress(n)``
    is called with the number of lines read so far, every 10,000 lines.

    A tenant's commands are acknowledged by Kafka before the usage lines after them are
    sent; usage after a command of its tenant that failed is reported failed, not sent
    (see :class:`Publisher`)."""
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
        publisher.send(line, number)
    return publisher.close()
