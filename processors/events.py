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
    """What happened in one tenant's ledger: made by ``decide`` (or by time, in ``advance``), folded by ``apply``.

    ``cause_id`` is the message id, or a stable id for what time caused (``expire:...``);
    ``cause_type`` the message's ``type`` or the timer's kind (``expire``, ``renew``, ``release``,
    ...); ``ts`` the event time of the cause; ``late`` says the message was older than the tenant
    clock, so it was judged at the clock and its ledger entries carry ``late: true``. Every
    ``amount`` is an ``int`` of micro-credits."""

    cause_id: str
    cause_type: str
    ts: datetime
    late: bool = False


class IdRecorded(Event, frozen=True, kw_only=True):
    """The message's id is remembered with ``fingerprint``, a 64-bit digest of its content, for the
    idempotency horizon (wire-v1.md, "Idempotency horizon"): the same id again with the same content
    is a no-op, with other content ``duplicate_id_conflict``. The last event of every accepted message."""

    fingerprint: int


# ----------------------------------------------------------------------------- caused by time


class TimerEvent(Event, frozen=True, kw_only=True):
    """An event that time caused: the timer ``(when, seq, kind, ref, ref2)`` came due, and ``ts`` is its
    ``when``. Applying one pops the timer and moves the tenant clock to ``ts``."""

    timer: Timer | None  # None: caused by the end of the input, not a timer (Ledger.finish)


class TimerDropped(TimerEvent, frozen=True, kw_only=True):
    """A timer whose subject is gone (grant spent, hold settled, override replaced)."""


class GrantEnded(TimerEvent, frozen=True, kw_only=True):
    """A grant's window or expiry ended at ``ts``: the ``amount`` micro-credits left in ``grant_id`` leave
    ``account_id`` as ``expired``, or go back to ``returned_to`` (its source, for ``on_expiry:
    "return"``) as a new grant that keeps ``carried_expiry`` (wire-v1.md, "Credits never outlive
    their source"). With ``recurrence``, the monthly allocation ends with it."""

    account_id: str
    grant_id: str
    amount: int
    returned_to: str | None  # None: the credits leave as expired
    recurrence: str | None = None  # a recurring allocation that ends with this grant
    carried_expiry: datetime | None = None  # the expiry the returned credits keep


class PeriodRenewed(TimerEvent, frozen=True, kw_only=True):
    """A monthly allocation renewed at a month boundary (UTC; wire-v1.md, "Commands", ``recurrence``).

    Of what is left of ``old_grant``, ``carry`` micro-credits (at most ``rollover_pct`` % of the
    amount) move into ``new_grant`` and ``returned`` go back to the parent; ``draws`` (parent grant
    id, micro-credits) pay the new ``period``, which ends at ``ends_at`` (event time)."""

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
    """A hold reached its ``expires_at`` unsettled: its credits go back to the grants they were taken
    from. A settle after this is still charged, like usage (wire-v1.md, "A settle after its hold ended")."""

    hold_id: str


class OverrideEnded(TimerEvent, frozen=True, kw_only=True):
    """A cap override's ``until`` came: the account's hard cap holds again (it may block at once)."""

    account_id: str


class HeldExpired(TimerEvent, frozen=True, kw_only=True):
    """The grace of a held usage ended before its account opened: it is rejected ``unknown_account``."""

    ref: str  # "a:<account id>" or "k:<api key id>"
    seq: int


# ----------------------------------------------------------------------------- caused by messages


class Purchased(Event, frozen=True, kw_only=True):
    """Credits bought: ``amount`` micro-credits become a grant of the root account (id = tenant id) that
    expires at ``expires_at`` (event time; None: never)."""

    amount: int
    expires_at: datetime | None


class AccountOpened(Event, frozen=True, kw_only=True):
    """An empty account opened under ``parent_id``; ``fallback``: its usage may draw from the parent
    when its own grants run dry (wire-v1.md, "Commands")."""

    account_id: str
    kind: str
    parent_id: str
    fallback: bool
    name: str | None


class Allocated(Event, frozen=True, kw_only=True):
    """``amount`` micro-credits moved from ``from_account`` to its child ``to_account`` as a grant.

    ``draws`` are the parent's (grant id, micro-credits) taken, earliest expiry first. The grant
    can be spent from ``starts_at`` to ``ends_at`` (event time) and then expires or returns
    (``on_expiry``). ``cap`` and ``thresholds`` (percent of the period budget) become the child's
    (wire-v1.md, "Caps belong to the account")."""

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
    """``amount`` micro-credits moved back from the child ``from_account`` to its parent ``to_account``,
    as a new grant there; ``draws`` are the child's (grant id, micro-credits) taken."""

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
    """A usage (or a settle after its hold ended) charged to ``account_id``: ``amount`` micro-credits,
    paid by ``draws`` (funding account, grant id, micro-credits) down the fallback cascade from the
    account up towards the root, with ``overage`` micro-credits nobody could cover (wire-v1.md, "Usage")."""

    account_id: str
    amount: int
    draws: tuple[Draw, ...]
    overage: int
    dims: dict  # model_name, operation_type, api_key_id, usage_labels: copied onto its entries
    remainder: tuple[str, tuple[Decimal, int]] | None = None  # (rate key, the charged account's new remainder)


class Reserved(Event, frozen=True, kw_only=True):
    """A hold of ``amount`` micro-credits for ``account_id``, its ``draws`` taken through the cascade like
    usage and kept until ``expires_at`` (event time). The hold's id is the reserve's ``cause_id``."""

    account_id: str
    amount: int
    draws: tuple[Draw, ...]
    expires_at: datetime


class Settled(Event, frozen=True, kw_only=True):
    """The hold ``hold_id`` settled: ``amount`` micro-credits consumed by ``account_id``, taken from the
    hold first (``from_hold``), the rest of the hold ``released`` to its grants, anything beyond it
    drawn through the cascade (``extra``) or booked as ``overage``."""

    hold_id: str
    account_id: str
    amount: int  # consumed in all
    from_hold: tuple[Draw, ...]
    released: tuple[Draw, ...]
    extra: tuple[Draw, ...]  # drawn beyond the hold
    overage: int


class HoldClosed(Event, frozen=True, kw_only=True):
    """A hold released at its expiry was settled after all (its credits are charged
    like usage): a second settle of it is ``reservation_closed``."""

    hold_id: str


class MembersSet(Event, frozen=True, kw_only=True):
    """Only ``members`` (and their descendants) may draw from the pool ``account_id`` from now on."""

    account_id: str
    members: tuple[str, ...]


class KeyBound(Event, frozen=True, kw_only=True):
    """Usage with ``api_key_id`` and no ``account_id`` is charged to ``account_id`` from now on; a second
    binding of the key replaces the first, tags included (docs/ledger.md, "The key registry")."""

    api_key_id: str
    account_id: str
    tags: dict | None = None  # the key registry's tags (cost_center, team, project, env), None: untagged


class PolicySet(Event, frozen=True, kw_only=True):
    """The tenant's settings changed (``set_policy``); a field left None keeps its setting."""

    require_key_registry: bool | None = None  # None: kept


class RatesSet(Event, frozen=True, kw_only=True):
    """The tenant's rate card changed: ``rates`` are (rate key ``model\x1foperation``, credits per unit,
    exact), each replacing the rate of its key."""

    rates: tuple[tuple[str, Decimal], ...]


class CapOverridden(Event, frozen=True, kw_only=True):
    """The hard cap of ``account_id`` is lifted until ``until`` (event time), after two distinct approvals."""

    account_id: str
    until: datetime
