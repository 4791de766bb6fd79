"""The ledger's pure step: a batch of input items and the state in, what one transaction writes out.

:func:`plan` folds items (in merge order) into the :class:`~.ledger.Ledger` and returns a
:class:`Plan`: every output record in produce order, the state-store changes per partition
(for the changelog and, after the commit, the local store) and the input offsets the
transaction commits. No Kafka, no clock: the runner (:mod:`.runner`) is the I/O shell that
begins, produces, sends offsets and commits; the tests call ``plan`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import msgspec

from ..schemas import outputs, topics, wire
from .ledger import Ledger, balance_of
from .merge import Item
from .state import TenantState
from .changelog import drain_changes

Record = tuple[str, bytes, bytes | None, int]  # (topic, value, key, partition)
Change = tuple[bytes, bytes | None]  # (store key, value; None: removed)

_encoder = msgspec.json.Encoder(enc_hook=wire.enc_hook)
_OUTPUT_TOPIC = {outputs.LedgerEntry: topics.LEDGER, outputs.Alert: topics.ALERTS,
                 outputs.Enforcement: topics.ENFORCEMENT, wire.Rejection: topics.REJECTED}


@dataclass(slots=True)
class Plan:
    """What one transaction of the ledger writes.

    ``records``: output records in produce order. ``changelog``: per partition, the state
    keys that changed (for the changelog topic and the store). ``local``: per partition,
    store-only keys (the id memories' time index). ``offsets``: the next input offset per
    (topic, partition) of the items applied. ``applied``/``rejected``: input counts.
    """

    records: list[Record] = field(default_factory=list)
    changelog: dict[int, list[Change]] = field(default_factory=dict)
    local: dict[int, list[Change]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    applied: int = 0
    rejected: int = 0


def plan(ledger: Ledger, items: list[Item], home: dict[str, int],
         open_tenant: Callable[[str, int], TenantState] | None = None, *, publish_spend: bool = True) -> Plan:
    """Apply ``items`` in order to ``ledger``; the records, state changes and offsets of one transaction.

    ``publish_spend``: also publish every tenant's usage spend not yet published
    (``finops.spend.v1``, :func:`spend_records`); otherwise it stays pending, in the state
    and its changelog. The runner publishes it every ``FINOPS_SPEND_EVERY`` of wall time.

    ``home`` maps each tenant to the partition whose store holds its state (a tenant first
    seen on partition p lives in p's store; wire v1 keys every input by tenant, so that is
    the partition of all its input). ``open_tenant(tenant_id, partition)`` makes a new
    tenant's state in that store (default: an in-memory one). Outputs of a message go to
    the partition of its input; balances, spend and state changes to the tenant's home.
    """
    result = Plan()
    records = result.records
    offsets = result.offsets
    handle = ledger.handle
    tenants = ledger.tenants
    changed: set[str] = set()
    for item in items:
        offsets[(item.topic, item.partition)] = item.offset + 1
        message = item.message
        partition = item.partition
        if item.ts is None:
            rejection = message
        else:
            tenant_id = message.tenant_id
            if tenant_id not in tenants and ledger.in_future(message, item.stored_at) is None:
                home[tenant_id] = partition
                if open_tenant is not None:
                    state = open_tenant(tenant_id, partition)
                    state.rules = ledger.rules
                    tenants[tenant_id] = state
            changed.add(tenant_id)  # even a refused message may let time pass
            produced, refused = handle(message, item.raw, item.stored_at)
            key = tenant_id.encode()
            for output in produced:
                topic = _OUTPUT_TOPIC[type(output)]
                if topic is topics.ENFORCEMENT:
                    records.append((topic, _encoder.encode(output),
                                    outputs.balance_key(tenant_id, output.account_id).encode(), partition))
                else:
                    records.append((topic, _encoder.encode(output), key, partition))
            if refused is None:
                continue
            rejection = wire.rejection(message, refused.reason, refused.detail, item.raw)
        result.rejected += 1
        records.append((topics.REJECTED, _encoder.encode(rejection),
                        rejection.tenant_id.encode() if rejection.tenant_id else None, partition))
    result.applied = len(items) - result.rejected
    if publish_spend:
        changed.update(tenant_id for tenant_id, state in tenants.items() if state.spend_outbox)
    for tenant_id in changed:
        state = tenants.get(tenant_id)
        if state is None:  # a message refused before its tenant had any state (ts_in_future)
            continue
        partition = home[tenant_id]
        if publish_spend:
            records.extend(spend_records(state, partition))
        changes, local = drain_changes(state)
        result.changelog.setdefault(partition, []).extend(changes)
        if local:
            result.local.setdefault(partition, []).extend(local)
        for account_id in state.drain_balance_outbox():
            balance = balance_of(state, state.accounts[account_id])
            records.append((topics.BALANCES, _encoder.encode(balance),
                            outputs.balance_key(tenant_id, account_id).encode(), partition))
    return result


def spend_records(state: TenantState, partition: int) -> list[Record]:
    """The tenant's usage spend not yet published, per account and event-time hour
    (``outputs.Spend`` on ``finops.spend.v1``: add up an account's records); clears it (the
    store drops its pending keys in the same transaction)."""
    records: list[Record] = []
    if not state.spend_outbox:
        return records
    tenant_id = state.tenant_id
    for key, (micros, requests, last) in sorted(state.spend_outbox.items()):  # one order, live or restored
        account_id, hour = key.split("\x1f")
        acct = state.accounts[account_id]
        ends = [g.ends_at for g in acct.grants if g.ends_at is not None and g.remaining > 0]
        record = outputs.Spend(
            tenant_id=tenant_id, account_id=account_id,
            hour=datetime.fromtimestamp(int(hour), timezone.utc), spent_micros=micros, requests=requests,
            ts=datetime.fromtimestamp(last, timezone.utc), available_micros=acct.available,
            granted_micros=acct.period_granted, period=acct.period, window_end=min(ends) if ends else None)
        records.append((topics.SPEND, _encoder.encode(record),
                        outputs.balance_key(tenant_id, account_id).encode(), partition))
    state.spend_outbox_dirty.update(state.spend_outbox)
    state.spend_outbox.clear()
    return records
