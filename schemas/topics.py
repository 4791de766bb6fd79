"""Kafka topic names of wire v1 (see design.md)."""

from __future__ import annotations

from typing import NamedTuple

USAGE = "finops.usage.v1"
COMMANDS = "finops.commands.v1"
LEDGER = "finops.ledger.v1"
BALANCES = "finops.balances.v1"
ENFORCEMENT = "finops.enforcement.v1"
ALERTS = "finops.alerts.v1"
REJECTED = "finops.rejected.v1"
# Usage spend per account and event-time hour, summed by the ledger processor (outputs.Spend).
SPEND = "finops.spend.v1"
# Alerts a webhook receiver refused ``max_attempts`` times, with the last error (see producers/webhooks.py).
ALERTS_DEADLETTER = "finops.alerts.deadletter.v1"
# Internal: the ledger's state-store changelog is "<ledger consumer group>-state-changelog"
# (changelog_name), compacted, one partition per input partition (processors/store.py).


class TopicSpec(NamedTuple):
    """One Kafka topic as ``finops stack up`` creates it; :func:`topic_config` turns it into topic configs."""

    name: str
    compacted: bool = False
    max_message_bytes: int | None = None  # above the broker's 1 MB default, where records can be big
    # Kept forever (retention.ms=-1): the inputs, the ledger, rejections and alerts are the
    # event-sourced record that a rebuild replays from offset 0. The others keep the
    # broker's default retention (7 days unless configured).
    forever: bool = False
    # The record timestamp is the broker's (message.timestamp.type=LogAppendTime): the input
    # topics, so that "ts_in_future" judges against a time that is part of the log.
    log_append_time: bool = False
    tombstones_ms: int | None = None  # delete.retention.ms of a compacted topic


# One changelog record holds one key of the ledger's state: an account with all its grants
# is the largest; 16 MB leaves room for accounts with tens of thousands of grants.
CHANGELOG_MAX_BYTES = 16 * 1024 * 1024
# How long compaction keeps a changelog tombstone: a local store that stopped longer ago than
# this may have missed one, so the ledger trusts a store's checkpoint for less (processors/store.py).
CHANGELOG_TOMBSTONES_MS = 7 * 86400 * 1000


ALL: tuple[TopicSpec, ...] = (
    TopicSpec(USAGE, forever=True, log_append_time=True),
    TopicSpec(COMMANDS, forever=True, log_append_time=True),
    TopicSpec(LEDGER, forever=True),
    TopicSpec(BALANCES, compacted=True),
    TopicSpec(ENFORCEMENT, compacted=True),
    TopicSpec(ALERTS, forever=True),
    TopicSpec(REJECTED, forever=True),
    TopicSpec(ALERTS_DEADLETTER, forever=True),
    TopicSpec(SPEND),
)


def changelog_name(ledger_group: str) -> str:
    """The state-store changelog topic of a ledger consumer group (it belongs to the group, as
    the committed offsets it matches do)."""
    return f"{ledger_group}-state-changelog"


def changelog_spec(name: str) -> TopicSpec:
    """The spec of a ledger state-store changelog: compacted, records up to ``CHANGELOG_MAX_BYTES``,
    tombstones kept ``CHANGELOG_TOMBSTONES_MS`` (processors/store.py)."""
    return TopicSpec(name, compacted=True, max_message_bytes=CHANGELOG_MAX_BYTES,
                     tombstones_ms=CHANGELOG_TOMBSTONES_MS)


def topic_config(spec: TopicSpec) -> dict[str, str]:
    """The topic-level configs ``finops stack up`` creates a topic with."""
    config = {"cleanup.policy": "compact"} if spec.compacted else {}
    if spec.max_message_bytes:
        config["max.message.bytes"] = str(spec.max_message_bytes)
    if spec.forever:
        config["retention.ms"] = "-1"
    if spec.log_append_time:
        config["message.timestamp.type"] = "LogAppendTime"
    if spec.tombstones_ms is not None:
        config["delete.retention.ms"] = str(spec.tombstones_ms)
    return config

INPUTS = (USAGE, COMMANDS)
# What the ledger processor writes in its transactions (spend aside: published on its own cadence).
LEDGER_OUTPUTS = (LEDGER, BALANCES, ENFORCEMENT, ALERTS, REJECTED)
# What the ClickHouse sink stores, one table per topic (projections/sink.py, TABLES).
SINK_TOPICS = (USAGE, LEDGER, ALERTS, BALANCES, COMMANDS)
