"""Invariants of the ledger over random message sequences (hypothesis)."""

from __future__ import annotations

import os

import msgspec
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from finops.processors.fold import FoldResult
from ledger_helpers import Script, at, conservation_holds

EXAMPLES = int(os.environ.get("FINOPS_HYPOTHESIS_EXAMPLES", "500"))
ACCOUNTS = ["acme", "org", "team", "alice", "bob", "pool"]
PARENTS = {"org": "acme", "team": "org", "alice": "team", "bob": "team", "pool": "org"}

amounts = st.one_of(st.integers(0, 500), st.decimals(0, 500, places=6).map(str))
days = st.floats(0, 40, allow_nan=False)


@st.composite
def scripts(draw) -> list[bytes]:
    s = Script()
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["purchase", "open", "allocate", "reclaim", "use", "use", "use", "members",
                                     "tick"]))
        ts = at(days=draw(days))
        if kind == "purchase":
            expires = draw(st.none() | days.map(lambda d: at(days=d)))
            s.purchase(draw(amounts), ts=ts, **({"expires_at": expires} if expires else {}))
        elif kind == "open":
            child = draw(st.sampled_from(list(PARENTS)))
            s.open(child, PARENTS[child], fallback=draw(st.booleans()), ts=ts)
        elif kind == "allocate":
            child = draw(st.sampled_from(list(PARENTS)))
            window = {}
            if draw(st.booleans()):
                start = draw(days)
                window = {"starts_at": at(days=start), "ends_at": at(days=start + draw(st.floats(0.1, 10))),
                          "on_expiry": draw(st.sampled_from(["expire", "return"]))}
            s.allocate(PARENTS[child], child, draw(amounts), ts=ts, **window)
        elif kind == "reclaim":
            child = draw(st.sampled_from(list(PARENTS)))
            if draw(st.booleans()):
                s.reclaim(child, PARENTS[child], all=True, ts=ts)
            else:
                s.reclaim(child, PARENTS[child], draw(amounts), ts=ts)
        elif kind == "use":
            s.use(draw(st.sampled_from(ACCOUNTS)), draw(amounts), ts=ts)
        elif kind == "members":
            s.msg("set_members", account_id="pool", members=draw(st.lists(st.sampled_from(ACCOUNTS), max_size=2)),
                  ts=ts)
        else:
            s.tick(ts=ts)
    return s.lines


def fold(lines: list[bytes]) -> FoldResult:
    result = FoldResult()
    for line in lines:
        result.feed(line)
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
    for state in r.book.tenants.values():
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
    """A resend of an applied message is a no-op. (A refused one is judged again: wire v1.)"""
    original = fold(lines)
    refused = {r.id for r in original.rejected}
    accepted = [i for i, line in enumerate(lines) if msgspec.json.decode(line)["id"] not in refused]
    assume(accepted)
    i = data.draw(st.sampled_from(accepted))
    j = data.draw(st.integers(i + 1, len(lines)))
    again = fold(lines[:j] + [lines[i]] + lines[j:])
    assert again.summary()["accounts"] == original.summary()["accounts"]
    assert [r.id for r in again.rejected] == [r.id for r in original.rejected]


@common
@given(scripts())
def test_every_changed_account_is_reported_as_touched(lines):
    """The processor publishes balances of touched accounts only: none may be missed."""
    from finops.schemas import wire

    r = FoldResult()
    for line in lines:
        state = r.book.tenant("acme")
        before = {a.id: (a.available, a.consumed, a.reserved, a.overage) for a in state.accounts.values()}
        state.drain_touched()
        r.feed(line)
        after = {a.id: (a.available, a.consumed, a.reserved, a.overage) for a in state.accounts.values()}
        changed = {k for k, v in after.items() if before.get(k) != v}
        assert changed <= state.touched, wire.decode(line)
