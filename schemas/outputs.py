"""Output messages of wire v1: ledger entries and balances.

Amounts are integer micro-credits (``*_micros``) for programs plus the same value as an
exact decimal credit string for people (``amount``, ``balance``, ...).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .money import Micros
from .wire import dec_hook

# Ledger entry kinds (wire-v1 "Outputs").
CREDIT = "credit"
ALLOCATION_OUT = "allocation_out"
ALLOCATION_IN = "allocation_in"
CONSUME = "consume"
RESERVE = "reserve"
RELEASE = "release"
REFUND = "refund"
RECLAIM = "reclaim"
EXPIRE = "expire"
OVERAGE = "overage"


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One balance movement on ``finops.ledger.v1``.

    ``entry_id`` is unique and stable (cause id + position), so every consumer can
    deduplicate. ``charged_to`` names the account a usage is charged to when the
    credits come from an ancestor (the cascade). Entries caused by a usage also carry
    its model, operation, API key and labels.
    """

    entry_id: str
    kind: str
    tenant_id: str
    account_id: str
    cause_id: str
    cause_type: str
    ts: datetime
    amount_micros: int
    balance_micros: int
    amount: Micros  # encoded as exact decimal credits ("1.5"), made only when encoded
    balance: Micros
    charged_to: str | None = None
    grant_id: str | None = None
    hold_id: str | None = None
    late: bool = False
    # Added to v1 (optional): what a usage was for, on its ``consume`` and ``overage``
    # entries, so history and reports (cost by model, team, cost center) need no join.
    model_name: str | None = None
    operation_type: str | None = None
    api_key_id: str | None = None
    usage_labels: dict[str, str] | None = None
    # Added to v1 (optional), the key registry: when the usage's key has registry tags, its
    # ``usage_labels`` are the caller's with the registry's tags over them, and
    # ``caller_labels`` are what the caller sent ({} for none), present only when they differ.
    # ``untagged`` when the tenant requires registered keys and the key has no registry entry.
    caller_labels: dict[str, str] | None = None
    untagged: bool = False


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    """The latest state of one account on ``finops.balances.v1`` (key ``tenant_id/account_id``)."""

    tenant_id: str
    account_id: str
    kind: str
    parent_id: str | None
    available_micros: int
    consumed_micros: int
    reserved_micros: int
    overage_micros: int
    available: str
    consumed: str
    reserved: str
    overage: str
    ts: datetime | None


ALERT_EVENT = "spend.alert"


class Alert(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A ``spend.alert`` on ``finops.alerts.v1``; ``status`` is ``firing`` or ``resolved``.

    ``id`` is stable across replays, so subscribers can drop repeats. ``event``, ``status``
    and ``period`` have no defaults so that they are always encoded (the contract names
    them); only the optional ``action`` and ``notify`` are left out when unset.
    """

    event: str  # always "spend.alert" (ALERT_EVENT)
    id: str
    tenant_id: str
    account_id: str
    type: str
    severity: str
    threshold: int
    current_usage: str
    monthly_allocation: str
    ts: datetime
    status: str  # "firing" | "resolved"
    period: str  # "YYYY-MM" for monthly budgets, "" for one-time ones
    action: dict | None = None
    notify: list[str] | None = None


class Enforcement(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a gateway must refuse now, on compacted ``finops.enforcement.v1`` (key ``tenant_id/account_id``).

    ``rate_limits`` (added to v1, optional): while the account's critical threshold alert asks
    for a rate limit, the most requests per second of each key under the account whose
    registry ``env`` is not ``prod``; absent when no limit is in force.
    """

    tenant_id: str
    account_id: str
    state: str  # "blocked" | "open"
    reason: str
    api_key_ids: list[str]
    ts: datetime
    rate_limits: dict[str, int] | None = None


class Spend(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Usage spend of one account in one event-time hour, on ``finops.spend.v1`` (key
    ``tenant_id/account_id``): what the ledger booked since its previous record for that
    account and hour (add them up), with the account's state at that point. Input of the
    alert processor: far fewer records than usage events."""

    tenant_id: str
    account_id: str
    hour: datetime
    spent_micros: int
    requests: int
    ts: datetime  # the latest event time included
    available_micros: int
    granted_micros: int  # granted to the account for its current budget period
    period: str
    window_end: datetime | None = None  # the earliest end of a grant it can still spend


def balance_key(tenant_id: str, account_id: str) -> str:
    """Account ids are unique per tenant only, so the compacted key carries both."""
    return f"{tenant_id}/{account_id}"


entry_decoder = msgspec.json.Decoder(LedgerEntry, dec_hook=dec_hook)
