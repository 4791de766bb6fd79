"""Usage spend published every FINOPS_SPEND_EVERY, against the real broker.

Spend not yet published is ledger state (store and changelog); a transaction of spend
alone (an idle ledger) still sends the input offsets, so it is bound to the consumer-group
generation like every other transaction: an instance that lost its partitions and does
not know it yet is fenced instead of publishing the spend a second time or writing its
stale state after its successor's.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from finops import clients
from finops.processors.runner import Fenced, LedgerProcessor
from finops.processors.changelog import HEADER, SPEND, decode_header, tenant_prefix
from finops.producers.publish import publish_lines
from finops.schemas import topics

pytestmark = pytest.mark.integration


def _caught_up(processor: LedgerProcessor, settings, timeout: float = 90.0) -> None:
    ends = clients.input_ends(settings)
    deadline = time.monotonic() + timeout
    while not processor.caught_up(ends):
        assert time.monotonic() < deadline, "the ledger did not catch up"
        processor.step()


class _NotToldYet:
    """A consumer whose poll returns before the lost-partitions notice is served (a frozen
    instance): it still holds the group generation it had."""

    def __init__(self, metadata) -> None:
        self.metadata = metadata

    def consume(self, *_args):
        return []

    def consumer_group_metadata(self):
        return self.metadata

    def assignment(self):
        return []

    def committed(self, partitions, timeout=None):
        return partitions


def test_a_zombie_cannot_publish_spend_alone(settings):
    settings = settings.model_copy(update={"spend_every": timedelta(hours=1)})  # spend stays pending
    tenant = f"zombie-{uuid.uuid4().hex[:6]}"
    start = datetime.now(timezone.utc) - timedelta(minutes=5)

    def ts(second: int) -> str:
        return (start + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def usage(n: int) -> bytes:
        return msgspec.json.encode({"type": "usage", "id": f"u{n}", "tenant_id": tenant, "ts": ts(n),
                                    "account_id": tenant, "api_key_id": "k", "model_name": "m",
                                    "operation_type": "o", "units_consumed": 1, "credits_consumed": 1})

    buy = msgspec.json.encode({"type": "purchase", "id": "p", "tenant_id": tenant, "ts": ts(0), "credits": 100})
    assert publish_lines(settings, [buy, usage(1)]).failed == 0
    a = LedgerProcessor(settings, instance="a", batch_s=0.2)
    _caught_up(a, settings)  # its first transaction publishes (nothing published yet)
    assert publish_lines(settings, [usage(2), usage(3)]).failed == 0
    _caught_up(a, settings)
    assert a.ledger.tenants[tenant].spend_outbox  # 2 credits pending: state, in the changelog

    # a freezes: it leaves the group but keeps its state and never hears that it lost its partitions
    owned, committed = set(a._owned), dict(a.stats.committed)
    metadata = a.consumer.consumer_group_metadata()
    a._drop = lambda numbers: None
    a.consumer.close()
    a.consumer = _NotToldYet(metadata)
    a._owned, a.stats.committed = owned, committed  # as it believed before it froze

    b = LedgerProcessor(settings, instance="b", batch_s=0.2)
    assert publish_lines(settings, [usage(4)]).failed == 0
    _caught_up(b, settings)  # restores the 2 pending credits; books u4
    b._spend_at = 0.0
    b.step()  # publishes all 3 pending credits (a transaction of spend alone)
    assert not b.ledger.tenants[tenant].spend_outbox

    a._spend_at = 0.0  # publication is due for the zombie too
    committed_before = a.stats.transactions
    try:
        a.step()  # its offsets carry its old generation: the broker refuses them, the transaction aborts
    except Fenced:
        pass
    assert a.stats.transactions == committed_before  # the zombie committed nothing

    spend = [msgspec.json.decode(m.value()) for m in clients.read_to_end(settings, topics.SPEND,
                                                                            range(settings.topic_partitions))]
    assert sum(r["spent_micros"] for r in spend if r["tenant_id"] == tenant) == 4_000_000
    changelog = list(clients.read_to_end(settings, b.changelog, range(settings.topic_partitions)))
    headers = [decode_header(m.value()) for m in changelog if m.key() == tenant_prefix(HEADER, tenant)]
    assert headers[-1][2].consumed == 4_000_000  # b's, not the zombie's older one
    pending = [m for m in changelog if m.key().startswith(tenant_prefix(SPEND, tenant))]
    assert pending and pending[-1].value() is None  # the last word on pending spend: published
    b.close()
