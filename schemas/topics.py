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
# Internal: the ledger processor's per-tenant state, written in the same transaction as the
# input offsets it covers (compacted, key = "<consumer group>/<tenant id>", partition = input partition).
SNAPSHOTS = "finops.snapshots.v1"


class TopicSpec(NamedTuple):
    name: str
    compacted: bool = False
    max_message_bytes: int | None = None  # above the broker's 1 MB default, where records can be big
    # Kept forever (retention.ms=-1): the inputs, the ledger, rejections and alerts are the
    # event-sourced record that a rebuild replays from offset 0. The others keep the
    # broker's default retention (7 days unless configured).
    forever: bool = False


# A tenant's snapshot holds its whole state, ids of the last 24 h included: a busy tenant's
# outgrows 1 MB (see docs/operations.md, "Known limits").
SNAPSHOT_MAX_BYTES = 64 * 1024 * 1024


ALL: tuple[TopicSpec, ...] = (
    TopicSpec(USAGE, forever=True),
    TopicSpec(COMMANDS, forever=True),
    TopicSpec(LEDGER, forever=True),
    TopicSpec(BALANCES, compacted=True),
    TopicSpec(ENFORCEMENT, compacted=True),
    TopicSpec(ALERTS, forever=True),
    TopicSpec(REJECTED, forever=True),
    TopicSpec(ALERTS_DEADLETTER, forever=True),
    TopicSpec(SPEND),
    TopicSpec(SNAPSHOTS, compacted=True, max_message_bytes=SNAPSHOT_MAX_BYTES),
)

INPUTS = (USAGE, COMMANDS)
