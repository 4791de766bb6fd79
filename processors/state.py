"""The ledger's state: plain dataclasses, encoded per key by :mod:`.store`.

Only :mod:`.ledger` changes them, through ``apply``. Money is integer micro-credits;
times are event time (timezone-aware UTC ``datetime``, or epoch seconds where noted).

Every change is also recorded as *dirty* on the :class:`TenantState` (accounts in ``balance_outbox``,
holds, recurring allocations, key bindings, the rate card, timers and held usage in their
own change logs), so the runner can write exactly the keys a transaction changed to its
state store and changelog (:mod:`.store`; the records are :mod:`.changelog`'s, and
``changelog.drain_changes`` hands them over).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ..schemas import reasons, wire

# Timer kinds (``TenantState.timers`` entries are (when, seq, kind, ref, ref2)).
GRANT_END = "grant"  # a one-time grant's window or expiry ends: (account, grant)
RENEW = "renew"  # a recurring allocation's period ends: (recurrence id, "")
HOLD_END = "hold"  # an unsettled hold is released: (hold id, "")
OVERRIDE_END = "override"  # a cap override ends: (account, "")
HELD_END = "held"  # the grace of a usage held for its account ends: (held ref, held seq as text)

# Draw-order key of a grant with no end: after every real end, and finite so it survives JSON.
NO_END = 1e18


class Rejected(Exception):
    """``decide`` refuses a message; nothing changes."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Grant:
    """Credits an account may spend, within an optional window."""

    id: str
    remaining: int
    seq: int
    starts_at: datetime | None = None
    ends_at: datetime | None = None  # end of spending: min(ends_at, expires_at, period end)
    on_expiry: str = "expire"  # or "return" (to source)
    source: str | None = None  # the account it came from
    recurrence: str | None = None  # the recurring allocation this period grant belongs to
    order_key: float = NO_END  # ends_at as a timestamp: draw order is (order_key, seq)
    # Credits never outlive their source (wire-v1.md): ``expiry`` is the grant's effective
    # expiry, the earliest of its own expires_at and ``inherited``, the earliest effective
    # expiry of the grants its credits were drawn from. Spend windows do not travel.
    expiry: datetime | None = None
    inherited: datetime | None = None

    def spendable_at(self, t: datetime) -> bool:
        """May this grant be spent at event time ``t``: at or after ``starts_at`` and before ``ends_at``?"""
        if self.starts_at is not None and t < self.starts_at:
            return False
        return self.ends_at is None or t < self.ends_at


@dataclass(slots=True)
class Account:
    """One account of a tenant's tree; every amount is micro-credits, every time event time.

    ``available`` is what its own grants hold (spendable now or later), ``reserved`` what its holds
    keep, ``consumed`` the usage charged to it wherever it was funded from, ``overage`` the part of
    that nobody covered. The period fields are the budget behind threshold alerts and hard caps
    (docs/ledger.md): ``period_used`` (usage of the subtree) against ``period_granted``."""

    id: str
    kind: str
    parent_id: str | None
    fallback: bool = True
    name: str | None = None
    members: frozenset[str] | None = None  # a pool: only these (and their descendants) draw
    grants: list[Grant] = field(default_factory=list)  # kept in draw order
    available: int = 0
    consumed: int = 0
    reserved: int = 0
    overage: int = 0
    updated: datetime | None = None
    # budget period, for threshold alerts and hard caps: usage of this account's subtree
    # in the period against what was granted to it for the period
    cap: str = "soft"
    thresholds: tuple[int, ...] = wire.DEFAULT_THRESHOLDS
    period: str = ""
    period_granted: int = 0
    period_used: int = 0
    alerted: list[int] = field(default_factory=list)  # thresholds fired in this period
    override_until: datetime | None = None
    blocked: bool = False
    # The seed's critical action (wire-v1.md additions): ``critical_rps`` is the max_rps its
    # allocation asks for non-prod keys when the critical threshold fires (0: no action);
    # ``limited_rps`` the limit in force now, as published on finops.enforcement.v1 (0: none).
    critical_rps: int = 0
    limited_rps: int = 0
    # rate key -> (exact total of rate-card charges, micro-credits charged), both less the same even
    # number: what rounding the running total once needs (its fraction, its parity)
    remainders: dict[str, tuple[Decimal, int]] = field(default_factory=dict)

    def add_grant(self, grant: Grant) -> None:
        """Add ``grant`` in draw order (earliest end first, then oldest) and count it in ``available``."""
        self.grants.append(grant)
        self.grants.sort(key=_draw_order)
        self.available += grant.remaining

    def grant(self, grant_id: str) -> Grant | None:
        """The grant with this id, or None (a grant spent to zero is gone)."""
        for g in self.grants:
            if g.id == grant_id:
                return g
        return None

    def spendable(self, t: datetime) -> int:
        """Micro-credits its own grants can pay at event time ``t`` (inside their windows)."""
        return sum(g.remaining for g in self.grants if g.spendable_at(t))

    def plan_draw(self, amount: int, t: datetime) -> tuple[list[tuple[str, int]], int]:
        """Which grants pay ``amount`` at ``t``: ([(grant_id, micros)], still unpaid)."""
        draws: list[tuple[str, int]] = []
        for g in self.grants:
            if amount == 0:
                break
            if g.spendable_at(t):
                take = g.remaining if g.remaining < amount else amount
                draws.append((g.id, take))
                amount -= take
        return draws, amount

    def take(self, grant_id: str, amount: int) -> None:
        """Take ``amount`` micro-credits from grant ``grant_id`` (removed when it reaches zero). Raises
        KeyError when the account has no such grant."""
        for i, g in enumerate(self.grants):
            if g.id == grant_id:
                g.remaining -= amount
                self.available -= amount
                if g.remaining == 0:
                    del self.grants[i]
                return
        raise KeyError(grant_id)

    def hard_capped(self, t: datetime) -> bool:
        """Is the cap hard at event time ``t`` (a cap override lifts it until its ``until``)?"""
        return self.cap == "hard" and not (self.override_until is not None and t < self.override_until)


def _draw_order(g: Grant) -> tuple[float, int]:
    return (g.order_key, g.seq)


@dataclass(slots=True)
class Recurring:
    """A monthly allocation: re-granted from the parent at each calendar month (UTC)."""

    id: str
    parent: str
    child: str
    amount: int
    rollover_pct: int
    grant_id: str  # the current period's grant
    ends_at: datetime | None = None  # the whole recurrence stops here
    on_expiry: str = "expire"


@dataclass(slots=True)
class Hold:
    """Credits reserved for an in-flight request."""

    id: str
    account: str  # charged account
    amount: int
    draws: list[tuple[str, str, int]]  # (funding account, grant id, micros)
    expires_at: datetime
    # the terms (window, expiry, ...) of each grant drawn, as at the reserve: released credits go
    # back under them, even when the grant itself was spent to zero meanwhile
    terms: list[Grant] = field(default_factory=list)


@dataclass(slots=True)
class Totals:
    """Tenant-wide sums in micro-credits; conservation: available + reserved + consumed - overage + expired
    == purchased, summed over accounts."""

    purchased: int = 0
    consumed: int = 0
    expired: int = 0
    overage: int = 0


@dataclass(slots=True, frozen=True)
class Rules:
    """The ledger's configurable rules (wire-v1.md, "v1 rules made precise"), in seconds of event time.

    ``id_horizon_s``: ids are remembered this long; older messages are ``too_late``.
    ``max_future_skew_s``: a message more than this ahead of the time Kafka stored it is ``ts_in_future``.
    ``unknown_account_grace_s``: usage for an account not opened (or a key not bound) yet is held this long.
    """

    id_horizon_s: float = 35 * 86400.0
    max_future_skew_s: float = 300.0
    unknown_account_grace_s: float = 3600.0


DEFAULT_RULES = Rules()


@dataclass(slots=True)
class Policy:
    """A tenant's settings (``set_policy``); every field has a default, so old stores read."""

    require_key_registry: bool = False


@dataclass(slots=True)
class Held:
    """A usage waiting for its account (``ref`` = ``"a:<account>"`` or ``"k:<api key>"``), as it was sent."""

    ref: str
    seq: int
    ts: datetime  # the usage's event time; its grace ends at ts + unknown_account_grace_s
    raw: bytes


class MemoryIds(dict):
    """An id memory in a dict: ``id -> (value, event time as epoch seconds)``, in arrival order.

    The ledger uses two (message ids with their content fingerprint; closed holds with
    how they closed). :mod:`.store` has the same interface on disk (``get``, item assignment,
    ``pop``, ``prune``); this one serves ``finops fold`` and the tests.
    """

    def prune(self, before: float) -> None:
        """Forget entries older than ``before`` (epoch s). Arrival order is event-time order except
        for late messages, which are forgotten a little later; lookups check the time anyway."""
        while self:
            first = next(iter(self))
            if self[first][1] >= before:
                break
            del self[first]


@dataclass(slots=True)
class TenantState:
    """One tenant's ledger state. The root account's id is the tenant id."""

    tenant_id: str
    accounts: dict[str, Account] = field(default_factory=dict)
    # id -> (content fingerprint, event time as epoch seconds); remembered for rules.id_horizon_s
    ids: MemoryIds = field(default_factory=MemoryIds)
    keys: dict[str, str] = field(default_factory=dict)  # api_key_id -> account_id
    key_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # api_key_id -> registry tags (tagged keys)
    policy: Policy = field(default_factory=Policy)
    rates: dict[str, Decimal] = field(default_factory=dict)  # "model\x1foperation" -> credits/unit
    recurring: dict[str, Recurring] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    closed_holds: MemoryIds = field(default_factory=MemoryIds)  # id -> (how, epoch s)
    held: dict[str, list[Held]] = field(default_factory=dict)  # usage waiting for its account, by ref
    pruned_at: float = 0.0  # event time (epoch s) of the last prune of the id memories
    totals: Totals = field(default_factory=Totals)
    clock: datetime | None = None
    seq: int = 0
    timers: list[tuple[datetime, int, str, str, str]] = field(default_factory=list)  # a heap
    rules: Rules = DEFAULT_RULES
    # usage spend not yet published on finops.spend.v1 (the runner publishes it every
    # FINOPS_SPEND_EVERY of wall time; until then it is state, in the store and changelog):
    # "<account id>\x1f<hour start, epoch s>" -> [micro-credits, requests, latest event time, epoch s]
    spend_outbox: dict[str, list] = field(default_factory=dict)
    spend_outbox_stored: set[str] = field(default_factory=set)  # its keys the store holds (a flush removes them)
    # ---- changes since the last drain (see drain_changes); not state
    balance_outbox: set[str] = field(default_factory=set)  # accounts changed (their balances are published too)
    dirty: set[tuple[str, str]] = field(default_factory=set)  # ("hold"|"recurring"|"key"|"rates"|"policy", id)
    timer_changes: dict[tuple[datetime, int], tuple | None] = field(default_factory=dict)  # added / removed
    held_changes: dict[int, Held | None] = field(default_factory=dict)  # held seq -> added / removed
    spend_outbox_dirty: set[str] = field(default_factory=set)  # keys of ``spend_outbox`` changed or published

    def __post_init__(self) -> None:
        if self.tenant_id not in self.accounts:
            self.accounts[self.tenant_id] = Account(self.tenant_id, "tenant", None, fallback=False)
            self.balance_outbox.add(self.tenant_id)

    def account(self, account_id: str) -> Account:
        """The open account ``account_id``. Raises :class:`Rejected` ``unknown_account``."""
        acct = self.accounts.get(account_id)
        if acct is None:
            raise Rejected(reasons.UNKNOWN_ACCOUNT, f"no account {account_id!r} in tenant {self.tenant_id!r}")
        return acct

    def ancestors(self, acct: Account):
        """The account itself, then its parent, up to the root."""
        accounts = self.accounts
        while acct is not None:
            yield acct
            acct = accounts[acct.parent_id] if acct.parent_id is not None else None

    def next_seq(self) -> int:
        """The next number of the tenant's sequence (grants, timers and held usage are ordered by it)."""
        self.seq += 1
        return self.seq

    def drain_balance_outbox(self) -> set[str]:
        """The accounts changed since the last drain (their balances are to be published); empties it."""
        outbox, self.balance_outbox = self.balance_outbox, set()
        return outbox

    def clear_changes(self) -> None:
        """Forget the change logs (a fold that keeps no store)."""
        self.balance_outbox = set()
        self.dirty = set()
        self.timer_changes = {}
        self.held_changes = {}
        self.spend_outbox_dirty = set()


def rate_key(model_name: str, operation_type: str) -> str:
    """The rate card's key of a model and operation: ``"<model>\x1f<operation>"``."""
    return f"{model_name}\x1f{operation_type}"


