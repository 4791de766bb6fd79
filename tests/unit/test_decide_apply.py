"""The pure ledger's two steps, called directly (processors/ledger.py, docs/ledger.md).

``decide(state, message)`` reads a tenant's state and returns the events the message causes
(or raises ``Rejected``); ``apply(state, event)`` folds one event into the state and returns
its outputs (ledger entries, alerts, enforcement). ``advance(state, ts)`` lets event time
pass first, as the ledger does before every message. Each test reads given / when / then;
amounts are micro-credits (``c("1.5")`` is 1,500,000).
"""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from ledger_helpers import T0, Script, at, c

from finops.processors.events import (
    AccountOpened, Allocated, Event, IdRecorded, Purchased, Reserved, Settled, UsageCharged,
)
from finops.processors.ledger import Output, advance, apply, decide
from finops.processors.state import Rejected, TenantState
from finops.schemas import outputs, reasons, wire


def read(line: bytes) -> wire.Message:
    message = wire.decode(line)
    assert not isinstance(message, wire.Rejection), message
    return message


def decide_at(state: TenantState, line: bytes) -> list[Event]:
    """Let time pass to the message, then decide it (nothing applied)."""
    message = read(line)
    advance(state, message.ts)
    return decide(state, message, line)


def apply_all(state: TenantState, events: list[Event]) -> list[Output]:
    produced: list[Output] = []
    for event in events:
        produced.extend(apply(state, event))
    return produced


def given(script: Script) -> TenantState:
    """A tenant's state after every message of ``script`` was decided and applied."""
    state = TenantState(script.tenant)
    for line in script.lines:
        apply_all(state, decide_at(state, line))
    script.lines.clear()
    return state


def entries(produced: list[Output]) -> list[tuple[str, str, int]]:
    """(kind, account, micro-credits) of each ledger entry, in order."""
    return [(o.kind, o.account_id, o.amount_micros) for o in produced if isinstance(o, outputs.LedgerEntry)]


def available(state: TenantState) -> dict[str, int]:
    return {a.id: a.available for a in state.accounts.values()}


def funded_tree() -> Script:
    """acme (root) -> org -> team -> user, with 1000 purchased and 100 / 30 / 10 allocated down."""
    s = Script()
    s.purchase(1000, id="buy")
    s.open("org", "acme", kind="org")
    s.open("team", "org")
    s.open("user", "team", kind="user")
    s.allocate("acme", "org", 100, id="to-org")
    s.allocate("org", "team", 30, id="to-team")
    s.allocate("team", "user", 10, id="to-user")
    return s


class TestPurchase:
    def test_a_purchase_funds_the_tenant_root(self):
        s = Script()
        state = given(s)

        events = decide_at(state, s.purchase("12.5", id="buy"))

        assert [type(e) for e in events] == [Purchased, IdRecorded]
        assert events[0].amount == c("12.5")
        assert available(state) == {"acme": 0}  # decided, not applied yet
        produced = apply_all(state, events)
        assert available(state) == {"acme": c("12.5")}
        assert state.totals.purchased == c("12.5")
        assert entries(produced) == [("credit", "acme", c("12.5"))]


class TestOpenAccount:
    def test_an_opened_account_starts_empty_under_its_parent(self):
        s = Script()
        state = given(s)

        events = decide_at(state, s.open("org", "acme", kind="org"))

        assert isinstance(events[0], AccountOpened) and "org" not in state.accounts
        apply_all(state, events)
        org = state.accounts["org"]
        assert (org.parent_id, org.available, org.fallback) == ("acme", 0, True)


class TestAllocate:
    def test_allocate_moves_credits_from_the_parent_to_the_child(self):
        s = Script()
        s.purchase(1000, id="buy")
        s.open("org", "acme", kind="org")
        state = given(s)

        events = decide_at(state, s.allocate("acme", "org", 600, id="to-org"))

        allocated = events[0]
        assert isinstance(allocated, Allocated)
        assert allocated.amount == c(600) and allocated.draws == (("buy", c(600)),)
        produced = apply_all(state, events)
        assert available(state) == {"acme": c(400), "org": c(600)}
        assert entries(produced) == [("allocation_out", "acme", c(600)), ("allocation_in", "org", c(600))]

    def test_allocating_more_than_the_parent_holds_is_refused(self):
        s = Script()
        s.purchase(100)
        s.open("org", "acme", kind="org")
        state = given(s)

        with pytest.raises(Rejected) as refused:
            decide_at(state, s.allocate("acme", "org", "100.000001"))

        assert refused.value.reason == reasons.INSUFFICIENT_FUNDS
        assert available(state) == {"acme": c(100), "org": 0}


class TestUsageCascade:
    def test_usage_draws_on_the_user_then_team_then_org_then_tenant(self):
        s = funded_tree()
        state = given(s)

        events = decide_at(state, s.use("user", 110))  # more than user, team and org hold together

        charged = events[0]
        assert isinstance(charged, UsageCharged)
        assert charged.account_id == "user" and charged.overage == 0
        assert charged.draws == (("user", "to-user", c(10)), ("team", "to-team", c(20)),
                                 ("org", "to-org", c(70)), ("acme", "buy", c(10)))
        produced = apply_all(state, events)
        assert available(state) == {"acme": c(890), "org": 0, "team": 0, "user": 0}
        assert state.accounts["user"].consumed == c(110)  # charged to the user, wherever it was funded from
        assert [(k, a) for k, a, _ in entries(produced)] == [
            ("consume", "user"), ("consume", "team"), ("consume", "org"), ("consume", "acme")]

    def test_what_nobody_covers_is_overage_on_the_charged_account(self):
        s = funded_tree()
        s.open("solo", "team", kind="user", fallback=False)
        state = given(s)

        events = decide_at(state, s.use("solo", 5))

        charged = events[0]
        assert charged.draws == () and charged.overage == c(5)  # no fallback: the cascade stops at solo
        produced = apply_all(state, events)
        assert state.accounts["solo"].overage == c(5)
        assert entries(produced) == [("overage", "solo", c(5))]


class TestHardCap:
    def hard_capped_team(self) -> tuple[Script, TenantState]:
        s = Script()
        s.purchase(1000)
        s.open("team", "acme")
        s.allocate("acme", "team", 100, cap="hard", id="to-team")
        return s, given(s)

    def test_a_hard_capped_account_does_not_draw_on_its_parent(self):
        s, state = self.hard_capped_team()

        events = decide_at(state, s.use("team", 150))

        assert events[0].draws == (("team", "to-team", c(100)),) and events[0].overage == c(50)

    def test_a_reserve_beyond_a_hard_cap_is_refused(self):
        s, state = self.hard_capped_team()

        with pytest.raises(Rejected) as refused:
            decide_at(state, s.msg("reserve", account_id="team", credits=101, expires_at=at(days=1)))

        assert refused.value.reason == reasons.INSUFFICIENT_FUNDS
        assert state.holds == {} and available(state)["team"] == c(100)

    def test_reaching_a_hard_cap_blocks_the_account(self):
        s, state = self.hard_capped_team()

        produced = apply_all(state, decide_at(state, s.use("team", 100)))

        blocks = [o for o in produced if isinstance(o, outputs.Enforcement)]
        assert [(b.account_id, b.state) for b in blocks] == [("team", "blocked")]
        assert state.accounts["team"].blocked


class TestHold:
    def reserved(self) -> tuple[Script, TenantState]:
        s = Script()
        s.purchase(1000)
        s.open("team", "acme", fallback=False)
        s.allocate("acme", "team", 100, id="to-team")
        state = given(s)
        events = decide_at(state, s.msg("reserve", id="hold-1", account_id="team", credits=30,
                                        expires_at=at(days=1)))
        assert isinstance(events[0], Reserved) and events[0].draws == (("team", "to-team", c(30)),)
        apply_all(state, events)
        return s, state

    def test_a_reserve_takes_a_hold(self):
        _s, state = self.reserved()

        team = state.accounts["team"]
        assert (team.available, team.reserved) == (c(70), c(30))
        assert set(state.holds) == {"hold-1"}

    def test_a_settle_consumes_part_of_the_hold_and_releases_the_rest(self):
        s, state = self.reserved()

        events = decide_at(state, s.msg("settle", reservation_id="hold-1", credits=20))

        settled = events[0]
        assert isinstance(settled, Settled)
        assert settled.from_hold == (("team", "to-team", c(20)),) and settled.released == (("team", "to-team", c(10)),)
        apply_all(state, events)
        team = state.accounts["team"]
        assert (team.available, team.reserved, team.consumed) == (c(80), 0, c(20))
        assert state.holds == {}

    def test_a_hold_not_settled_is_released_at_its_expiry(self):
        _s, state = self.reserved()

        produced = advance(state, T0 + timedelta(days=2))  # no message: time alone releases it

        assert [k for k, _a, _m in entries(produced)] == ["release"]
        team = state.accounts["team"]
        assert (team.available, team.reserved, team.consumed) == (c(100), 0, 0)
        assert state.holds == {} and state.closed_holds.get("hold-1") is not None


class TestIdempotency:
    def test_the_same_message_again_decides_nothing(self):
        s = Script()
        line = s.purchase(100, id="buy")
        state = given(s)

        assert decide_at(state, line) == []
        assert available(state) == {"acme": c(100)}

    def test_the_same_id_with_other_content_is_a_conflict(self):
        s = Script()
        s.purchase(100, id="buy", ts=at(seconds=1))
        state = given(s)

        with pytest.raises(Rejected) as refused:
            decide_at(state, s.purchase(200, id="buy", ts=at(seconds=1)))

        assert refused.value.reason == reasons.DUPLICATE_ID_CONFLICT


class TestDecideIsPure:
    @pytest.mark.parametrize("build", [
        lambda s: s.purchase(5),
        lambda s: s.open("ops", "org"),
        lambda s: s.allocate("org", "team", 5),
        lambda s: s.reclaim("team", "org", 5),
        lambda s: s.use("user", 500),
        lambda s: s.use("ghost", 1),  # refused: unknown account
        lambda s: s.msg("reserve", account_id="user", credits=5, expires_at=at(days=1)),
        lambda s: s.allocate("acme", "org", 10_000),  # refused: insufficient funds
        lambda s: s.purchase(1000, id="buy"),  # a resend: no-op
    ], ids=["purchase", "open", "allocate", "reclaim", "usage", "unknown-account", "reserve", "refused",
            "resend"])
    def test_decide_never_changes_the_state_and_apply_does(self, build):
        s = funded_tree()
        state = given(s)
        line = build(s)
        message = read(line)
        advance(state, message.ts)
        before = copy.deepcopy(state)

        try:
            events = decide(state, message, None)
        except Rejected:
            events = []

        assert state == before
        if any(not isinstance(e, IdRecorded) for e in events):
            apply_all(state, events)
            assert state != before
