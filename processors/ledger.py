"""The pure ledger: ``decide(state, message) -> events`` and ``apply(state, event) -> entries``.

No clock, no I/O, no randomness: time comes from the messages. One :class:`Tenant`
holds one tenant's accounts; nothing a tenant sends can reach another tenant's state,
because every message is routed to the state of its own ``tenant_id``.

Rules (wire-v1.md):

* The ledger clock is the latest event time seen. Before a message is decided, every
  grant whose end (``expires_at`` or ``ends_at``) is at or before the message's time
  expires. A message older than the clock is *late*: it is judged against what is
  spendable at the clock, and its ledger entries carry ``late: true``. The same input
  in the same order always gives the same result.
* A draw from an account (usage, allocate, reclaim) takes from its spendable grants,
  earliest expiry first (no expiry last), then oldest first.
* Usage climbs account -> parent while the account has ``fallback`` and the parent is
  not a pool the account's chain is not a member of; what nobody covers is overage.
"""

from __future__ import annotations

import heapq
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from functools import singledispatch
from typing import Iterable

import msgspec

from ..schemas import outputs as out
from ..schemas import reasons
from ..schemas import wire
from ..schemas.money import credits_str

class Rejected(Exception):
    """``decide`` refuses a message; nothing changes."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- state


@dataclass(slots=True)
class Grant:
    """Credits an account may spend, within an optional window."""

    id: str
    remaining: int
    seq: int
    starts_at: datetime | None = None
    ends_at: datetime | None = None  # end of spending: min(ends_at, expires_at)
    on_expiry: str = "expire"  # or "return" (to source)
    source: str | None = None  # the account it came from
    cap: str = "soft"

    def order(self) -> tuple[float, int]:
        return (self.ends_at.timestamp() if self.ends_at else float("inf"), self.seq)

    def spendable_at(self, t: datetime) -> bool:
        if self.remaining <= 0:
            return False
        if self.starts_at is not None and t < self.starts_at:
            return False
        return self.ends_at is None or t < self.ends_at


@dataclass(slots=True)
class Account:
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

    def add_grant(self, grant: Grant) -> None:
        self.grants.append(grant)
        self.grants.sort(key=Grant.order)
        self.available += grant.remaining

    def spendable(self, t: datetime) -> int:
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
        for i, g in enumerate(self.grants):
            if g.id == grant_id:
                g.remaining -= amount
                self.available -= amount
                if g.remaining == 0:
                    del self.grants[i]
                return
        raise KeyError(grant_id)


@dataclass(slots=True)
class Totals:
    purchased: int = 0
    consumed: int = 0
    expired: int = 0
    overage: int = 0


@dataclass(slots=True)
class Tenant:
    """One tenant's ledger state. The root account's id is the tenant id."""

    tenant_id: str
    accounts: dict[str, Account] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # id -> content fingerprint
    keys: dict[str, str] = field(default_factory=dict)  # api_key_id -> account_id
    totals: Totals = field(default_factory=Totals)
    clock: datetime | None = None
    seq: int = 0
    expiries: list[tuple[datetime, int, str, str]] = field(default_factory=list)  # heap
    touched: set[str] = field(default_factory=set)  # accounts changed since last drain

    def __post_init__(self) -> None:
        if self.tenant_id not in self.accounts:
            self.accounts[self.tenant_id] = Account(self.tenant_id, "tenant", None, fallback=False)

    def account(self, account_id: str) -> Account:
        acct = self.accounts.get(account_id)
        if acct is None:
            raise Rejected(reasons.UNKNOWN_ACCOUNT, f"no account {account_id!r} in tenant {self.tenant_id!r}")
        return acct

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def drain_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched


# ----------------------------------------------------------------------------- events


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Something that happened to the ledger; past tense; carries its cause and time."""

    cause_id: str
    cause_type: str
    ts: datetime
    late: bool = False


class IdRecorded(Event, frozen=True, kw_only=True):
    fingerprint: int


class ClockAdvanced(Event, frozen=True, kw_only=True):
    pass


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
    ends_at: datetime | None
    on_expiry: str
    cap: str


class Reclaimed(Event, frozen=True, kw_only=True):
    from_account: str
    to_account: str
    amount: int
    draws: tuple[tuple[str, int], ...]


class UsageCharged(Event, frozen=True, kw_only=True):
    account_id: str
    amount: int
    draws: tuple[tuple[str, str, int], ...]  # (funding account, grant id, micros)
    overage: int


class GrantExpired(Event, frozen=True, kw_only=True):
    account_id: str
    grant_id: str
    amount: int
    returned_to: str | None


class MembersSet(Event, frozen=True, kw_only=True):
    account_id: str
    members: tuple[str, ...]


class KeyBound(Event, frozen=True, kw_only=True):
    api_key_id: str
    account_id: str


# ----------------------------------------------------------------------------- decide

_fingerprint_encoder = msgspec.json.Encoder(enc_hook=wire._enc_hook)


def fingerprint(message: wire.Message) -> int:
    """A stable digest of a message's content (not Python's per-process ``hash``)."""
    return zlib.crc32(_fingerprint_encoder.encode(message))


def decide(state: Tenant, message: wire.Message) -> list[Event]:
    """The events that ``message`` causes, or :class:`Rejected`. Changes nothing."""
    previous = state.seen.get(message.id)
    print_ = fingerprint(message)
    if previous is not None:
        if previous == print_:
            return []  # the same message again: a no-op
        raise Rejected(reasons.DUPLICATE_ID_CONFLICT, f"id {message.id!r} was used with other content")
    events: list[Event] = _expiries_until(state, message.ts)
    now = state.clock if state.clock is not None and state.clock > message.ts else message.ts
    late = state.clock is not None and message.ts < state.clock
    events.extend(_decide(message, state, now, late))
    events.append(IdRecorded(cause_id=message.id, cause_type=message.__struct_config__.tag,
                             ts=message.ts, fingerprint=print_))
    return events


def _expiries_until(state: Tenant, t: datetime) -> list[Event]:
    """Grants that end at or before ``t`` expire, in end-time order, before ``t`` is judged."""
    events: list[Event] = []
    if state.clock is None or t > state.clock:
        due = sorted(e for e in state.expiries if e[0] <= t) if state.expiries and state.expiries[0][0] <= t else ()
        for ends_at, _seq, account_id, grant_id in due:
            acct = state.accounts[account_id]
            grant = next((g for g in acct.grants if g.id == grant_id), None)
            if grant is None or grant.remaining == 0:
                continue
            returned = grant.source if grant.on_expiry == "return" else None
            events.append(GrantExpired(cause_id=f"expire:{account_id}:{grant_id}", cause_type="expire",
                                       ts=ends_at, account_id=account_id, grant_id=grant_id,
                                       amount=grant.remaining, returned_to=returned))
        events.append(ClockAdvanced(cause_id="", cause_type="clock", ts=t))
    return events


@singledispatch
def _decide(message: wire.Message, state: Tenant, now: datetime, late: bool) -> list[Event]:
    raise Rejected(reasons.NOT_SUPPORTED, f"{message.__struct_config__.tag!r} is not supported yet")


def _common(message: wire.Message, late: bool) -> dict:
    return {"cause_id": message.id, "cause_type": message.__struct_config__.tag,
            "ts": message.ts, "late": late}


@_decide.register
def _(message: wire.Tick, state: Tenant, now: datetime, late: bool) -> list[Event]:
    return []


@_decide.register
def _(message: wire.Purchase, state: Tenant, now: datetime, late: bool) -> list[Event]:
    if message.expires_at is not None and message.expires_at <= now:
        raise Rejected(reasons.INVALID_WINDOW, "expires_at is not after the purchase time")
    return [Purchased(amount=int(message.credits), expires_at=message.expires_at, **_common(message, late))]


@_decide.register
def _(message: wire.OpenAccount, state: Tenant, now: datetime, late: bool) -> list[Event]:
    if message.account_id in state.accounts:
        raise Rejected(reasons.ACCOUNT_EXISTS, f"account {message.account_id!r} is already open")
    if message.parent_id not in state.accounts:
        raise Rejected(reasons.UNKNOWN_PARENT, f"no parent account {message.parent_id!r}")
    return [AccountOpened(account_id=message.account_id, kind=message.kind, parent_id=message.parent_id,
                          fallback=message.fallback, name=message.name, **_common(message, late))]


def _parent_and_child(state: Tenant, parent_id: str, child_id: str) -> tuple[Account, Account]:
    parent, child = state.account(parent_id), state.account(child_id)
    if child.parent_id != parent.id:
        raise Rejected(reasons.NOT_PARENT, f"{parent_id!r} is not the parent of {child_id!r}")
    return parent, child


@_decide.register
def _(message: wire.Allocate, state: Tenant, now: datetime, late: bool) -> list[Event]:
    if message.recurrence is not None:
        raise Rejected(reasons.NOT_SUPPORTED, "recurring allocations are not supported yet")
    parent, _child = _parent_and_child(state, message.from_account, message.to_account)
    ends = [t for t in (message.ends_at, message.expires_at) if t is not None]
    ends_at = min(ends) if ends else None
    if ends_at is not None and (ends_at <= now or (message.starts_at and ends_at <= message.starts_at)):
        raise Rejected(reasons.INVALID_WINDOW, "the grant would end before it can be spent")
    amount = int(message.credits)
    draws, unpaid = parent.plan_draw(amount, now)
    if unpaid:
        raise Rejected(reasons.INSUFFICIENT_FUNDS,
                       f"{parent.id!r} can spend {credits_str(amount - unpaid)} of {credits_str(amount)}")
    return [Allocated(from_account=parent.id, to_account=message.to_account, amount=amount,
                      draws=tuple(draws), starts_at=message.starts_at, ends_at=ends_at,
                      on_expiry=message.on_expiry, cap=message.cap, **_common(message, late))]


@_decide.register
def _(message: wire.Reclaim, state: Tenant, now: datetime, late: bool) -> list[Event]:
    parent, child = _parent_and_child(state, message.to_account, message.from_account)
    if message.all:
        amount = child.spendable(now)
    elif message.credits is None:
        raise Rejected(reasons.MISSING_FIELD, "reclaim needs credits or all: true")
    else:
        amount = int(message.credits)
    draws, unpaid = child.plan_draw(amount, now)
    if unpaid:
        raise Rejected(reasons.INSUFFICIENT_FUNDS,
                       f"{child.id!r} can return {credits_str(amount - unpaid)} of {credits_str(amount)}")
    return [Reclaimed(from_account=child.id, to_account=parent.id, amount=amount, draws=tuple(draws),
                      **_common(message, late))]


@_decide.register
def _(message: wire.SetMembers, state: Tenant, now: datetime, late: bool) -> list[Event]:
    state.account(message.account_id)
    for member in message.members:
        state.account(member)
    return [MembersSet(account_id=message.account_id, members=tuple(message.members), **_common(message, late))]


@_decide.register
def _(message: wire.BindKey, state: Tenant, now: datetime, late: bool) -> list[Event]:
    state.account(message.account_id)
    return [KeyBound(api_key_id=message.api_key_id, account_id=message.account_id, **_common(message, late))]


@_decide.register
def _(message: wire.Usage, state: Tenant, now: datetime, late: bool) -> list[Event]:
    account_id = message.account_id or state.keys.get(message.api_key_id)
    if account_id is None:
        raise Rejected(reasons.UNKNOWN_ACCOUNT, f"no account_id and api key {message.api_key_id!r} is not bound")
    charged = state.account(account_id)
    if message.credits_consumed is None:
        raise Rejected(reasons.NO_RATE, "usage without credits_consumed and no rate card entry")
    amount = int(message.credits_consumed)
    draws: list[tuple[str, str, int]] = []
    unpaid = amount
    acct = charged
    chain: set[str] = {acct.id}
    while True:
        grant_draws, unpaid = acct.plan_draw(unpaid, now)
        draws.extend((acct.id, gid, take) for gid, take in grant_draws)
        if not unpaid or not acct.fallback or acct.parent_id is None:
            break
        parent = state.accounts[acct.parent_id]
        if parent.members is not None and parent.members.isdisjoint(chain):
            break
        acct = parent
        chain.add(acct.id)
    return [UsageCharged(account_id=charged.id, amount=amount, draws=tuple(draws), overage=unpaid,
                         **_common(message, late))]


# ----------------------------------------------------------------------------- apply


def apply(state: Tenant, event: Event) -> list[out.LedgerEntry]:
    """Fold one event into the state; returns the ledger entries it makes."""
    return _apply(event, state)


@singledispatch
def _apply(event: Event, state: Tenant) -> list[out.LedgerEntry]:
    raise TypeError(f"no apply for {type(event).__name__}")


def _entry(state: Tenant, event: Event, n: int, kind: str, acct: Account, amount: int, **extra) -> out.LedgerEntry:
    acct.updated = event.ts
    state.touched.add(acct.id)
    return out.entry(entry_id=f"{event.cause_id}#{n}", kind=kind, tenant_id=state.tenant_id,
                     account_id=acct.id, cause_id=event.cause_id, cause_type=event.cause_type,
                     ts=event.ts, amount=amount, balance=acct.available, late=event.late, **extra)


@_apply.register
def _(event: IdRecorded, state: Tenant) -> list[out.LedgerEntry]:
    state.seen[event.cause_id] = event.fingerprint
    return []


@_apply.register
def _(event: ClockAdvanced, state: Tenant) -> list[out.LedgerEntry]:
    state.clock = event.ts
    return []


def _new_grant(state: Tenant, acct: Account, grant_id: str, amount: int, **window) -> None:
    if amount == 0:
        return  # an empty grant could never be drawn from; the ledger entry still records the cause
    grant = Grant(id=grant_id, remaining=amount, seq=state.next_seq(), **window)
    acct.add_grant(grant)
    if grant.ends_at is not None:
        heapq.heappush(state.expiries, (grant.ends_at, grant.seq, acct.id, grant.id))


@_apply.register
def _(event: Purchased, state: Tenant) -> list[out.LedgerEntry]:
    root = state.accounts[state.tenant_id]
    _new_grant(state, root, event.cause_id, event.amount, ends_at=event.expires_at)
    state.totals.purchased += event.amount
    return [_entry(state, event, 0, out.CREDIT, root, event.amount, grant_id=event.cause_id)]


@_apply.register
def _(event: AccountOpened, state: Tenant) -> list[out.LedgerEntry]:
    state.accounts[event.account_id] = Account(event.account_id, event.kind, event.parent_id,
                                               fallback=event.fallback, name=event.name, updated=event.ts)
    state.touched.add(event.account_id)
    return []


def _take_all(state: Tenant, acct: Account, draws: Iterable[tuple[str, int]]) -> None:
    for grant_id, amount in draws:
        acct.take(grant_id, amount)


@_apply.register
def _(event: Allocated, state: Tenant) -> list[out.LedgerEntry]:
    parent, child = state.accounts[event.from_account], state.accounts[event.to_account]
    _take_all(state, parent, event.draws)
    _new_grant(state, child, event.cause_id, event.amount, starts_at=event.starts_at, ends_at=event.ends_at,
               on_expiry=event.on_expiry, source=parent.id, cap=event.cap)
    return [_entry(state, event, 0, out.ALLOCATION_OUT, parent, event.amount),
            _entry(state, event, 1, out.ALLOCATION_IN, child, event.amount, grant_id=event.cause_id)]


@_apply.register
def _(event: Reclaimed, state: Tenant) -> list[out.LedgerEntry]:
    child, parent = state.accounts[event.from_account], state.accounts[event.to_account]
    _take_all(state, child, event.draws)
    _new_grant(state, parent, event.cause_id, event.amount, source=child.id)
    return [_entry(state, event, 0, out.RECLAIM, child, event.amount),
            _entry(state, event, 1, out.CREDIT, parent, event.amount, grant_id=event.cause_id)]


@_apply.register
def _(event: UsageCharged, state: Tenant) -> list[out.LedgerEntry]:
    accounts = state.accounts
    charged = accounts[event.account_id]
    charged.consumed += event.amount
    charged.updated = event.ts
    state.touched.add(charged.id)  # its consumed changed, wherever the credits came from
    state.totals.consumed += event.amount
    entries = []
    for n, (account_id, grant_id, amount) in enumerate(event.draws):
        acct = accounts[account_id]
        acct.take(grant_id, amount)
        entries.append(_entry(state, event, n, out.CONSUME, acct, amount, charged_to=charged.id,
                              grant_id=grant_id))
    if event.overage:
        charged.overage += event.overage
        state.totals.overage += event.overage
        entries.append(_entry(state, event, len(event.draws), out.OVERAGE, charged, event.overage))
    return entries


@_apply.register
def _(event: GrantExpired, state: Tenant) -> list[out.LedgerEntry]:
    acct = state.accounts[event.account_id]
    acct.take(event.grant_id, event.amount)
    state.expiries = [e for e in state.expiries if not (e[2] == acct.id and e[3] == event.grant_id)]
    heapq.heapify(state.expiries)
    entries = [_entry(state, event, 0, out.EXPIRE, acct, event.amount, grant_id=event.grant_id)]
    if event.returned_to is None:
        state.totals.expired += event.amount
    else:
        target = state.accounts[event.returned_to]
        _new_grant(state, target, event.cause_id, event.amount, source=acct.id)
        entries.append(_entry(state, event, 1, out.CREDIT, target, event.amount, grant_id=event.cause_id))
    return entries


@_apply.register
def _(event: MembersSet, state: Tenant) -> list[out.LedgerEntry]:
    state.accounts[event.account_id].members = frozenset(event.members)
    state.touched.add(event.account_id)
    return []


@_apply.register
def _(event: KeyBound, state: Tenant) -> list[out.LedgerEntry]:
    state.keys[event.api_key_id] = event.account_id
    return []


# ----------------------------------------------------------------------------- the book


class Book:
    """All tenants' states; the entry point for folding messages (used by fold and the runner)."""

    __slots__ = ("tenants",)

    def __init__(self) -> None:
        self.tenants: dict[str, Tenant] = {}

    def tenant(self, tenant_id: str) -> Tenant:
        state = self.tenants.get(tenant_id)
        if state is None:
            state = self.tenants[tenant_id] = Tenant(tenant_id)
        return state

    def handle(self, message: wire.Message) -> list[out.LedgerEntry]:
        """Decide and apply one message. Raises :class:`Rejected` and changes nothing if refused."""
        state = self.tenant(message.tenant_id)
        entries: list[out.LedgerEntry] = []
        for event in decide(state, message):
            entries.extend(apply(state, event))
        return entries

    def balance(self, tenant_id: str, account_id: str) -> out.Balance:
        state = self.tenants[tenant_id]
        return balance_of(state, state.accounts[account_id])


def balance_of(state: Tenant, acct: Account) -> out.Balance:
    return out.Balance(
        tenant_id=state.tenant_id, account_id=acct.id, kind=acct.kind, parent_id=acct.parent_id,
        available_micros=acct.available, consumed_micros=acct.consumed, reserved_micros=acct.reserved,
        overage_micros=acct.overage, available=credits_str(acct.available),
        consumed=credits_str(acct.consumed), reserved=credits_str(acct.reserved),
        overage=credits_str(acct.overage), ts=acct.updated)
