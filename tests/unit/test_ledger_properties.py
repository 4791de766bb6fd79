"""Invariants of the ledger over random message sequences (hypothesis)."""

from __future__ import annotations

import os
from datetime import datetime

import msgspec
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from finops.processors.fold import FoldResult
from finops.processors.state import DEFAULT_RULES
from finops.processors.state import TenantState
from ledger_helpers import Script, at, conservation_holds

EXAMPLES = int(os.environ.get("FINOPS_HYPOTHESIS_EXAMPLES", "500"))
ACCOUNTS = ["acme", "org", "team", "alice", "bob", "pool"]
PARENTS = {"org": "acme", "team": "org", "alice": "team", "bob": "team", "pool": "org"}

amounts = st.one_of(st.integers(0, 500), st.decimals(0, 500, places=6).map(str))
days = st.floats(0, 40, allow_nan=False)


@st.composite
def scripts(draw) -> list[bytes]:
    """Random messages of one tenant over ~40 days, every command of wire v1 included."""
    s = Script()
    holds: list[str] = []
    clock = 0.0
    if draw(st.integers(0, 9)):  # mostly: a funded tree first, so that most messages are accepted
        s.purchase(draw(st.integers(100, 5000)), ts=at())
        for child in PARENTS:
            s.open(child, PARENTS[child], fallback=draw(st.booleans()), ts=at())
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["purchase", "open", "allocate", "allocate", "allocate", "reclaim", "use", "use",
                                     "use", "use", "members", "tick", "reserve", "settle", "override", "rates",
                                     "bind"]))
        # time mostly moves on (by up to 12 days, so months turn), sometimes a message is late
        clock += draw(st.floats(0, 12, allow_nan=False))
        ts = at(days=clock - draw(st.sampled_from([0, 0, 0, 0, 1, 5])))
        child = draw(st.sampled_from(list(PARENTS)))
        if kind == "purchase":
            expires = draw(st.none() | days.map(lambda d: at(days=clock + d)))
            s.purchase(draw(amounts), ts=ts, **({"expires_at": expires} if expires else {}))
        elif kind == "open":
            s.open(child, PARENTS[child], fallback=draw(st.booleans()), ts=ts)
        elif kind == "allocate":
            extra: dict = {"cap": draw(st.sampled_from(["soft", "hard"]))}
            shape = draw(st.sampled_from(["once", "window", "monthly"]))
            if shape == "window":
                start = clock + draw(st.floats(-5, 10))
                extra.update(starts_at=at(days=start), ends_at=at(days=start + draw(st.floats(0.1, 10))),
                             on_expiry=draw(st.sampled_from(["expire", "return"])))
            elif shape == "monthly":
                extra["recurrence"] = {"every": "month", "rollover_pct": draw(st.integers(0, 100))}
                if draw(st.booleans()):
                    extra["expires_at"] = at(days=clock + draw(st.floats(1, 90)))
            s.allocate(PARENTS[child], child, draw(amounts), ts=ts, **extra)
        elif kind == "reclaim":
            if draw(st.booleans()):
                s.reclaim(child, PARENTS[child], all=True, ts=ts)
            else:
                s.reclaim(child, PARENTS[child], draw(amounts), ts=ts)
        elif kind == "use":
            if draw(st.booleans()):
                s.use(draw(st.sampled_from(ACCOUNTS)), draw(amounts), ts=ts)
            else:  # priced by the rate card, or charged through a bound key
                s.use(None if draw(st.booleans()) else draw(st.sampled_from(ACCOUNTS)), None, ts=ts,
                      api_key_id=draw(st.sampled_from(["key-1", "key-2"])), units_consumed=draw(st.integers(0, 10**6)))
        elif kind == "members":
            s.msg("set_members", account_id="pool", members=draw(st.lists(st.sampled_from(ACCOUNTS), max_size=2)),
                  ts=ts)
        elif kind == "reserve":
            line = s.msg("reserve", account_id=draw(st.sampled_from(ACCOUNTS)), credits=draw(amounts), ts=ts,
                         expires_at=at(days=clock + draw(st.floats(-1, 10))))
            holds.append(msgspec.json.decode(line)["id"])
        elif kind == "settle" and holds:
            s.msg("settle", reservation_id=draw(st.sampled_from(holds)), credits=draw(amounts), ts=ts)
        elif kind == "override":
            s.msg("override_cap", account_id=draw(st.sampled_from(ACCOUNTS)), until=at(days=clock + draw(days)),
                  approvals=draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3)), ts=ts)
        elif kind == "rates":
            s.msg("set_rates", rates=[{"model_name": "gpt-4o", "operation_type": "chat",
                                       "credits_per_unit": str(draw(st.decimals(0, 1, places=9)))}], ts=ts)
        elif kind == "bind":
            s.msg("bind_key", api_key_id=draw(st.sampled_from(["key-1", "key-2"])),
                  account_id=draw(st.sampled_from(ACCOUNTS)), ts=ts)
        else:
            s.tick(ts=ts)
    return s.lines


def fold(lines: list[bytes]) -> FoldResult:
    result = FoldResult(keep_outputs=True)
    for line in lines:
        result.feed(line)
    result.finish()
    return result


common = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(scripts())
def test_conservation(lines):
    assert conservation_holds(fold(lines))


@common
@given(scripts())
def test_no_negative_available(lines):
    r = fold(lines)
    for state in r.ledger.tenants.values():
        for acct in state.accounts.values():
            assert acct.available >= 0
            assert all(g.remaining > 0 for g in acct.grants)
            assert acct.available == sum(g.remaining for g in acct.grants)


@common
@given(scripts())
def test_same_input_same_output(lines):
    assert fold(lines).summary() == fold(lines).summary()


@common
@given(scripts(), st.data())
def test_duplicating_any_accepted_line_changes_nothing(lines, data):
    """A resend of an applied message within the id memory is a no-op. (A refused one is
    judged again: wire v1; one resent after DEFAULT_RULES.id_horizon_s of event time is judged as new.)"""
    original = fold(lines)
    refused = {r.id for r in original.rejected}
    accepted = [i for i, line in enumerate(lines) if msgspec.json.decode(line)["id"] not in refused]
    assume(accepted)
    i = data.draw(st.sampled_from(accepted))
    j = data.draw(st.integers(i + 1, len(lines)))
    times = [datetime.fromisoformat(msgspec.json.decode(line)["ts"]).timestamp() for line in lines]
    assume(max(times[:j]) - times[i] < DEFAULT_RULES.id_horizon_s)
    again = fold(lines[:j] + [lines[i]] + lines[j:])
    assert again.summary()["accounts"] == original.summary()["accounts"]
    assert [r.id for r in again.rejected] == [r.id for r in original.rejected]


@common
@given(scripts())
def test_every_changed_account_is_reported_as_touched(lines):
    """The processor publishes balances of touched accounts only: none may be missed."""
    from finops.schemas import wire

    r = FoldResult(keep_outputs=True)
    for line in lines:
        state = r.ledger.tenant("acme")
        before = {a.id: (a.available, a.consumed, a.reserved, a.overage) for a in state.accounts.values()}
        state.drain_balance_outbox()
        r.feed(line)
        after = {a.id: (a.available, a.consumed, a.reserved, a.overage) for a in state.accounts.values()}
        changed = {k for k, v in after.items() if before.get(k) != v}
        assert changed <= state.balance_outbox, wire.decode(line)


@common
@given(scripts())
def test_folding_the_ledger_entries_gives_the_balances(lines):
    """finops.ledger.v1 alone is enough to rebuild every balance (it is the event-sourced truth)."""
    from collections import defaultdict

    from finops.schemas.outputs import LedgerEntry

    result = fold(lines)
    available: dict = defaultdict(int)
    consumed: dict = defaultdict(int)
    reserved: dict = defaultdict(int)
    overage: dict = defaultdict(int)
    sign = {"credit": 1, "allocation_in": 1, "release": 1, "refund": 1, "allocation_out": -1, "consume": -1,
            "reserve": -1, "reclaim": -1, "expire": -1, "overage": 0}
    for e in result.outputs:
        if not isinstance(e, LedgerEntry):
            continue
        a = e.amount_micros
        if e.kind == "consume" and e.hold_id:  # settled from a hold: taken at reserve time
            reserved[e.charged_to] -= a
            consumed[e.charged_to] += a
            continue
        available[e.account_id] += sign[e.kind] * a
        assert available[e.account_id] == e.balance_micros
        if e.kind == "consume":
            consumed[e.charged_to] += a
        elif e.kind == "overage":
            consumed[e.account_id] += a
            overage[e.account_id] += a
        elif e.kind == "reserve":
            reserved[e.charged_to] += a
        elif e.kind == "release":
            reserved[e.charged_to] -= a
    for acct in result.ledger.tenants.get("acme", TenantState("acme")).accounts.values():
        assert (available[acct.id], consumed[acct.id], reserved[acct.id], overage[acct.id]) == (
            acct.available, acct.consumed, acct.reserved, acct.overage), acct.id
