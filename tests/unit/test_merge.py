"""The deterministic merge of the usage and commands topics (processors/merge.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from finops.processors.merge import Item, PartitionBuffer
from finops.schemas import topics

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
U, C = topics.USAGE, topics.COMMANDS


def item(topic: str, offset: int, seconds: float | None, partition: int = 0) -> Item:
    ts = None if seconds is None else T0 + timedelta(seconds=seconds)
    return Item(topic, partition, offset, ts, None, b"")


def never(_topic, _p, _idle_for) -> bool:
    return False


def always(_topic, _p, _idle_for) -> bool:
    return True


def idle_half_a_second(_topic, _p, idle_for) -> bool:
    return idle_for >= 0.5


class TestMerger:
    def test_both_buffered_goes_by_event_time_commands_first_on_ties(self):
        m = PartitionBuffer()
        m.assign({0}, now=0)
        for i in (item(U, 0, 1), item(U, 1, 3), item(C, 0, 2), item(C, 1, 3)):
            m.add(i, now=0)
        taken = m.take(always, now=0, limit=10)
        assert [(i.topic, i.offset) for i in taken] == [(U, 0), (C, 0), (C, 1), (U, 1)]

    def test_waits_for_the_other_topic_unless_it_is_quiet(self):
        m = PartitionBuffer()
        m.assign({0}, now=0)
        m.add(item(U, 0, 1), now=0)
        assert m.take(never, now=0.1, limit=10) == []  # commands may still hold something earlier
        assert [i.offset for i in m.take(always, now=0.1, limit=10)] == [0]
        m.add(item(U, 1, 2), now=0.2)
        assert m.take(idle_half_a_second, now=0.4, limit=10) == []
        assert [i.offset for i in m.take(idle_half_a_second, now=0.8, limit=10)] == [1]  # commands idle since 0

    def test_unreadable_messages_go_at_once(self):
        m = PartitionBuffer()
        m.assign({0}, now=0)
        m.add(item(U, 0, None), now=0)
        assert [i.offset for i in m.take(never, now=0, limit=10)] == [0]

    def test_revoke_drops_buffers_and_limit_is_kept(self):
        m = PartitionBuffer()
        m.assign({0, 1}, now=0)
        for n in range(5):
            m.add(item(U, n, n, partition=1), now=0)
        assert len(m.take(always, now=0, limit=3)) == 3
        m.revoke({1})
        assert m.buffered() == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=30), st.lists(st.integers(0, 50), max_size=30), st.data())
def test_order_does_not_depend_on_how_fetches_fall(usage_ts, command_ts, data):
    """With both topics fully in Kafka, any split into fetches gives the same order."""
    usage = [item(U, n, t) for n, t in enumerate(sorted(usage_ts))]
    commands = [item(C, n, t) for n, t in enumerate(sorted(command_ts))]

    def run(chunks: int) -> list[tuple[str, int]]:
        m = PartitionBuffer()
        m.assign({0}, now=0)
        position = {U: 0, C: 0}
        order = []
        for _ in range(chunks):
            for topic, source in ((U, usage), (C, commands)):
                n = data.draw(st.integers(0, 5))
                for i in source[position[topic]:position[topic] + n]:
                    m.add(i, now=0)
                position[topic] = min(len(source), position[topic] + n)
            done = {U: position[U] == len(usage), C: position[C] == len(commands)}
            order += [(i.topic, i.offset) for i in m.take(lambda t, _p, _i: done[t], now=0, limit=7)]
        for topic, source in ((U, usage), (C, commands)):
            for i in source[position[topic]:]:
                m.add(i, now=0)
        while m.buffered():
            order += [(i.topic, i.offset) for i in m.take(always, now=0, limit=7)]
        return order

    expected = [(i.topic, i.offset) for i in sorted(usage + commands, key=Item.order)]
    assert run(data.draw(st.integers(0, 8))) == expected
