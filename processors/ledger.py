"""The pure ledger: ``decide(state, message) -> events``, ``apply(state, event) -> outputs``.

No clock, no I/O, no randomness: time comes from the messages. One :class:`TenantState` holds
one tenant's accounts, and every message is routed to the state of its own ``tenant_id``,
so nothing a tenant sends can touch another tenant's accounts.

Rules (wire-v1.md, plus the choices written here):

* **Time.** The ledger clock is the latest event time seen. Before a message is judged,
  time advances to its ``ts``: grants whose window or expiry ends at or before it expire
  (or return), monthly allocations renew, unsettled holds are released, cap overrides
  end — each at its own instant, in time order. Time advances even if the message is
  then refused. A message older than the clock is *late*: it is judged against what is
  spendable at the clock and its ledger entries carry ``late: true``.
* **Draws.** A draw from an account (usage, allocate, reclaim, reserve) takes from its
  spendable grants, earliest end first (no end last), then oldest first.
* **Cascade.** Usage (and a reserve) climbs account -> parent while the account has
  ``fallback``, is not hard-capped (a hard cap keeps spend inside its budget unless
  overridden), and the parent is not a pool that the chain is not a member of. What
  nobody covers is overage on the charged account.
* **Budget periods.** An account's period is its lifetime, or the calendar month (UTC)
  once it has a monthly allocation. Threshold alerts compare the usage of the account's
  subtree in the period with what was granted to the account for the period (a renewal's
  grant is the carried rollover plus the new amount). A hard-capped account is blocked
  when that usage reaches 100 %, until a top-up, a new period or an override.
* **Recurrence.** At each month boundary the unspent remainder of the period grant
  carries over up to ``rollover_pct`` % of the amount, the rest returns to the parent,
  and the amount is drawn again from the parent (as much as it can spend then).
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Callable

import msgspec

from ..schemas import outputs as out
from ..schemas import reasons, wire
from ..schemas.money import MAX_MICROS, MICROS_PER_CREDIT, Micros, credits_str
from .events import (
    AccountOpened, Allocated, CapOverridden, Draw, Event, GrantEnded, HoldReleased, IdRecorded,
    HeldExpired, HeldTaken, HoldClosed, IdForgotten, KeyBound, MembersSet, OverrideEnded, PeriodRenewed, PolicySet,
    Purchased, RatesSet,
    Reclaimed, Reserved, Settled, TimerDropped, TimerEvent, UsageCharged, UsageHeld,
)
from .state import (
    DEFAULT_RULES, GRANT_END, HELD_END, HOLD_END, NO_END, OVERRIDE_END, RENEW, Account, Grant, Held, Hold,
    Recurring, Rejected, Rules, TenantState, rate_key,
)

# What folding a message makes: ledger entries, alerts, enforcement changes, and rejections
# that time causes (a held usage whose grace ended).
Output = out.LedgerEntry | out.Alert | out.Enforcement | wire.Rejection

__all__ = ["Ledger", "Rejected", "Rules", "TenantState", "Output", "decide", "apply", "advance", "balance_of", "Entitlement",
           "entitlement"]


# ----------------------------------------------------------------------------- time


def month_of(t: datetime) -> str:
    """The calendar month (UTC) of ``t`` as ``"YYYY-MM"``: the name of a budget period."""
    return f"{t.year:04d}-{t.month:02d}"


def next_month(t: datetime) -> datetime:
    """The first instant of the calendar month (UTC) after ``t``."""
    t = t.astimezone(timezone.utc)
    return datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=timezone.utc)


def advance(state: TenantState, t: datetime) -> list[Output]:
    """Let time pass up to ``t``: fire every due timer in time order, then move the clock."""
    outputs: list[Output] = []
    if state.clock is not None and t <= state.clock:
        return outputs
    timers = state.timers
    while timers and timers[0][0] <= t:
        outputs.extend(apply(state, _decide_timer(state, timers[0])))
    state.clock = t
    epoch = t.timestamp()
    if epoch - state.pruned_at >= PRUNE_EVERY_S:
        prune_memory(state, epoch)
    return outputs


# How a closed hold is remembered: "settled", or RELEASED + the charged account (released
# at its expiry: a settle after that still charges the account, wire-v1.md).
RELEASED = "released:"

# The id memories are pruned once per this much event time. Pruning only frees space: a
# lookup ignores an entry older than the horizon whether or not it was pruned yet, so live
# processing, a restored store and a replay judge alike.
PRUNE_EVERY_S = 3600.0


def prune_memory(state: TenantState, now: float) -> None:
    """Forget ids (and closed holds) older than the idempotency horizon before ``now`` (epoch s)."""
    before = now - state.rules.id_horizon_s
    state.ids.prune(before)
    state.closed_holds.prune(before)
    state.pruned_at = now


def _decide_timer(state: TenantState, timer) -> TimerEvent:
    when, _seq, kind, ref, _ref2 = timer
    if kind == GRANT_END:
        acct = state.accounts[ref]
        grant = acct.grant(_ref2)
        if grant is None:
            return TimerDropped(cause_id="", cause_type="timer", ts=when, timer=timer)
        return _grant_ended(acct, grant, when, timer)
    if kind == RENEW:
        rec = state.recurring.get(ref)
        if rec is None:
            return TimerDropped(cause_id="", cause_type="timer", ts=when, timer=timer)
        return _renewal(state, rec, when, timer)
    if kind == HOLD_END:
        if ref not in state.holds:
            return TimerDropped(cause_id="", cause_type="timer", ts=when, timer=timer)
        return HoldReleased(cause_id=f"release:{ref}", cause_type="release", ts=when, timer=timer, hold_id=ref)
    if kind == OVERRIDE_END:
        acct = state.accounts[ref]
        if acct.override_until != when:
            return TimerDropped(cause_id="", cause_type="timer", ts=when, timer=timer)
        return OverrideEnded(cause_id=f"override-end:{ref}:{when.isoformat()}", cause_type="override_end",
                             ts=when, timer=timer, account_id=ref)
    if kind == HELD_END:
        held = _find_held(state, ref, int(_ref2))
        if held is None:
            return TimerDropped(cause_id="", cause_type="timer", ts=when, timer=timer)
        return HeldExpired(cause_id=f"held-end:{held.seq}", cause_type="held_end", ts=when, timer=timer,
                           ref=ref, seq=held.seq)
    raise ValueError(f"unknown timer kind {kind!r}")


def _grant_ended(acct: Account, grant: Grant, when: datetime, timer, recurrence: str | None = None) -> GrantEnded:
    returns = grant.on_expiry == "return" and grant.source is not None and not _source_expired(grant, when)
    return GrantEnded(cause_id=f"expire:{acct.id}:{grant.id}", cause_type="expire", ts=when, timer=timer,
                      account_id=acct.id, grant_id=grant.id, amount=grant.remaining,
                      returned_to=grant.source if returns else None, recurrence=recurrence,
                      carried_expiry=_carried(grant, when) if returns else None)


def _renewal(state: TenantState, rec: Recurring, when: datetime, timer) -> TimerEvent:
    child = state.accounts[rec.child]
    grant = child.grant(rec.grant_id)
    last_month = when.year == 9999 and when.month == 12  # no month after this one: it ends here
    if rec.ends_at is not None and when >= rec.ends_at or last_month:
        if grant is None:  # spent to the last credit: only the recurrence ends
            return GrantEnded(cause_id=f"expire:{child.id}:{rec.grant_id}", cause_type="expire", ts=when,
                              timer=timer, account_id=child.id, grant_id=rec.grant_id, amount=0,
                              returned_to=None, recurrence=rec.id)
        return _grant_ended(child, grant, when, timer, recurrence=rec.id)
    remaining = grant.remaining if grant is not None else 0
    carry = min(remaining, rec.amount * rec.rollover_pct // 100)
    returned = remaining - carry
    # Credits carried into the next period keep what they inherited (the allocation's own
    # expires_at ends the recurrence itself); the remainder returned to the parent keeps the
    # grant's effective expiry, as every credit that moves does.
    returned_expiry = _carried(grant, when) if grant is not None else None
    period = month_of(when)
    cause = f"renew:{rec.id}:{period}"
    parent = state.accounts[rec.parent]
    draws, unpaid = parent.plan_draw(rec.amount, when)
    inherited = _drawn_expiry(parent, [g for g, _ in draws])
    if carry and grant is not None:
        inherited = _earliest(inherited, grant.inherited)
    if unpaid and returned:  # the returned remainder becomes a parent grant that can pay too
        draws.append((f"{cause}:return", min(unpaid, returned)))
        inherited = _earliest(inherited, returned_expiry)
    ends_at = next_month(when)
    if rec.ends_at is not None and rec.ends_at < ends_at:
        ends_at = rec.ends_at
    return PeriodRenewed(cause_id=cause, cause_type="renew", ts=when, timer=timer, recurrence=rec.id,
                         period=period, old_grant=rec.grant_id, carry=carry,
                         returned=returned, draws=tuple(draws), new_grant=f"{rec.id}@{period}", ends_at=ends_at,
                         inherited=inherited, returned_expiry=returned_expiry)


# ----------------------------------------------------------------------------- decide

# "deterministic": a dict's keys in sorted order (usage_labels in any order are the same content)
_fingerprint_encoder = msgspec.json.Encoder(enc_hook=wire.enc_hook, order="deterministic")


def fingerprint(message: wire.Message, raw: bytes | None = None) -> int:
    """A stable 64-bit digest of a message's content (BLAKE2b; not Python's per-process ``hash``).

    The content is the message after reading (wire-v1.md, "Same content"): its canonical
    encoding, with defaults left out, times in UTC, amounts as exact decimals and unknown
    extra fields gone, so key order, whitespace, the spelling of an amount or a time, and
    an explicit default do not make a resend a conflict. ``raw`` is not used (kept for
    callers that have it). Two different contents share a fingerprint with probability
    2^-64: such a resend would pass as a no-op instead of ``duplicate_id_conflict``.
    """
    return int.from_bytes(hashlib.blake2b(_fingerprint_encoder.encode(message), digest_size=8).digest(), "big")


def decide(state: TenantState, message: wire.Message, raw: bytes | None = None) -> list[Event]:
    """The events ``message`` causes (time already advanced to it), or :class:`Rejected`.

    Reads ``state`` and changes nothing; :func:`apply` folds the events into it, in order.
    A message seen before with the same content decides no events (a no-op).

    Idempotency (wire-v1.md, "Idempotency horizon"): an id is remembered for
    ``rules.id_horizon_s`` of event time; a message older than the clock minus the horizon
    is ``too_late``; within it, the same id with the same content is a no-op and other
    content is ``duplicate_id_conflict``.
    """
    clock = state.clock
    ts_epoch = message.ts.timestamp()
    if clock is not None:
        oldest = clock.timestamp() - state.rules.id_horizon_s
        if ts_epoch < oldest:
            raise Rejected(reasons.TOO_LATE, f"ts {message.ts.isoformat()} is more than the idempotency horizon "
                                             f"({state.rules.id_horizon_s:g} s) before the tenant clock "
                                             f"{clock.isoformat()}")
    else:
        oldest = None
    print_ = fingerprint(message, raw)
    previous = state.ids.get(message.id)
    if previous is not None and (oldest is None or previous[1] >= oldest):
        if previous[0] == print_:
            return []  # the same message again: a no-op
        raise Rejected(reasons.DUPLICATE_ID_CONFLICT, f"id {message.id!r} was used before with other content")
    late = clock is not None and message.ts < clock
    events = _decide(message, state, clock if late else message.ts, late, raw)
    events.append(IdRecorded(cause_id=message.id, cause_type="id", ts=message.ts, fingerprint=print_))
    return events


# One small function per message type (and per event type below), found by exact type:
# a dict lookup, cheaper than functools.singledispatch on the hot path.
_DECIDERS: dict[type, Callable[..., list[Event]]] = {}
_APPLIERS: dict[type, Callable[..., list[Output]]] = {}


def _decides(kind: type) -> Callable:
    def register(fn: Callable) -> Callable:
        _DECIDERS[kind] = fn
        return fn
    return register


def _applies(kind: type) -> Callable:
    def register(fn: Callable) -> Callable:
        _APPLIERS[kind] = fn
        return fn
    return register


def _decide(message: wire.Message, state: TenantState, now: datetime, late: bool, raw: bytes | None = None) -> list[Event]:
    if type(message) is wire.Usage:
        return _decide_usage(message, state, now, late, raw)
    decider = _DECIDERS.get(type(message))
    if decider is None:
        raise Rejected(reasons.NOT_SUPPORTED, f"{message.__struct_config__.tag!r} is not supported")
    return decider(message, state, now, late)


def _common(message: wire.Message, late: bool) -> dict:
    return {"cause_id": message.id, "cause_type": message.__struct_config__.tag, "ts": message.ts, "late": late}


def _insufficient(acct: Account, amount: int, unpaid: int, verb: str = "spend") -> Rejected:
    return Rejected(reasons.INSUFFICIENT_FUNDS,
                    f"{acct.id!r} can {verb} {credits_str(amount - unpaid)} of {credits_str(amount)} now")


@_decides(wire.Tick)
def _(message: wire.Tick, state: TenantState, now: datetime, late: bool) -> list[Event]:
    return []


@_decides(wire.Purchase)
def _(message: wire.Purchase, state: TenantState, now: datetime, late: bool) -> list[Event]:
    if message.expires_at is not None and message.expires_at <= now:
        raise Rejected(reasons.INVALID_WINDOW, "expires_at is not after the purchase time")
    amount = int(message.credits)
    _fits(state.totals.purchased + amount, state.accounts[state.tenant_id].available + amount)
    return [Purchased(amount=amount, expires_at=message.expires_at, **_common(message, late))]


@_decides(wire.OpenAccount)
def _(message: wire.OpenAccount, state: TenantState, now: datetime, late: bool) -> list[Event]:
    if message.account_id in state.accounts:
        raise Rejected(reasons.ACCOUNT_EXISTS, f"account {message.account_id!r} is already open")
    if message.parent_id not in state.accounts:
        raise Rejected(reasons.UNKNOWN_PARENT, f"no parent account {message.parent_id!r}")
    return [AccountOpened(account_id=message.account_id, kind=message.kind, parent_id=message.parent_id,
                          fallback=message.fallback, name=message.name, **_common(message, late))]


def _parent_and_child(state: TenantState, parent_id: str, child_id: str) -> tuple[Account, Account]:
    parent, child = state.account(parent_id), state.account(child_id)
    if child.parent_id != parent.id:
        raise Rejected(reasons.NOT_PARENT, f"{parent_id!r} is not the parent of {child_id!r}")
    return parent, child


@_decides(wire.Allocate)
def _(message: wire.Allocate, state: TenantState, now: datetime, late: bool) -> list[Event]:
    parent, _child = _parent_and_child(state, message.from_account, message.to_account)
    ends = [t for t in (message.ends_at, message.expires_at) if t is not None]
    final = min(ends) if ends else None
    start = message.starts_at if message.starts_at is not None and message.starts_at > now else now
    if final is not None and final <= start:
        raise Rejected(reasons.INVALID_WINDOW, "the grant would end before it can be spent")
    amount = int(message.credits)
    _fits(_child.available + amount)
    draws, unpaid = parent.plan_draw(amount, now)
    if unpaid:
        raise _insufficient(parent, amount, unpaid)
    recurring = message.recurrence is not None
    ends_at = final
    if recurring:
        if start.year == 9999 and start.month == 12:
            raise Rejected(reasons.INVALID_TIMESTAMP, "a monthly allocation starting in December 9999 would "
                                                      "renew after the year 9999")
        boundary = next_month(start)
        ends_at = boundary if final is None or boundary < final else final
    return [Allocated(
        from_account=parent.id, to_account=message.to_account, amount=amount, draws=tuple(draws),
        starts_at=message.starts_at, ends_at=ends_at, on_expiry=message.on_expiry, cap=message.cap,
        thresholds=tuple(sorted(set(message.thresholds))),
        rollover_pct=message.recurrence.rollover_pct if recurring else None,
        recurrence_ends_at=final if recurring else None, period=month_of(start) if recurring else "",
        expiry=message.expires_at, inherited=_drawn_expiry(parent, [g for g, _ in draws]),
        on_critical=_critical_rps(message.on_critical), **_common(message, late))]


def _critical_rps(action: wire.RateLimitAction | wire.NoAction | None) -> int | None:
    """An allocate's ``on_critical`` as the account keeps it: max_rps, 0 for none, None to keep."""
    if action is None:
        return None
    if type(action) is wire.RateLimitAction:
        return action.params.max_rps
    return 0


@_decides(wire.Reclaim)
def _(message: wire.Reclaim, state: TenantState, now: datetime, late: bool) -> list[Event]:
    parent, child = _parent_and_child(state, message.to_account, message.from_account)
    if message.all:
        amount = child.spendable(now)
    elif message.credits is None:
        raise Rejected(reasons.MISSING_FIELD, "reclaim needs credits or all: true")
    else:
        amount = int(message.credits)
    _fits(parent.available + amount)
    draws, unpaid = child.plan_draw(amount, now)
    if unpaid:
        raise _insufficient(child, amount, unpaid, "return")
    return [Reclaimed(from_account=child.id, to_account=parent.id, amount=amount, draws=tuple(draws),
                      inherited=_drawn_expiry(child, [g for g, _ in draws]), **_common(message, late))]


@_decides(wire.SetMembers)
def _(message: wire.SetMembers, state: TenantState, now: datetime, late: bool) -> list[Event]:
    state.account(message.account_id)
    for member in message.members:
        state.account(member)
    return [MembersSet(account_id=message.account_id, members=tuple(message.members), **_common(message, late))]


@_decides(wire.BindKey)
def _(message: wire.BindKey, state: TenantState, now: datetime, late: bool) -> list[Event]:
    state.account(message.account_id)
    tags = {name: getattr(message, name) for name in wire.KEY_TAGS if getattr(message, name) is not None}
    return [KeyBound(api_key_id=message.api_key_id, account_id=message.account_id, tags=tags or None,
                     **_common(message, late))]


@_decides(wire.SetPolicy)
def _(message: wire.SetPolicy, state: TenantState, now: datetime, late: bool) -> list[Event]:
    return [PolicySet(require_key_registry=message.require_key_registry, **_common(message, late))]


@_decides(wire.SetRates)
def _(message: wire.SetRates, state: TenantState, now: datetime, late: bool) -> list[Event]:
    rates = tuple((rate_key(r.model_name, r.operation_type), Decimal(r.credits_per_unit)) for r in message.rates)
    return [RatesSet(rates=rates, **_common(message, late))]


def approver_key(approver: str) -> str:
    """Approvers are compared after Unicode NFC, case folding and trimming spaces (wire-v1.md):
    "CFO", " cfo " and "cfo" are one approver."""
    return unicodedata.normalize("NFC", approver).casefold().strip()


@_decides(wire.OverrideCap)
def _(message: wire.OverrideCap, state: TenantState, now: datetime, late: bool) -> list[Event]:
    state.account(message.account_id)
    approvers = {approver_key(a) for a in message.approvals} - {""}
    if len(approvers) < 2:
        raise Rejected(reasons.APPROVALS_REQUIRED,
                       f"an override needs 2 distinct approvers, got {len(approvers)}: {sorted(approvers)}")
    if message.until <= now:
        raise Rejected(reasons.INVALID_WINDOW, "until is not after the override time")
    return [CapOverridden(account_id=message.account_id, until=message.until, **_common(message, late))]


def _cascade(state: TenantState, charged: Account, amount: int, now: datetime) -> tuple[list[Draw], int]:
    """Who pays ``amount`` charged to ``charged``: the account, then up the fallback chain."""
    draws: list[Draw] = []
    unpaid = amount
    acct = charged
    accounts = state.accounts
    while True:
        if acct.grants:
            grant_draws, unpaid = acct.plan_draw(unpaid, now)
            for grant_id, take in grant_draws:
                draws.append((acct.id, grant_id, take))
        if not unpaid or not acct.fallback or acct.parent_id is None or acct.cap == "hard" and acct.hard_capped(now):
            return draws, unpaid
        parent = accounts[acct.parent_id]
        if parent.members is not None and parent.members.isdisjoint(_chain(state, charged, acct)):
            return draws, unpaid
        acct = parent


@dataclass(frozen=True, slots=True)
class Entitlement:
    """The answer to "may ``account_id`` spend ``credits`` now?" (``finops serve``'s ``/v1/check``).

    ``effective_available`` (micro-credits) is what a usage charged to the account would draw
    right now through the cascade, its own spendable grants first: the same ``_cascade`` the
    ledger charges with. ``reason`` is None when allowed, else ``blocked`` (a hard cap on the
    account or an ancestor has blocked it: ``finops.enforcement.v1``), ``hard_cap`` (the
    usage would take a hard-capped account's period use past its budget) or
    ``insufficient_credits`` (the cascade cannot fund it: the ledger would book the rest as
    overage). ``blocked_by`` names the accounts behind ``blocked``/``hard_cap``.
    """

    account_id: str
    allow: bool
    reason: str | None
    effective_available: int
    blocked_by: tuple[str, ...] = ()


def entitlement(state: TenantState, acct: Account, credits: int, at: datetime) -> Entitlement:
    """Judge a usage of ``credits`` micro-credits charged to ``acct`` at event time ``at``.

    The ledger judges a usage older than its clock at the clock (late usage), so ``at``
    before ``state.clock`` is judged at the clock. Pure: reads ``state``, changes nothing.
    """
    now = at if state.clock is None or at > state.clock else state.clock
    _draws, unpaid = _cascade(state, acct, MAX_MICROS, now)
    effective = MAX_MICROS - unpaid
    chain = list(state.ancestors(acct))
    blocked = tuple(a.id for a in chain if a.blocked and a.hard_capped(now))
    if blocked:
        return Entitlement(acct.id, False, "blocked", effective, blocked)
    capped = tuple(a.id for a in chain if a.period_granted > 0 and a.hard_capped(now)
                   and a.period_used + credits > a.period_granted)
    if capped:
        return Entitlement(acct.id, False, "hard_cap", effective, capped)
    if credits > effective:
        return Entitlement(acct.id, False, "insufficient_credits", effective)
    return Entitlement(acct.id, True, None, effective)


def _chain(state: TenantState, charged: Account, top: Account) -> list[str]:
    """The ids from ``charged`` up to ``top``: who a pool's members must include for a draw."""
    chain = []
    for acct in state.ancestors(charged):
        chain.append(acct.id)
        if acct is top:
            return chain
    return chain


def usage_credits(state: TenantState, message: wire.Usage, charged: Account | None = None
                  ) -> tuple[int, tuple[str, tuple[Decimal, int]] | None]:
    """(micro-credits, the charged account's new rate remainder or None) of a usage.

    ``credits_consumed`` when given; else units x the tenant's rate for the model and
    operation. Rate-card prices lose nothing to rounding (wire-v1.md): per account and
    rate, the exact sub-micro remainder is carried from one usage to the next, so the sum
    charged equals the exact total rounded once (half-even).
    """
    if message.credits_consumed is not None:
        return int(message.credits_consumed), None
    key = rate_key(message.model_name, message.operation_type)
    rate = state.rates.get(key)
    if rate is None:
        raise Rejected(reasons.NO_RATE, f"no credits_consumed and no rate for {message.model_name!r} / "
                                        f"{message.operation_type!r} (send set_rates)")
    exact = Decimal(repr(message.units_consumed)) * rate * MICROS_PER_CREDIT
    total, charged_so_far = (charged.remainders.get(key, _NOTHING) if charged is not None else _NOTHING)
    total += exact  # the exact total of this account and rate so far, charged once rounded
    micros = int(total.to_integral_value(ROUND_HALF_EVEN)) - charged_so_far
    if micros > MAX_MICROS:
        raise Rejected(reasons.INVALID_AMOUNT, f"the price of {message.units_consumed!r} units is above the largest "
                                               f"balance")
    # keep only what rounding still needs: the total's fraction and its integer part's parity
    whole = int(total) - int(total) % 2
    return micros, (key, (total - whole, charged_so_far + micros - whole))


_ZERO = Decimal(0)
_NOTHING = (_ZERO, 0)


def _fits(*totals: int) -> None:
    """No balance or total may pass 2^63-1 micro-credits (wire-v1.md, "Amounts are exact")."""
    for total in totals:
        if total > MAX_MICROS:
            raise Rejected(reasons.INVALID_AMOUNT, f"this would take a balance or total past {MAX_MICROS} "
                                                   f"micro-credits")


def _decide_usage(message: wire.Usage, state: TenantState, now: datetime, late: bool, raw: bytes | None) -> list[Event]:
    """Charge a usage through the cascade; hold it while its account is not open (or its key not bound) yet.

    wire-v1.md, "Usage before its account": held for ``rules.unknown_account_grace_s`` of
    event time after its ``ts``, applied when the account opens or the key is bound, and
    rejected ``unknown_account`` when the grace ends.
    """
    account_id = message.account_id or state.keys.get(message.api_key_id)
    if account_id is None or account_id not in state.accounts:
        ref = f"a:{message.account_id}" if message.account_id else f"k:{message.api_key_id}"
        try:
            grace_end = message.ts + timedelta(seconds=state.rules.unknown_account_grace_s)
        except OverflowError:  # a usage in the last hour of the year 9999: its grace ends with time itself
            grace_end = datetime.max.replace(tzinfo=timezone.utc)
        if raw is None or grace_end <= now:
            if account_id is None:
                raise Rejected(reasons.UNKNOWN_ACCOUNT,
                               f"no account_id and api key {message.api_key_id!r} is not bound")
            state.account(account_id)  # raises unknown_account
        return [UsageHeld(cause_id=message.id, cause_type="usage", ts=message.ts, late=late, ref=ref,
                          raw=raw, grace_end=grace_end)]
    return _charge_usage(message, state, state.accounts[account_id], now, late)


def _charge_usage(message: wire.Usage, state: TenantState, charged: Account, now: datetime, late: bool) -> list[Event]:
    amount, remainder = usage_credits(state, message, charged)
    _fits(state.totals.consumed + amount, charged.consumed + amount)
    draws, unpaid = _cascade(state, charged, amount, now)
    return [UsageCharged(cause_id=message.id, cause_type="usage", ts=message.ts, late=late, account_id=charged.id,
                         amount=amount, draws=tuple(draws), overage=unpaid, dims=_usage_dims(state, message),
                         remainder=remainder)]


class _Cause:
    """What the appliers read of an event (``cause_id``, ``cause_type``, ``ts``, ``late``): the
    fast path's stand-in for a :class:`UsageCharged` it does not need to build."""

    __slots__ = ("cause_id", "cause_type", "ts", "late")

    def __init__(self, cause_id: str, ts: datetime) -> None:
        self.cause_id = cause_id
        self.cause_type = "usage"
        self.ts = ts
        self.late = False


def charge_common_usage(state: TenantState, message: wire.Usage) -> list[Output] | None:
    """The usual usage, charged in one step; None when it is not the usual case.

    The usual case: ``credits_consumed`` given, its account open (or its key bound), its
    ``ts`` not before the tenant clock, no timer and no prune of the id memories due by
    then, its id new. Then ``advance`` + ``decide`` + ``apply`` would fire nothing and
    refuse nothing, so this applies the same rule functions (``_cascade``,
    ``_draw_entries``, ``_charge``) directly, without the event objects: the same outputs
    and the same state (``tests/unit/test_fast_path.py`` holds them equal on random workloads).
    Anything else returns None before changing anything, and :meth:`Ledger.handle` takes the
    general path.
    """
    ts = message.ts
    clock = state.clock
    if clock is not None and ts < clock:
        return None
    timers = state.timers
    if timers and timers[0][0] <= ts:
        return None
    credits = message.credits_consumed
    if credits is None:
        return None
    epoch = ts.timestamp()
    if epoch - state.pruned_at >= PRUNE_EVERY_S:
        return None
    charged = state.accounts.get(message.account_id or state.keys.get(message.api_key_id))
    if charged is None:
        return None
    ids = state.ids
    previous = ids.get(message.id)
    if previous is not None and previous[1] >= epoch - state.rules.id_horizon_s:
        return None
    amount = int(credits)
    if state.totals.consumed + amount > MAX_MICROS or charged.consumed + amount > MAX_MICROS:
        return None
    state.clock = ts
    draws, unpaid = _cascade(state, charged, amount, ts)
    # _draw_entries + _entry, for a usage's consume entries
    accounts = state.accounts
    balance_outbox = state.balance_outbox
    tenant_id = state.tenant_id
    cause_id = message.id
    charged_id = charged.id
    model_name, operation_type, api_key_id = message.model_name, message.operation_type, message.api_key_id
    if state.key_tags or state.policy.require_key_registry:  # the key registry: as _usage_dims stamps them
        dims = _usage_dims(state, message)
        labels = dims["usage_labels"]
        caller_labels = dims.get("caller_labels")
        untagged = dims.get("untagged", False)
    else:
        dims = None
        labels = message.usage_labels or None
        caller_labels = None
        untagged = False
    outputs: list[Output] = []
    n = 0
    for account_id, grant_id, take in draws:
        acct = accounts[account_id]
        acct.take(grant_id, take)
        acct.updated = ts
        balance_outbox.add(account_id)
        available = acct.available
        outputs.append(_LedgerEntry(
            entry_id=f"{cause_id}#{n}", kind=_CONSUME, tenant_id=tenant_id, account_id=account_id,
            cause_id=cause_id, cause_type="usage", ts=ts, amount_micros=take, balance_micros=available,
            amount=Micros(take), balance=Micros(available), charged_to=charged_id, grant_id=grant_id,
            model_name=model_name, operation_type=operation_type, api_key_id=api_key_id, usage_labels=labels,
            caller_labels=caller_labels, untagged=untagged))
        n += 1
    if unpaid and dims is None:  # dims: for an overage entry
        dims = _usage_dims(state, message)
    outputs.extend(_charge(state, _Cause(cause_id, ts), charged, amount, unpaid, n, dims if unpaid else None))
    ids[cause_id] = (fingerprint(message), epoch)
    return outputs


_LedgerEntry = out.LedgerEntry
_CONSUME = out.CONSUME


def _find_held(state: TenantState, ref: str, seq: int) -> Held | None:
    for held in state.held.get(ref, ()):
        if held.seq == seq:
            return held
    return None


def _release_held(state: TenantState, ref: str, now: datetime) -> list[Output]:
    """Apply the usage held for ``ref`` (its account just opened or its key was bound), in arrival order.

    Each is judged at ``now`` like a late usage; one that is refused now (e.g. ``no_rate``)
    becomes a rejection and gives its id back.
    """
    outputs: list[Output] = []
    for held in list(state.held.get(ref, ())):
        message = wire.decode(held.raw)
        outputs.extend(apply(state, HeldTaken(cause_id=message.id, cause_type="usage", ts=held.ts, ref=ref,
                                              seq=held.seq)))
        late = message.ts < now
        try:
            account_id = message.account_id or state.keys[message.api_key_id]
            events = _charge_usage(message, state, state.accounts[account_id], now if late else message.ts, late)
        except Rejected as refused:
            outputs.extend(apply(state, IdForgotten(cause_id=message.id, cause_type="usage", ts=held.ts)))
            outputs.append(wire.rejection(message, refused.reason, refused.detail, held.raw))
            continue
        for event in events:
            outputs.extend(apply(state, event))
    return outputs


def expire_all_held(state: TenantState) -> list[Output]:
    """End every grace now (``finops fold`` at the end of its input): held usage is rejected ``unknown_account``."""
    outputs: list[Output] = []
    for ref in sorted(state.held, key=lambda r: state.held[r][0].seq):
        for held in list(state.held.get(ref, ())):
            outputs.extend(apply(state, HeldExpired(cause_id=f"held-end:{held.seq}", cause_type="held_end",
                                                    ts=state.clock or held.ts, timer=None, ref=ref, seq=held.seq)))
    return outputs


def _usage_dims(state: TenantState, message: wire.Usage) -> dict:
    """What a usage's ``consume`` and ``overage`` entries carry: model, operation, key, labels.

    The key registry (wire-v1.md additions): when the key has registry tags, the labels are
    the caller's with the registry's tags over them, and ``caller_labels`` keeps what the
    caller sent ({} for nothing) when that differs; when the tenant requires registered keys
    and the key has no tags, the entries are flagged ``untagged``.
    """
    labels = message.usage_labels or None
    dims = {"model_name": message.model_name, "operation_type": message.operation_type,
            "api_key_id": message.api_key_id, "usage_labels": labels}
    tags = state.key_tags.get(message.api_key_id)
    if tags:
        stamped = {**labels, **tags} if labels else dict(tags)
        if stamped != labels:
            dims["usage_labels"] = stamped
            dims["caller_labels"] = labels or {}
    elif state.policy.require_key_registry:
        dims["untagged"] = True
    return dims


@_decides(wire.Reserve)
def _(message: wire.Reserve, state: TenantState, now: datetime, late: bool) -> list[Event]:
    charged = state.account(message.account_id)
    if message.expires_at <= now:
        raise Rejected(reasons.INVALID_WINDOW, "expires_at is not after the reservation time")
    amount = int(message.credits)
    draws, unpaid = _cascade(state, charged, amount, now)
    if unpaid:
        raise _insufficient(charged, amount, unpaid, "reserve")
    return [Reserved(account_id=charged.id, amount=amount, draws=tuple(draws), expires_at=message.expires_at,
                     **_common(message, late))]


@_decides(wire.Settle)
def _(message: wire.Settle, state: TenantState, now: datetime, late: bool) -> list[Event]:
    hold = state.holds.get(message.reservation_id)
    if hold is None:
        closed = state.closed_holds.get(message.reservation_id)
        if closed is None or closed[1] < now.timestamp() - state.rules.id_horizon_s:
            raise Rejected(reasons.UNKNOWN_RESERVATION, f"no reservation {message.reservation_id!r}")
        if not closed[0].startswith(RELEASED):
            raise Rejected(reasons.RESERVATION_CLOSED, f"reservation {message.reservation_id!r} was settled")
        # wire-v1.md, "A settle after its hold ended": the consumption happened; charge it now
        charged = state.accounts[closed[0][len(RELEASED):]]
        amount = int(message.credits)
        _fits(state.totals.consumed + amount, charged.consumed + amount)
        draws, unpaid = _cascade(state, charged, amount, now)
        common = _common(message, late)
        return [UsageCharged(account_id=charged.id, amount=amount, draws=tuple(draws), overage=unpaid,
                             dims={}, **common),
                HoldClosed(hold_id=message.reservation_id, **common)]
    amount = int(message.credits)
    _fits(state.totals.consumed + amount, state.accounts[hold.account].consumed + amount)
    left = min(amount, hold.amount)
    from_hold: list[Draw] = []
    released: list[Draw] = []
    for account_id, grant_id, take in hold.draws:
        used = min(take, left)
        left -= used
        if used:
            from_hold.append((account_id, grant_id, used))
        if take - used:
            released.append((account_id, grant_id, take - used))
    extra, overage = _cascade(state, state.accounts[hold.account], amount - min(amount, hold.amount), now)
    return [Settled(hold_id=hold.id, account_id=hold.account, amount=amount, from_hold=tuple(from_hold),
                    released=tuple(released), extra=tuple(extra), overage=overage, **_common(message, late))]


# ----------------------------------------------------------------------------- apply


def apply(state: TenantState, event: Event) -> list[Output]:
    """Fold one event into the state; returns the outputs it makes (entries, alerts, blocks)."""
    return _APPLIERS[type(event)](event, state)


def _entry(state: TenantState, event: Event, n: int, kind: str, acct: Account, amount: int, **extra) -> out.LedgerEntry:
    acct.updated = event.ts
    state.balance_outbox.add(acct.id)
    return out.LedgerEntry(entry_id=f"{event.cause_id}#{n}", kind=kind, tenant_id=state.tenant_id,
                           account_id=acct.id, cause_id=event.cause_id, cause_type=event.cause_type, ts=event.ts,
                           amount_micros=amount, balance_micros=acct.available, amount=Micros(amount),
                           balance=Micros(acct.available), late=event.late, **extra)


def _push_timer(state: TenantState, when: datetime, kind: str, ref: str, ref2: str = "") -> None:
    timer = (when, state.next_seq(), kind, ref, ref2)
    heapq.heappush(state.timers, timer)
    state.timer_changes[(when, timer[1])] = timer


def _pop_timer(state: TenantState, event: TimerEvent) -> None:
    if event.timer is None:  # not caused by a timer (expire_all_held)
        return
    popped = heapq.heappop(state.timers)
    assert popped == event.timer, "timers fire in heap order"
    state.timer_changes[(popped[0], popped[1])] = None
    if state.clock is None or event.ts > state.clock:
        state.clock = event.ts


def _new_grant(state: TenantState, acct: Account, grant_id: str, amount: int, *, starts_at=None, ends_at=None,
               on_expiry: str = "expire", source: str | None = None, recurrence: str | None = None,
               expiry: datetime | None = None, inherited: datetime | None = None) -> None:
    """A new grant; ``ends_at`` is the end of its window (or period), ``expiry`` its own expires_at,
    ``inherited`` the earliest expiry of the credits it is made of: it ends at the earliest of the three."""
    if amount == 0:
        return  # an empty grant could never be drawn from; the ledger entry still records the cause
    effective = _earliest(expiry, inherited)
    end = _earliest(ends_at, effective)
    grant = Grant(id=grant_id, remaining=amount, seq=state.next_seq(), starts_at=starts_at, ends_at=end,
                  on_expiry=on_expiry, source=source, recurrence=recurrence,
                  order_key=end.timestamp() if end is not None else NO_END, expiry=effective, inherited=inherited)
    acct.add_grant(grant)
    # a period grant ends with its renewal, unless its credits expire first (or at that instant:
    # pushed before the renewal's timer, this one fires first)
    if end is not None and (recurrence is None or (effective is not None and effective <= ends_at)):
        _push_timer(state, end, GRANT_END, acct.id, grant_id)


def _earliest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _drawn_expiry(acct: Account, grant_ids) -> datetime | None:
    """The earliest effective expiry of these grants of ``acct`` (None: none expires)."""
    wanted = set(grant_ids)
    return _earliest(*(g.expiry for g in acct.grants if g.id in wanted))


def _carried(grant: Grant, when: datetime) -> datetime | None:
    """The expiry credits keep when they leave ``grant`` at ``when``: its effective expiry, or,
    once its own expires_at has passed, what it inherited (spend windows do not travel)."""
    return _earliest(*(t for t in (grant.expiry, grant.inherited) if t is not None and t > when))


def _source_expired(grant: Grant, when: datetime) -> bool:
    """Have the credits this grant was drawn from expired by ``when``? Then they cannot return."""
    return grant.inherited is not None and grant.inherited <= when


# --- budget periods: threshold alerts and hard-cap enforcement


def _severity(threshold: int) -> str:
    return "info" if threshold < 70 else "warning" if threshold < 90 else "critical"


def _check_budget(state: TenantState, acct: Account, event: Event) -> list[Output]:
    """Fire or resolve threshold alerts and block or open a hard cap, after ``acct``'s period changed."""
    used, granted = acct.period_used, acct.period_granted
    state.balance_outbox.add(acct.id)
    if not acct.alerted and not acct.blocked and not acct.limited_rps and (
            granted <= 0 or used < granted and used * 100 < min(acct.thresholds, default=1001) * granted):
        return []  # below every threshold, nothing fired, not blocked: nothing changes (the usual case)
    outputs: list[Output] = []
    critical = _critical_threshold(acct)
    for threshold in acct.thresholds:
        crossed = granted > 0 and used * 100 >= threshold * granted
        if crossed == (threshold in acct.alerted):
            continue
        if crossed:
            acct.alerted.append(threshold)
        else:
            acct.alerted.remove(threshold)
        hard_block = crossed and threshold >= 100 and acct.cap == "hard"
        if hard_block:
            action = {"type": "block"}
        elif crossed and threshold == critical and acct.critical_rps:
            action = {"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": acct.critical_rps}}
        else:
            action = None
        outputs.append(out.Alert(
            event=out.ALERT_EVENT,
            id=f"{event.cause_id}/{acct.id}/threshold/{threshold}/{'firing' if crossed else 'resolved'}",
            tenant_id=state.tenant_id, account_id=acct.id, type="threshold",
            severity=_severity(threshold) if crossed else "info", threshold=threshold,
            current_usage=credits_str(used), monthly_allocation=credits_str(granted), ts=event.ts,
            status="firing" if crossed else "resolved", period=acct.period,
            action=action))
    blocked = acct.hard_capped(state.clock or event.ts) and granted > 0 and used >= granted
    limited = acct.critical_rps if critical is not None and critical in acct.alerted else 0
    if blocked != acct.blocked or limited != acct.limited_rps:
        acct.blocked = blocked
        acct.limited_rps = limited
        outputs.append(_enforcement(state, acct, event.ts))
    return outputs



def _critical_threshold(acct: Account) -> int | None:
    """The threshold whose alert carries the account's critical action: its lowest critical one (>= 90 %)."""
    return min((t for t in acct.thresholds if t >= 90), default=None)


def _enforcement(state: TenantState, acct: Account, ts: datetime) -> out.Enforcement:
    """The ``finops.enforcement.v1`` record of ``acct`` now: blocked or open, the keys bound under
    it, and, while its critical action is in force, the rate limit of each key whose registry
    ``env`` is not ``prod`` (a key without an ``env`` tag counts as non-prod)."""
    keys = sorted(k for k, owner in state.keys.items()
                  if any(a.id == acct.id for a in state.ancestors(state.accounts[owner])))
    rate_limits = None
    if acct.limited_rps:
        key_tags = state.key_tags
        rate_limits = {k: acct.limited_rps for k in keys if key_tags.get(k, _NO_TAGS).get("env") != "prod"}
    if acct.blocked:
        reason = "hard cap reached"
    elif rate_limits is not None:
        reason = "critical threshold reached: non-prod keys rate-limited"
    else:
        reason = "within budget"
    return out.Enforcement(tenant_id=state.tenant_id, account_id=acct.id, state="blocked" if acct.blocked else "open",
                           reason=reason, api_key_ids=keys, ts=ts, rate_limits=rate_limits)


_NO_TAGS: dict[str, str] = {}


def _record_usage(state: TenantState, charged: Account, amount: int, event: Event) -> list[Output]:
    outputs: list[Output] = []
    accounts = state.accounts
    acct: Account | None = charged
    balance_outbox = state.balance_outbox
    while acct is not None:
        acct.period_used += amount
        balance_outbox.add(acct.id)
        if acct.period_granted or acct.alerted:
            outputs.extend(_check_budget(state, acct, event))
        acct = accounts[acct.parent_id] if acct.parent_id is not None else None
    return outputs


def _spendable_part(acct: Account, event: Allocated) -> int:
    """The part of an allocation's own grant that ``spendable`` counted at its time (0 before its window)."""
    grant = acct.grant(event.cause_id)
    return grant.remaining if grant is not None and grant.spendable_at(event.ts) else 0


def _start_period(acct: Account, period: str, granted: int) -> None:
    acct.period = period
    acct.period_granted = granted
    acct.period_used = 0


# --- time


@_applies(IdRecorded)
def _(event: IdRecorded, state: TenantState) -> list[Output]:
    state.ids[event.cause_id] = (event.fingerprint, event.ts.timestamp())
    return []


@_applies(IdForgotten)
def _(event: IdForgotten, state: TenantState) -> list[Output]:
    state.ids.pop(event.cause_id, None)
    return []


@_applies(UsageHeld)
def _(event: UsageHeld, state: TenantState) -> list[Output]:
    held = Held(ref=event.ref, seq=state.next_seq(), ts=event.ts, raw=event.raw)
    state.held.setdefault(event.ref, []).append(held)
    state.held_changes[held.seq] = held
    _push_timer(state, event.grace_end, HELD_END, event.ref, str(held.seq))
    return []


def _unhold(state: TenantState, ref: str, seq: int) -> Held:
    queue = state.held[ref]
    for i, held in enumerate(queue):
        if held.seq == seq:
            del queue[i]
            break
    else:
        raise KeyError((ref, seq))
    if not queue:
        del state.held[ref]
    state.held_changes[seq] = None
    return held


@_applies(HeldTaken)
def _(event: HeldTaken, state: TenantState) -> list[Output]:
    _unhold(state, event.ref, event.seq)
    return []


@_applies(HeldExpired)
def _(event: HeldExpired, state: TenantState) -> list[Output]:
    _pop_timer(state, event)
    held = _unhold(state, event.ref, event.seq)
    message = wire.decode(held.raw)
    state.ids.pop(message.id, None)  # a rejected message does not use up its id
    what = f"account {event.ref[2:]!r} was not opened" if event.ref.startswith("a:") else \
        f"api key {event.ref[2:]!r} was not bound"
    return [wire.rejection(message, reasons.UNKNOWN_ACCOUNT,
                           f"{what} within {state.rules.unknown_account_grace_s:g} s of event time", held.raw)]


@_applies(TimerDropped)
def _(event: TimerDropped, state: TenantState) -> list[Output]:
    _pop_timer(state, event)
    return []


@_applies(GrantEnded)
def _(event: GrantEnded, state: TenantState) -> list[Output]:
    _pop_timer(state, event)
    acct = state.accounts[event.account_id]
    if event.recurrence is not None:
        del state.recurring[event.recurrence]
        state.dirty.add(("recurring", event.recurrence))
    if not event.amount:
        return []
    acct.take(event.grant_id, event.amount)
    outputs: list[Output] = [_entry(state, event, 0, out.EXPIRE, acct, event.amount, grant_id=event.grant_id)]
    if event.returned_to is None:
        state.totals.expired += event.amount
    else:
        target = state.accounts[event.returned_to]
        _new_grant(state, target, event.cause_id, event.amount, source=acct.id, inherited=event.carried_expiry)
        outputs.append(_entry(state, event, 1, out.CREDIT, target, event.amount, grant_id=event.cause_id))
    return outputs


@_applies(PeriodRenewed)
def _(event: PeriodRenewed, state: TenantState) -> list[Output]:
    _pop_timer(state, event)
    rec = state.recurring[event.recurrence]
    child, parent = state.accounts[rec.child], state.accounts[rec.parent]
    outputs: list[Output] = []
    n = 0
    if event.returned:
        child.take(event.old_grant, event.returned)
        return_id = f"{event.cause_id}:return"
        outputs.append(_entry(state, event, n, out.RECLAIM, child, event.returned, grant_id=event.old_grant))
        _new_grant(state, parent, return_id, event.returned, source=child.id, inherited=event.returned_expiry)
        outputs.append(_entry(state, event, n + 1, out.CREDIT, parent, event.returned, grant_id=return_id))
        n += 2
    if event.carry:  # moves from the old period's grant into the new one: no balance movement
        child.take(event.old_grant, event.carry)
    drawn = 0
    for grant_id, amount in event.draws:
        parent.take(grant_id, amount)
        drawn += amount
    if drawn:
        outputs.append(_entry(state, event, n, out.ALLOCATION_OUT, parent, drawn))
        n += 1
    _new_grant(state, child, event.new_grant, event.carry + drawn, starts_at=event.ts, ends_at=event.ends_at,
               on_expiry=rec.on_expiry, source=parent.id, recurrence=rec.id, inherited=event.inherited)
    if drawn:
        outputs.append(_entry(state, event, n, out.ALLOCATION_IN, child, drawn, grant_id=event.new_grant))
    rec.grant_id = event.new_grant
    state.dirty.add(("recurring", rec.id))
    _push_timer(state, event.ends_at, RENEW, rec.id)
    if child.period != event.period:
        # The period budget (wire-v1.md): what the account can spend at the period's start
        # (this renewal's grant, one-time remainders), plus everything granted during it;
        # another allocation renewing at the same boundary adds its new grant.
        _start_period(child, event.period, child.spendable(event.ts))
    else:
        child.period_granted += event.carry + drawn
    state.balance_outbox.add(child.id)
    outputs.extend(_check_budget(state, child, event))
    return outputs


@_applies(HoldReleased)
def _(event: HoldReleased, state: TenantState) -> list[Output]:
    _pop_timer(state, event)
    hold = state.holds.pop(event.hold_id)
    state.dirty.add(("hold", hold.id))
    state.closed_holds[hold.id] = (f"{RELEASED}{hold.account}", event.ts.timestamp())
    charged = state.accounts[hold.account]
    charged.reserved -= hold.amount
    state.balance_outbox.add(charged.id)
    return _give_back(state, event, hold.draws, hold, first=0)


def _give_back(state: TenantState, event: Event, draws, hold: Hold, first: int) -> list[Output]:
    """Released credits of a hold go back to the grants they were taken from (wire-v1.md,
    "Credits never outlive their source"), under those grants' windows and expiry: into the
    grant if it still holds credits, into the grant made again with its terms if it was
    spent to zero but has not ended, and if it has ended they expire at once (or return to
    its source, when it says ``on_expiry: return``)."""
    outputs: list[Output] = []
    n = first
    terms = {g.id: g for g in hold.terms}
    now = event.ts
    for account_id, grant_id, amount in draws:
        acct = state.accounts[account_id]
        grant = acct.grant(grant_id)
        term = terms.get(grant_id)
        ended = grant is None and term is not None and term.ends_at is not None and term.ends_at <= now
        if grant is not None:
            grant.remaining += amount
            acct.available += amount
        elif ended:
            acct.available += amount  # for the release entry's balance; out again with the expiry below
        else:  # spent to zero meanwhile, not ended: the grant again, with its terms
            again = copy.copy(term) if term is not None else Grant(id=grant_id, remaining=0, seq=state.next_seq())
            again.remaining = amount
            acct.add_grant(again)
        outputs.append(_entry(state, event, n, out.RELEASE, acct, amount, charged_to=hold.account,
                              grant_id=grant_id, hold_id=hold.id))
        n += 1
        if ended:
            acct.available -= amount
            more = _ended_release(state, event, acct, term, amount, n)
            outputs.extend(more)
            n += len(more)
    return outputs


def _ended_release(state: TenantState, event: Event, acct: Account, term: Grant, amount: int, n: int) -> list[Output]:
    """Credits given back to a grant that has ended: they expire at once, or return to its source."""
    outputs: list[Output] = [_entry(state, event, n, out.EXPIRE, acct, amount, grant_id=term.id)]
    returns = term.on_expiry == "return" and term.source is not None and not _source_expired(term, event.ts)
    if not returns:
        state.totals.expired += amount
        return outputs
    target = state.accounts[term.source]
    grant_id = f"{event.cause_id}:return:{n + 1}"
    _new_grant(state, target, grant_id, amount, source=acct.id, inherited=_carried(term, event.ts))
    outputs.append(_entry(state, event, n + 1, out.CREDIT, target, amount, grant_id=grant_id))
    return outputs


@_applies(OverrideEnded)
def _(event: OverrideEnded, state: TenantState) -> list[Output]:
    _pop_timer(state, event)
    acct = state.accounts[event.account_id]
    acct.override_until = None
    state.balance_outbox.add(acct.id)
    return _check_budget(state, acct, event)


# --- messages


@_applies(Purchased)
def _(event: Purchased, state: TenantState) -> list[Output]:
    root = state.accounts[state.tenant_id]
    _new_grant(state, root, event.cause_id, event.amount, expiry=event.expires_at)
    state.totals.purchased += event.amount
    return [_entry(state, event, 0, out.CREDIT, root, event.amount, grant_id=event.cause_id)]


@_applies(AccountOpened)
def _(event: AccountOpened, state: TenantState) -> list[Output]:
    state.accounts[event.account_id] = Account(event.account_id, event.kind, event.parent_id,
                                               fallback=event.fallback, name=event.name, updated=event.ts)
    state.balance_outbox.add(event.account_id)
    return []


@_applies(Allocated)
def _(event: Allocated, state: TenantState) -> list[Output]:
    parent, child = state.accounts[event.from_account], state.accounts[event.to_account]
    for grant_id, amount in event.draws:
        parent.take(grant_id, amount)
    recurrence = event.cause_id if event.rollover_pct is not None else None
    _new_grant(state, child, event.cause_id, event.amount, starts_at=event.starts_at, ends_at=event.ends_at,
               on_expiry=event.on_expiry, source=parent.id, recurrence=recurrence, expiry=event.expiry,
               inherited=event.inherited)
    if event.cap is not None:
        child.cap = event.cap
    if event.on_critical is not None:
        child.critical_rps = event.on_critical
    child.thresholds = event.thresholds
    state.balance_outbox.add(child.id)
    if recurrence is not None:
        state.recurring[recurrence] = Recurring(
            id=recurrence, parent=parent.id, child=child.id, amount=event.amount,
            rollover_pct=event.rollover_pct, grant_id=event.cause_id, ends_at=event.recurrence_ends_at,
            on_expiry=event.on_expiry)
        state.dirty.add(("recurring", recurrence))
        _push_timer(state, event.ends_at, RENEW, recurrence)
    if event.period and event.period != child.period:
        # A monthly allocation starts monthly periods: the budget is what the account could
        # spend when it started (one-time remainders count), plus what is granted during it.
        _start_period(child, event.period, child.spendable(event.ts) - _spendable_part(child, event))
    child.period_granted += event.amount
    outputs: list[Output] = [
        _entry(state, event, 0, out.ALLOCATION_OUT, parent, event.amount),
        _entry(state, event, 1, out.ALLOCATION_IN, child, event.amount, grant_id=event.cause_id)]
    outputs.extend(_check_budget(state, child, event))
    return outputs


@_applies(Reclaimed)
def _(event: Reclaimed, state: TenantState) -> list[Output]:
    child, parent = state.accounts[event.from_account], state.accounts[event.to_account]
    for grant_id, amount in event.draws:
        child.take(grant_id, amount)
    _new_grant(state, parent, event.cause_id, event.amount, source=child.id, inherited=event.inherited)
    return [_entry(state, event, 0, out.RECLAIM, child, event.amount),
            _entry(state, event, 1, out.CREDIT, parent, event.amount, grant_id=event.cause_id)]


def _draw_entries(state: TenantState, event: Event, draws, charged: Account, kind: str, first: int,
                  hold_id: str | None = None, take: bool = True, dims: dict | None = None) -> list[Output]:
    outputs: list[Output] = []
    accounts = state.accounts
    dims = dims or {}
    for n, (account_id, grant_id, amount) in enumerate(draws, start=first):
        acct = accounts[account_id]
        if take:
            acct.take(grant_id, amount)
        outputs.append(_entry(state, event, n, kind, acct, amount, charged_to=charged.id, grant_id=grant_id,
                              hold_id=hold_id, **dims))
    return outputs


def _charge(state: TenantState, event: Event, charged: Account, amount: int, overage: int, n: int,
            dims: dict | None = None) -> list[Output]:
    """Book ``amount`` as consumed by ``charged`` (``overage`` of it unfunded); entry ``n`` is next."""
    charged.consumed += amount
    charged.updated = event.ts
    state.balance_outbox.add(charged.id)  # its consumed changed, wherever the credits came from
    state.totals.consumed += amount
    outputs: list[Output] = []
    if overage:
        charged.overage += overage
        state.totals.overage += overage
        outputs.append(_entry(state, event, n, out.OVERAGE, charged, overage, **(dims or {})))
    outputs.extend(_record_usage(state, charged, amount, event))
    at = event.ts.timestamp()
    key = f"{charged.id}\x1f{int(at // 3600 * 3600)}"
    pending = state.spend_outbox.get(key)
    if pending is None:
        state.spend_outbox[key] = [amount, 1, at]
    else:
        pending[0] += amount
        pending[1] += 1
        if at > pending[2]:
            pending[2] = at
    state.spend_outbox_dirty.add(key)
    return outputs


@_applies(UsageCharged)
def _(event: UsageCharged, state: TenantState) -> list[Output]:
    charged = state.accounts[event.account_id]
    if event.remainder is not None:
        charged.remainders[event.remainder[0]] = event.remainder[1]
    outputs = _draw_entries(state, event, event.draws, charged, out.CONSUME, 0, dims=event.dims)
    outputs.extend(_charge(state, event, charged, event.amount, event.overage, len(event.draws), event.dims))
    return outputs


@_applies(Reserved)
def _(event: Reserved, state: TenantState) -> list[Output]:
    charged = state.accounts[event.account_id]
    terms = []
    for account_id, grant_id, _amount in event.draws:
        grant = state.accounts[account_id].grant(grant_id)
        if grant is not None and all(t.id != grant_id for t in terms):
            term = copy.copy(grant)
            term.remaining = 0
            terms.append(term)
    outputs = _draw_entries(state, event, event.draws, charged, out.RESERVE, 0, hold_id=event.cause_id)
    charged.reserved += event.amount
    state.balance_outbox.add(charged.id)
    state.holds[event.cause_id] = Hold(id=event.cause_id, account=charged.id, amount=event.amount,
                                       draws=list(event.draws), expires_at=event.expires_at, terms=terms)
    state.dirty.add(("hold", event.cause_id))
    _push_timer(state, event.expires_at, HOLD_END, event.cause_id)
    return outputs


@_applies(Settled)
def _(event: Settled, state: TenantState) -> list[Output]:
    hold = state.holds.pop(event.hold_id)
    state.dirty.add(("hold", hold.id))
    state.closed_holds[hold.id] = ("settled", event.ts.timestamp())
    charged = state.accounts[hold.account]
    charged.reserved -= hold.amount
    # from the hold: already taken from the grants at reserve time
    outputs = _draw_entries(state, event, event.from_hold, charged, out.CONSUME, 0, hold_id=hold.id, take=False)
    n = len(outputs)
    outputs.extend(_give_back(state, event, event.released, hold, first=n))
    n = len(outputs)
    outputs.extend(_draw_entries(state, event, event.extra, charged, out.CONSUME, n))
    outputs.extend(_charge(state, event, charged, event.amount, event.overage, n + len(event.extra)))
    return outputs


@_applies(HoldClosed)
def _(event: HoldClosed, state: TenantState) -> list[Output]:
    state.closed_holds[event.hold_id] = ("settled", event.ts.timestamp())
    return []


@_applies(MembersSet)
def _(event: MembersSet, state: TenantState) -> list[Output]:
    state.accounts[event.account_id].members = frozenset(event.members)
    state.balance_outbox.add(event.account_id)
    return []


@_applies(KeyBound)
def _(event: KeyBound, state: TenantState) -> list[Output]:
    key = event.api_key_id
    before = state.keys.get(key)
    old_tags = state.key_tags.get(key)
    state.keys[key] = event.account_id
    if event.tags:
        state.key_tags[key] = dict(event.tags)
    else:
        state.key_tags.pop(key, None)
    state.dirty.add(("key", key))
    if before == event.account_id and old_tags == state.key_tags.get(key):
        return []
    # The key joins (or leaves, or changes env under) blocked or rate-limited accounts: their
    # enforcement records name their keys, so they are published again.
    outputs: list[Output] = []
    seen: set[str] = set()
    for owner in (before, event.account_id):
        if owner is None:
            continue
        for acct in state.ancestors(state.accounts[owner]):
            if acct.id not in seen and (acct.blocked or acct.limited_rps):
                seen.add(acct.id)
                outputs.append(_enforcement(state, acct, event.ts))
    return outputs


@_applies(PolicySet)
def _(event: PolicySet, state: TenantState) -> list[Output]:
    if event.require_key_registry is not None:
        state.policy.require_key_registry = event.require_key_registry
    state.dirty.add(("policy", ""))
    return []


@_applies(RatesSet)
def _(event: RatesSet, state: TenantState) -> list[Output]:
    state.rates.update(event.rates)
    state.dirty.add(("rates", ""))
    return []


@_applies(CapOverridden)
def _(event: CapOverridden, state: TenantState) -> list[Output]:
    acct = state.accounts[event.account_id]
    acct.override_until = event.until
    state.balance_outbox.add(acct.id)
    _push_timer(state, event.until, OVERRIDE_END, acct.id)
    return _check_budget(state, acct, event)


# ----------------------------------------------------------------------------- the ledger


class Ledger:
    """All tenants' states; the one entry point for folding messages (fold and the runner).

    ``new_tenant`` makes the state of a tenant seen for the first time (the runner's gives
    it id memories in its partition's state store); ``rules`` are the configurable rules.
    """

    __slots__ = ("tenants", "rules", "new_tenant", "fast")

    def __init__(self, rules: Rules = DEFAULT_RULES,
                 new_tenant: Callable[[str], TenantState] | None = None, *, fast: bool = True) -> None:
        self.tenants: dict[str, TenantState] = {}
        self.rules = rules
        self.new_tenant = new_tenant
        self.fast = fast  # False: every message takes the general path (the fast path's reference)

    def tenant(self, tenant_id: str) -> TenantState:
        """The state of ``tenant_id``, made (by ``new_tenant``, with this ledger's rules) on first sight."""
        state = self.tenants.get(tenant_id)
        if state is None:
            state = self.new_tenant(tenant_id) if self.new_tenant is not None else TenantState(tenant_id)
            state.rules = self.rules
            self.tenants[tenant_id] = state
        return state

    def handle(self, message: wire.Message, raw: bytes | None = None,
               stored_at: datetime | None = None) -> tuple[list[Output], Rejected | None]:
        """Advance the tenant's time to the message, then decide and apply it.

        ``stored_at`` is the time Kafka stored the message (the record's LogAppendTime), or
        None where there is none (a file without ``--now``): a message more than
        ``rules.max_future_skew_s`` ahead of it is ``ts_in_future`` and moves no clock.
        Returns every output and, if the message was refused, why (its own events are
        then not applied; what time caused is).
        """
        if self.fast and type(message) is wire.Usage:
            state = self.tenants.get(message.tenant_id)
            if state is not None and self.in_future(message, stored_at) is None:
                produced = charge_common_usage(state, message)
                if produced is not None:
                    return produced, None
        future = self.in_future(message, stored_at)
        if future is not None:
            return [], future
        state = self.tenant(message.tenant_id)
        outputs = advance(state, message.ts)
        try:
            events = decide(state, message, raw)
        except Rejected as refused:
            return outputs, refused
        except (ArithmeticError, ValueError, OverflowError) as exc:  # no input may stop the fold
            return outputs, Rejected(reasons.INVALID, f"cannot be applied: {type(exc).__name__}: {exc}")
        for event in events:
            outputs.extend(apply(state, event))
            kind = type(event)
            if kind is AccountOpened and state.held:
                outputs.extend(_release_held(state, f"a:{event.account_id}", state.clock or event.ts))
            elif kind is KeyBound and state.held:
                outputs.extend(_release_held(state, f"k:{event.api_key_id}", state.clock or event.ts))
        return outputs, None

    def in_future(self, message: wire.Message, stored_at: datetime | None) -> Rejected | None:
        """``ts_in_future`` when ``message`` is more than the allowed skew ahead of the time it was stored
        (wire-v1.md, "Far-future time"); such a message touches no state, not even its tenant's clock."""
        if stored_at is None or (message.ts - stored_at).total_seconds() <= self.rules.max_future_skew_s:
            return None
        return Rejected(reasons.TS_IN_FUTURE, f"ts {message.ts.isoformat()} is more than "
                                              f"{self.rules.max_future_skew_s:g} s ahead of the time it was stored, "
                                              f"{stored_at.isoformat()}")

    def finish(self) -> list[Output]:
        """The end of the input ends every grace (``finops fold``): held usage is rejected ``unknown_account``."""
        outputs: list[Output] = []
        for tenant_id in sorted(self.tenants):
            outputs.extend(expire_all_held(self.tenants[tenant_id]))
        return outputs


def balance_of(state: TenantState, acct: Account) -> out.Balance:
    """The ``finops.balances.v1`` record of ``acct`` now: its own balances in micro-credits and as
    decimal credit strings, stamped with the event time of its last change."""
    return out.Balance(
        tenant_id=state.tenant_id, account_id=acct.id, kind=acct.kind, parent_id=acct.parent_id,
        available_micros=acct.available, consumed_micros=acct.consumed, reserved_micros=acct.reserved,
        overage_micros=acct.overage, available=credits_str(acct.available),
        consumed=credits_str(acct.consumed), reserved=credits_str(acct.reserved),
        overage=credits_str(acct.overage), ts=acct.updated)
