"""The entitlement check (``processors.ledger.entitlement``, behind ``GET /v1/check``) against the
ledger's own charging: given a random tree, when a usage of exactly the effective available is
charged, then it draws all of it with no overage, and one micro-credit more is overage."""

from __future__ import annotations

import copy

from hypothesis import given, strategies as st

from finops.processors.ledger import apply, decide, entitlement
from finops.processors.events import UsageCharged
from finops.schemas import wire
from finops.schemas.money import MAX_MICROS, credits_str
from ledger_helpers import Script, at, c
from test_ledger_properties import ACCOUNTS, common, fold, scripts


def charge(state, account_id: str, micros: int):
    """The UsageCharged event the ledger decides for a usage of ``micros`` at the tenant's clock."""
    message = wire.decode(Script(state.tenant_id).msg(
        "usage", id="the-usage-checked", ts=state.clock.isoformat(), account_id=account_id, api_key_id="k", model_name="m",
        operation_type="chat", units_consumed=1, credits_consumed=credits_str(micros)))
    assert not isinstance(message, wire.Rejection), message
    events = decide(state, message)
    assert len(events) == 2 and isinstance(events[0], UsageCharged)  # the charge, then its id
    return events[0]


@common
@given(scripts(), st.sampled_from(ACCOUNTS))
def test_effective_available_is_what_a_usage_draws_without_overage(lines, account_id):
    # given a random tree after a random history
    state = fold(lines).ledger.tenants.get("acme")
    if state is None or account_id not in state.accounts or state.clock is None:
        return
    # when the check is asked at the ledger's clock
    judged = entitlement(state, state.accounts[account_id], 0, state.clock)
    # then a usage of exactly that much draws it all and is no overage
    exact = charge(copy.deepcopy(state), account_id, judged.effective_available)
    assert exact.overage == 0
    assert sum(take for _acct, _grant, take in exact.draws) == judged.effective_available
    # and one micro-credit more is one micro-credit of overage
    if judged.effective_available < MAX_MICROS:
        more = charge(copy.deepcopy(state), account_id, judged.effective_available + 1)
        assert more.overage == 1
    # and the check says so
    assert entitlement(state, state.accounts[account_id], judged.effective_available, state.clock).reason in (
        None, "blocked", "hard_cap")
    assert entitlement(state, state.accounts[account_id], judged.effective_available + 1,
                       state.clock).allow is False


def test_a_check_changes_nothing():
    s = Script()
    s.purchase(100)
    s.open("team", "acme")
    s.allocate("acme", "team", 40)
    state = s.fold().ledger.tenants["acme"]
    before = copy.deepcopy(state.accounts)
    judged = entitlement(state, state.accounts["team"], c(30), state.clock)
    assert (judged.allow, judged.reason, judged.effective_available) == (True, None, c(100))
    assert state.accounts == before


def test_a_hard_cap_refuses_what_would_pass_its_budget_and_then_blocks():
    # given a hard-capped team with a budget of 40 under a tenant with 100
    s = Script()
    s.purchase(100)
    s.open("team", "acme")
    s.open("ann", "team", kind="user")
    s.allocate("acme", "team", 40, cap="hard")
    state = s.fold().ledger.tenants["acme"]
    ann = state.accounts["ann"]
    # then the cascade stops at the hard cap: ann can reach the team's 40, not the tenant's 60
    assert entitlement(state, ann, c(40), state.clock).allow is True
    refused = entitlement(state, ann, c(41), state.clock)
    assert (refused.allow, refused.reason, refused.blocked_by) == (False, "hard_cap", ("team",))
    # when the team's budget is used up, it is blocked (finops.enforcement.v1) for everything under it
    s.use("ann", 40)
    state = s.fold().ledger.tenants["acme"]
    blocked = entitlement(state, state.accounts["ann"], 0, state.clock)
    assert (blocked.allow, blocked.reason, blocked.blocked_by) == (False, "blocked", ("team",))


def test_a_pool_lends_only_to_its_members_and_a_window_counts_only_while_open():
    s = Script()
    s.purchase(100)
    s.open("pool", "acme")
    s.open("ann", "pool", kind="user")
    s.open("bob", "pool", kind="user")
    s.allocate("acme", "pool", 50)
    s.msg("set_members", account_id="pool", members=["ann"])
    s.allocate("pool", "bob", 5, starts_at=at(days=1), ends_at=at(days=2))
    state = s.fold().ledger.tenants["acme"]
    # ann is a member: the pool's 45, then (the pool falls back) the tenant's 50
    assert entitlement(state, state.accounts["ann"], 0, state.clock).effective_available == c(95)
    # bob is no member: only his own grant, and only inside its window
    assert entitlement(state, state.accounts["bob"], 0, state.clock).effective_available == 0
    assert entitlement(state, state.accounts["bob"], 0, state.clock.replace(day=2, hour=12)).effective_available \
        == c(5)


def test_the_check_and_the_charge_agree_after_applying(monkeypatch):
    # given the usage the check allowed, when it is charged, then the account's available drops by it
    s = Script()
    s.purchase(10)
    s.open("team", "acme")
    state = s.fold().ledger.tenants["acme"]
    judged = entitlement(state, state.accounts["team"], c(4), state.clock)
    for event in [charge(state, "team", c(4))]:
        apply(state, event)
    assert judged.allow and state.accounts["acme"].available == c(6)
