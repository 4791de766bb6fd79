"""Ledger events: what happened, in the past tense. ``decide`` makes them, ``apply`` folds them.

Every event carries its cause (the message id, or a stable id for what time caused:
``expire:...``, ``renew:...``, ``release:...``) and its event time.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

Timer = tuple[datetime, int, str, str, str]  # (when, seq, kind, ref, ref2)
Draw = tuple[str, str, int]  # (funding account, grant id, micros)


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    cause_id: str
    cause_type: str
    ts: datetime
    late: bool = False


class IdRecorded(Event, frozen=True, kw_only=True):
    fingerprint: int


# ----------------------------------------------------------------------------- caused by time


class TimerEvent(Event, frozen=True, kw_only=True):
    timer: Timer | None  # None: caused by the end of the input, not a timer (Book.finish)


class TimerDropped(TimerEvent, frozen=True, kw_only=True):
    """A timer whose subject is gone (grant spent, hold settled, override replaced)."""


class GrantEnded(TimerEvent, frozen=True, kw_only=True):
    account_id: str
    grant_id: str
    amount: int
    returned_to: str | None  # None: the credits leave as expired
    recurrence: str | None = None  # a recurring allocation that ends with this grant
    carried_expiry: datetime | None = None  # the expiry the returned credits keep


class PeriodRenewed(TimerEvent, frozen=True, kw_only=True):
    recurrence: str
    period: str  # "YYYY-MM"
    old_grant: str
    carry: int
    returned: int
    draws: tuple[tuple[str, int], ...]  # parent grants paying the new period
    inherited: datetime | None = None  # the earliest expiry of what pays the new period (carry included)
    returned_expiry: datetime | None = None  # the expiry the returned remainder keeps
    new_grant: str
    ends_at: datetime


class HoldReleased(TimerEvent, frozen=True, kw_only=True):
    hold_id: str


class OverrideEnded(TimerEvent, frozen=True, kw_only=True):
    account_id: str


class HeldExpired(TimerEvent, frozen=True, kw_only=True):
    """The grace of a held usage ended before its account opened: it is rejected ``unknown_account``."""

    ref: str  # "a:<account id>" or "k:<api key id>"
    seq: int


# ----------------------------------------------------------------------------- caused by messages


class Purchased(Event, frozen=True, kw_only=True):
    amount: int
    expires_at: datetime | None


class AccountOpened(Event, frozen=True, kw_only=True):
    account_id: str
    kind: str
    parent_id: str
    fallback: bool
    name: str | None


class Allocated(Event, frozen=True, kw_only=True):
    from_account: str
    to_account: str
    amount: int
    draws: tuple[tuple[str, int], ...]
    starts_at: datetime | None
    ends_at: datetime | None  # of this grant (for a recurrence: of its first period)
    on_expiry: str
    cap: str | None  # None: the account keeps its cap
    thresholds: tuple[int, ...]
    rollover_pct: int | None = None  # set: a monthly recurring allocation
    recurrence_ends_at: datetime | None = None
    expiry: datetime | None = None  # the allocation's own expires_at
    inherited: datetime | None = None  # the earliest expiry of the parent grants drawn
    period: str = ""
    on_critical: int | None = None  # max_rps for non-prod keys at the critical threshold; 0: none; None: kept


class Reclaimed(Event, frozen=True, kw_only=True):
    from_account: str
    to_account: str
    amount: int
    draws: tuple[tuple[str, int], ...]
    inherited: datetime | None = None  # the earliest expiry of the child grants drawn


class IdForgotten(Event, frozen=True, kw_only=True):
    """A held message was rejected after all: its id is free again (a rejection uses up no id)."""


class UsageHeld(Event, frozen=True, kw_only=True):
    """A usage for an account not opened (or a key not bound) yet, kept until ``grace_end`` (event time)."""

    ref: str  # "a:<account id>" or "k:<api key id>"
    raw: bytes  # the message as sent: applied from it later, or quoted in its rejection
    grace_end: datetime


class HeldTaken(Event, frozen=True, kw_only=True):
    """A held usage leaves the waiting list because its account opened (it is charged right after)."""

    ref: str
    seq: int


class UsageCharged(Event, frozen=True, kw_only=True):
    account_id: str
    amount: int
    draws: tuple[Draw, ...]
    overage: int
    dims: dict  # model_name, operation_type, api_key_id, usage_labels: copied onto its entries
    remainder: tuple[str, tuple[Decimal, int]] | None = None  # (rate key, the charged account's new remainder)


class Reserved(Event, frozen=True, kw_only=True):
    account_id: str
    amount: int
    draws: tuple[Draw, ...]
    expires_at: datetime


class Settled(Event, frozen=True, kw_only=True):
    hold_id: str
    account_id: str
    amount: int  # consumed in all
    from_hold: tuple[Draw, ...]
    released: tuple[Draw, ...]
    extra: tuple[Draw, ...]  # drawn beyond the hold
    overage: int


class HoldClosed(Event, frozen=True, kw_only=True):
    """A reservation released at its expiry was settled after all (its credits are charged
    like usage): a second settle of it is ``reservation_closed``."""

    hold_id: str


class MembersSet(Event, frozen=True, kw_only=True):
    account_id: str
    members: tuple[str, ...]


class KeyBound(Event, frozen=True, kw_only=True):
    api_key_id: str
    account_id: str
    tags: dict | None = None  # the key registry's tags (cost_center, team, project, env), None: untagged


class PolicySet(Event, frozen=True, kw_only=True):
    require_key_registry: bool | None = None  # None: kept


class RatesSet(Event, frozen=True, kw_only=True):
    rates: tuple[tuple[str, Decimal], ...]


class CapOverridden(Event, frozen=True, kw_only=True):
    account_id: str
    until: datetime
