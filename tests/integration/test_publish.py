"""Publishing a file of commands and usage: a tenant's commands are in Kafka before the usage
lines that follow them (wire v1, "Publishing files"), although the two go to different topics.

On the real broker the publisher's producer is wrapped so that every produce call and every
delivery report is written down in the order they happened; the records are then read back
from Kafka. A fake producer covers what the broker will not do on demand: fail a command.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from finops import clients
from finops.producers import publish
from finops.producers.publish import Publisher, publish_lines, route
from finops.producers.simulate import Simulation, run
from finops.schemas import topics
from finops.schemas.wire import format_time
from finops.settings import Settings

START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _ts(seconds: float) -> str:
    return format_time(START + timedelta(seconds=seconds))


class File:
    """Wire-v1 lines in file order, each with a unique id."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def _add(self, message: dict) -> None:
        n = len(self.lines)
        self.lines.append(msgspec.json.encode({"id": f"m{n}-{uuid.uuid4().hex[:8]}", "ts": _ts(n), **message}))

    def commands(self, tenant: str) -> File:
        """Buy credits, open an account and bind a key to it."""
        self._add({"type": "purchase", "tenant_id": tenant, "credits": 100})
        self._add({"type": "open_account", "tenant_id": tenant, "account_id": "team-a", "kind": "team",
                   "parent_id": tenant})
        self._add({"type": "bind_key", "tenant_id": tenant, "api_key_id": "k1", "account_id": "team-a"})
        return self

    def allocate(self, tenant: str) -> File:
        self._add({"type": "allocate", "tenant_id": tenant, "from_account": tenant, "to_account": "team-a",
                   "credits": 1})
        return self

    def usage(self, *tenants: str, each: int) -> File:
        """``each`` usage lines per tenant, the tenants interleaved."""
        for _ in range(each):
            for tenant in tenants:
                self._add({"type": "usage", "tenant_id": tenant, "api_key_id": "k1", "model_name": "gpt-4o",
                           "operation_type": "chat", "units_consumed": 10, "credits_consumed": "0.001"})
        return self


@dataclass
class Delivery:
    error: str | None
    topic: str
    partition: int
    offset: int
    at_ms: int  # wall clock when the report was served, in ms (rounded down, as Kafka timestamps are)


class Recorder:
    """Wraps the publisher's producer: every produce call and delivery report, in the order they happened."""

    def __init__(self, producer) -> None:
        self._producer = producer
        self.events: list[tuple[str, bytes]] = []  # ("produce" | "delivered", value)
        self.deliveries: dict[bytes, Delivery] = {}

    def produce(self, topic, value=None, key=None, on_delivery=None, **kw):
        def delivered(err, msg):
            self.events.append(("delivered", value))
            self.deliveries[value] = Delivery(None if err is None else err.str(), msg.topic(), msg.partition(),
                                              msg.offset(), int(time.time() * 1000))
            if on_delivery is not None:
                on_delivery(err, msg)

        self.events.append(("produce", value))  # before the call: an earlier mark is the stricter check
        self._producer.produce(topic, value, key, on_delivery=delivered, **kw)

    def __getattr__(self, name):
        return getattr(self._producer, name)


@pytest.fixture
def recorder(monkeypatch) -> list[Recorder]:
    """Each producer the publisher builds, wrapped in a :class:`Recorder`."""
    made: list[Recorder] = []
    real = clients.producer

    def wrapped(*args, **kw):
        made.append(Recorder(real(*args, **kw)))
        return made[-1]

    monkeypatch.setattr(publish.clients, "producer", wrapped)
    return made


def check_commands_first(settings, lines: list[bytes], recorded: Recorder) -> int:
    """Every usage line of a tenant was produced after Kafka acknowledged each command of that
    tenant before it in ``lines``, as the producer saw it and as the records in Kafka show.
    Returns how many usage lines followed commands of their tenant (the cases checked)."""
    assert len(set(lines)) == len(lines)
    index: dict[bytes, int] = {}  # value -> where its delivery report is in the events
    produced: dict[bytes, int] = {}  # value -> where it was (first) produced
    for i, (kind, value) in enumerate(recorded.events):
        (index if kind == "delivered" else produced).setdefault(value, i)
    last_command: dict[bytes, bytes] = {}  # tenant -> the command of it acknowledged last, of those so far
    checked = []
    for line in lines:
        topic, key = route(line)
        if key is None:
            continue
        if topic == topics.COMMANDS:
            assert recorded.deliveries[line].error is None, recorded.deliveries[line]
            if key not in last_command or index[line] > index[last_command[key]]:
                last_command[key] = line
        elif key in last_command:
            command = last_command[key]
            assert index[command] < produced[line], \
                f"usage produced before its tenant's command was acknowledged: {line[:90]!r}, {command[:90]!r}"
            checked.append((line, command))
    # The records in Kafka: each line once, where its delivery report said, and a usage record's
    # timestamp (when it was produced, or appended) no earlier than its tenant's command was acknowledged.
    records = {}
    for topic in (topics.COMMANDS, topics.USAGE):
        partitions = {d.partition for d in recorded.deliveries.values() if d.topic == topic}
        for m in clients.read_to_end(settings, topic, partitions, timeout=60):
            if m.value() in recorded.deliveries:
                assert m.value() not in records, "a line is in Kafka twice"
                records[m.value()] = m
    for line in lines:
        d, m = recorded.deliveries[line], records[line]
        assert (m.topic(), m.partition(), m.offset()) == (d.topic, d.partition, d.offset)
    for usage, command in checked:
        kind, stamp = records[usage].timestamp()
        assert kind != TIMESTAMP_NOT_AVAILABLE
        assert stamp >= recorded.deliveries[command].at_ms >= records[command].timestamp()[1]
    return len(checked)


@pytest.mark.integration
class TestCommandsReachKafkaFirst:
    def test_a_file_waits_once_per_switch_from_commands_to_usage(self, settings, recorder):
        a, b = (f"pub-{uuid.uuid4().hex[:8]}" for _ in range(2))
        lines = (File().commands(a).commands(b).usage(a, b, each=300)  # both tenants switch here
                 .allocate(a).usage(a, b, each=100)  # a switches again, b does not
                 .lines)
        report = publish_lines(settings, lines)
        assert (report.sent, report.failed, report.errors) == (len(lines), 0, [])
        assert 1 <= report.command_waits <= 3  # not once per usage line
        assert check_commands_first(settings, lines, recorder[0]) == 800

    def test_simulate_sends_the_setup_before_the_traffic(self, settings, recorder):
        simulation = Simulation(tenants=2, accounts_per_tenant=4, rate=1000, duration=1, speed=3600, seed=5,
                                start=START, tenant_names=[f"sim-{uuid.uuid4().hex[:8]}" for _ in range(2)])
        publisher = Publisher(settings)
        lines: list[bytes] = []

        def send(batch: list[bytes]) -> None:
            lines.extend(batch)
            publisher.send_all(batch)

        assert run(simulation, send, paced=False).messages == len(lines)
        report = publisher.close()
        assert (report.failed, report.sent) == (0, len(lines))
        assert report.command_waits <= 2  # one per tenant at most
        assert check_commands_first(settings, lines, recorder[0]) > 300


# ----------------------------------------------------------------------------- a command that fails


class FakeError:
    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text


@dataclass
class FakeMessage:
    _topic: str
    _value: bytes
    _key: bytes | None

    def topic(self):
        return self._topic

    def value(self):
        return self._value

    def key(self):
        return self._key


class FakeProducer:
    """Delivers only when flushed (as a broker that answers after linger would), failing the
    commands whose value holds ``fail``."""

    def __init__(self, fail: bytes) -> None:
        self.fail = fail
        self.queued: list[tuple[FakeMessage, object]] = []
        self.produced: list[bytes] = []
        self.flushes = 0

    def produce(self, topic, value, key=None, on_delivery=None):
        self.queued.append((FakeMessage(topic, value, key), on_delivery))
        self.produced.append(value)

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        self.flushes += 1
        queued, self.queued = self.queued, []
        for msg, on_delivery in queued:
            failed = msg.topic() == topics.COMMANDS and self.fail in msg.value()
            on_delivery(FakeError("Local: Message timed out") if failed else None, msg)
        return 0


@pytest.fixture
def fake(monkeypatch) -> FakeProducer:
    producer = FakeProducer(fail=b'"type":"purchase","tenant_id":"a"')
    monkeypatch.setattr(publish, "check_reachable", lambda settings: None)
    monkeypatch.setattr(publish.clients, "producer", lambda *args, **kw: producer)
    return producer


class TestAFailedCommand:
    def test_holds_back_its_tenants_later_usage_and_reports_it(self, fake):
        lines = File().commands("a").commands("b").usage("a", "b", each=2).lines  # a's purchase is line 1
        report = publish_lines(Settings(), lines)
        assert fake.produced == lines[:6] + lines[7::2]  # a's usage (lines 7 and 9) was held back
        assert (report.sent, report.failed) == (2 + 3 + 2, 1 + 2)
        assert report.errors == [f"line 1: delivery to {topics.COMMANDS}: Local: Message timed out",
                                 "line 7: not sent: the command of tenant a on line 1 before it was not delivered",
                                 "line 9: not sent: the command of tenant a on line 1 before it was not delivered"]

    def test_waits_only_when_a_tenant_switches_between_commands_and_usage(self, fake):
        fake.fail = b"no such command"
        lines = File().commands("a").usage("a", each=50).commands("b").usage("a", "b", each=50).allocate("a") \
            .usage("a", each=50).lines
        report = publish_lines(Settings(), lines)
        assert (report.sent, report.failed) == (len(lines), 0)
        # a: commands -> usage; b: commands -> usage; a: usage -> allocate -> usage; then close
        assert report.command_waits == 4 and fake.flushes == 4 + 1
