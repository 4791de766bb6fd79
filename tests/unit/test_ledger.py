"""The pure ledger, command by command, and the seed situations with exact numbers."""

from __future__ import annotations

import rule_examples
from ledger_helpers import Script, at, balances, c, conservation_holds, reasons


class TestPurchase:
    def test_credits_enter_the_root_pool(self):
        s = Script()
        s.purchase(1000)
        s.purchase("0.5")
        r = s.fold()
        assert balances(r)["acme"] == (c("1000.5"), 0, 0)
        assert r.ledger.tenants["acme"].totals.purchased == c("1000.5")

    def test_purchase_that_expires_leaves_as_expired(self):
        s = Script()
        s.purchase(100, expires_at=at(days=1))
        s.tick(ts=at(days=2))
        r = s.fold()
        assert balances(r)["acme"] == (0, 0, 0)
        assert r.ledger.tenants["acme"].totals.expired == c(100)
        assert conservation_holds(r)


class TestOpenAccount:
    def test_opens_a_child_with_nothing_in_it(self):
        s = Script()
        s.open("org", "acme", kind="org")
        assert balances(s.fold())["org"] == (0, 0, 0)

    def test_rejects_unknown_parent_and_reopening(self):
        s = Script()
        s.open("org", "acme")
        s.open("org", "acme")
        s.open("team", "nowhere")
        assert reasons(s.fold()) == ["account_exists", "unknown_parent"]


class TestAllocate:
    def test_moves_credits_to_child(self):
        s = Script()
        s.purchase(1000)
        s.open("org", "acme")
        s.allocate("acme", "org", 600)
        b = balances(s.fold())
        assert b["acme"][0] == c(400) and b["org"][0] == c(600)

    def test_rejects_more_than_available(self):
        s = Script()
        s.purchase(100)
        s.open("org", "acme")
        s.allocate("acme", "org", "100.000001")
        r = s.fold()
        assert reasons(r) == ["insufficient_funds"]
        assert balances(r)["acme"][0] == c(100)

    def test_rejects_when_not_parent_and_child(self):
        s = Script()
        s.purchase(100)
        s.open("org", "acme")
        s.open("team", "org")
        s.allocate("acme", "team", 10)
        s.allocate("acme", "ghost", 10)
        assert reasons(s.fold()) == ["not_parent", "unknown_account"]

    def test_grant_outside_its_window_cannot_be_spent(self):
        s = Script()
        s.purchase(100)
        s.open("ws", "acme", fallback=False)
        s.allocate("acme", "ws", 40, starts_at=at(days=2), ends_at=at(days=3))
        s.use("ws", 10, ts=at(days=1))  # before the window: overage
        s.use("ws", 10, ts=at(days=2, hours=1))  # inside
        s.tick(ts=at(days=4))  # window over: the rest expires
        r = s.fold()
        assert balances(r)["ws"] == (0, c(20), c(10))
        assert r.ledger.tenants["acme"].totals.expired == c(30)
        assert conservation_holds(r)

    def test_on_expiry_return_gives_the_rest_back_to_the_parent(self):
        s = Script()
        s.purchase(100)
        s.open("ws", "acme")
        s.allocate("acme", "ws", 40, ends_at=at(days=3), on_expiry="return")
        s.use("ws", 15)
        s.tick(ts=at(days=3))
        r = s.fold()
        assert balances(r)["acme"][0] == c(85)
        assert balances(r)["ws"][0] == 0
        assert r.ledger.tenants["acme"].totals.expired == 0


class TestReclaim:
    def test_returns_an_amount_or_all(self):
        s = Script()
        s.purchase(100)
        s.open("org", "acme")
        s.allocate("acme", "org", 60)
        s.reclaim("org", "acme", 10)
        s.reclaim("org", "acme", all=True)
        b = balances(s.fold())
        assert b["acme"][0] == c(100) and b["org"][0] == 0

    def test_rejects_overdraft(self):
        s = Script()
        s.purchase(100)
        s.open("org", "acme")
        s.allocate("acme", "org", 60)
        s.reclaim("org", "acme", 61)
        r = s.fold()
        assert reasons(r) == ["insufficient_funds"]
        assert balances(r)["org"][0] == c(60)


class TestUsage:
    """The cascade's seed situations (fallback chain, levels running dry, member-only pools)
    are in test_seeds.py, with exact numbers, also through `finops fold`."""

    def test_no_fallback_stops_the_cascade(self):
        s = Script()
        s.purchase(100)
        s.open("team", "acme", fallback=False)
        s.use("team", 5)
        assert balances(s.fold())["team"] == (0, c(5), c(5))

    def test_bound_key_charges_its_account(self):
        s = Script()
        s.purchase(10)
        s.open("team", "acme")
        s.msg("bind_key", api_key_id="k-team", account_id="team")
        s.use(None, 4, api_key_id="k-team")
        s.use(None, 4, api_key_id="k-unbound")
        r = s.fold()
        assert balances(r)["team"][1] == c(4)
        assert reasons(r) == ["unknown_account"]

    def test_same_id_twice_is_a_no_op_and_other_content_conflicts(self):
        s = Script()
        s.purchase(10)
        first = s.use("acme", 1, id="req-1")
        s.lines.append(first)
        s.use("acme", 2, id="req-1")
        r = s.fold()
        assert balances(r)["acme"] == (c(9), c(1), 0)
        assert reasons(r) == ["duplicate_id_conflict"]

    def test_rejected_id_can_be_sent_again(self):
        s = Script()
        s.open("org", "acme")
        s.allocate("acme", "org", 5, id="alloc-1")
        s.purchase(10)
        s.allocate("acme", "org", 5, id="alloc-1")
        r = s.fold()
        assert reasons(r) == ["insufficient_funds"]
        assert balances(r)["org"][0] == c(5)

    def test_tenants_are_isolated(self):
        a, b = Script("acme"), Script("globex")
        a.purchase(10)
        b.purchase(10)
        b.open("team", "globex")
        b.allocate("acme", "team", 5)  # another tenant's root
        a.use("team", 1)  # globex's account, from acme
        r = Script("acme").fold()  # an empty fold to feed both tenants into
        for line in a.lines + b.lines:
            r.feed(line)
        r.finish()  # the usage was held for an account "team" that never opened in acme
        assert reasons(r) == ["unknown_account", "unknown_account"]
        assert balances(r, "acme")["acme"][0] == c(10)
        assert balances(r, "globex")["globex"][0] == c(10)


class TestRateCard:
    def test_usage_without_credits_is_priced_by_the_tenant_rate(self):
        s = Script()
        s.purchase(10)
        s.msg("set_rates", rates=[{"model_name": "gpt-4o", "operation_type": "chat",
                                   "credits_per_unit": "0.00001"}])
        s.use("acme", None, units_consumed=1234)
        s.use("acme", None, units_consumed=1, model_name="other")
        r = s.fold()
        assert balances(r)["acme"] == (c(10) - c("0.01234"), c("0.01234"), 0)
        assert reasons(r) == ["no_rate"]

    def test_rounds_half_even_to_micro_credits(self):
        s = Script()
        s.msg("set_rates", rates=[{"model_name": "gpt-4o", "operation_type": "chat",
                                   "credits_per_unit": "0.0000005"}])
        s.use("acme", None, units_consumed=1)  # 0.5 micro -> 0
        s.use("acme", None, units_consumed=3)  # 1.5 micro -> 2
        assert balances(s.fold())["acme"][1] == 2


class TestThresholdAlerts:
    def test_fire_once_per_threshold_and_resolve_on_top_up(self):
        s = Script()
        s.purchase(1000)
        s.open("team", "acme")
        s.open("alice", "team", kind="user")
        s.allocate("acme", "team", 100, thresholds=[50, 90])
        s.use("alice", 55)  # the subtree's usage counts for the team
        s.use("alice", 1)
        s.use("team", 40)  # 96 %
        s.allocate("acme", "team", 60)  # top-up: 96 of 160 = 60 % -> 90 % clears, 50 % holds
        r = s.fold()
        from finops.schemas.outputs import Alert

        alerts = [(a.account_id, a.threshold, a.severity, a.status) for a in r.outputs if isinstance(a, Alert)]
        assert alerts == [("team", 50, "info", "firing"), ("team", 90, "critical", "firing"),
                          ("team", 90, "info", "resolved")]

    def test_a_new_month_resolves_the_last_months_alerts(self):
        s = Script()
        s.purchase(1000, ts="2026-11-01T00:00:00Z")
        s.open("team", "acme", ts="2026-11-01T00:00:01Z")
        s.allocate("acme", "team", 10, recurrence={"every": "month"}, ts="2026-11-01T00:00:02Z")
        s.use("team", 8, ts="2026-11-20T00:00:00Z")
        s.tick(ts="2026-12-01T00:00:00Z")
        r = s.fold()
        from finops.schemas.outputs import Alert

        alerts = [(a.threshold, a.status, a.period) for a in r.outputs if isinstance(a, Alert)]
        assert alerts == [(50, "firing", "2026-11"), (70, "firing", "2026-11"), (50, "resolved", "2026-12"),
                          (70, "resolved", "2026-12")]
        assert balances(r)["team"][0] == c(10)  # no rollover: 2 returned, 10 granted again


class TestSetMembers:
    def test_unknown_member_is_refused(self):
        s = Script()
        s.open("pool", "acme", kind="pool")
        s.msg("set_members", account_id="pool", members=["ghost"])
        assert reasons(s.fold()) == ["unknown_account"]

    def test_descendants_of_a_member_may_draw(self):
        s = Script()
        s.purchase(100)
        s.open("pool", "acme", kind="pool")
        s.allocate("acme", "pool", 50)
        s.open("team", "pool")
        s.open("carol", "team", kind="user")
        s.msg("set_members", account_id="pool", members=["team"])
        s.use("carol", 20)
        assert balances(s.fold())["pool"][0] == c(30)


class TestBindKey:
    def test_rebinding_moves_later_usage(self):
        s = Script()
        s.purchase(100)
        s.open("a", "acme")
        s.open("b", "acme")
        s.msg("bind_key", api_key_id="k", account_id="a")
        s.use(None, 1, api_key_id="k")
        s.msg("bind_key", api_key_id="k", account_id="b")
        s.use(None, 2, api_key_id="k")
        b = balances(s.fold())
        assert (b["a"][1], b["b"][1]) == (c(1), c(2))


class TestReserve:
    def test_holds_credits_and_refuses_more_than_spendable(self):
        s = Script()
        s.purchase(10)
        s.msg("reserve", account_id="acme", credits=4, expires_at=at(hours=1))
        s.msg("reserve", account_id="acme", credits=7, expires_at=at(hours=1))
        r = s.fold()
        acct = r.ledger.tenants["acme"].accounts["acme"]
        assert (acct.available, acct.reserved) == (c(6), c(4))
        assert reasons(r) == ["insufficient_funds"]
        assert conservation_holds(r)

    def test_refuses_an_expiry_in_the_past(self):
        s = Script()
        s.purchase(10)
        s.msg("reserve", account_id="acme", credits=1, expires_at=at(seconds=-5))
        assert reasons(s.fold()) == ["invalid_window"]


class TestSettle:
    def test_settle_for_more_than_held_draws_the_rest(self):
        s = Script()
        s.purchase(10)
        s.msg("reserve", id="h", account_id="acme", credits=2, expires_at=at(hours=1))
        s.msg("settle", reservation_id="h", credits=3)
        r = s.fold()
        acct = r.ledger.tenants["acme"].accounts["acme"]
        assert (acct.available, acct.reserved, acct.consumed) == (c(7), 0, c(3))

    def test_unknown_and_twice_settled_holds_are_refused(self):
        s = Script()
        s.purchase(10)
        s.msg("reserve", id="h", account_id="acme", credits=2, expires_at=at(hours=1))
        s.msg("settle", reservation_id="h", credits=1)
        s.msg("settle", reservation_id="h", credits=1)
        s.msg("settle", reservation_id="nope", credits=1)
        assert reasons(s.fold()) == ["reservation_closed", "unknown_reservation"]


class TestOverrideCap:
    def test_needs_two_distinct_approvers_and_a_future_until(self):
        s = Script()
        s.open("team", "acme")
        s.msg("override_cap", account_id="team", until=at(days=1), approvals=["a", "a"])
        s.msg("override_cap", account_id="team", until=at(seconds=-1), approvals=["a", "b"])
        s.msg("override_cap", account_id="team", until=at(days=1), approvals=["a", "b"])
        r = s.fold()
        assert reasons(r) == ["approvals_required", "invalid_window"]
        assert r.ledger.tenants["acme"].accounts["team"].override_until is not None


class TestTick:
    def test_expiries_happen_at_their_own_time_in_order(self):
        s = Script()
        s.purchase(10, expires_at=at(days=2))
        s.purchase(5, expires_at=at(days=1))
        s.tick(ts=at(days=3))
        r = s.fold()
        expiries = [(e.grant_id, e.ts) for e in r.outputs if getattr(e, "kind", "") == "expire"]
        assert [g for g, _ in expiries] == ["purchase-2", "purchase-1"]
        assert r.ledger.tenants["acme"].totals.expired == c(15)

    def test_a_late_usage_is_charged_to_what_is_spendable_now_and_flagged(self):
        s = Script()
        s.purchase(10)
        s.open("ws", "acme", fallback=False)
        s.allocate("acme", "ws", 5, ends_at=at(days=1))
        s.tick(ts=at(days=2))  # the grant has expired
        s.use("ws", 1, ts=at(hours=1))  # happened inside the window, arrives after it closed
        r = s.fold()
        late = [e for e in r.outputs if getattr(e, "kind", "") == "overage"]
        assert balances(r)["ws"] == (0, c(1), c(1))
        assert late and late[0].late is True


class TestRecurrence:
    def test_ends_with_its_expiry_and_returns_the_rest_when_asked(self):
        s = Script()
        s.purchase(100, ts="2026-11-01T00:00:00Z")
        s.open("team", "acme", ts="2026-11-01T00:00:01Z")
        s.allocate("acme", "team", 10, recurrence={"every": "month", "rollover_pct": 100},
                   expires_at="2027-01-15T00:00:00Z", on_expiry="return", ts="2026-11-01T00:00:02Z")
        s.tick(ts="2027-03-01T00:00:00Z")
        r = s.fold()
        # Nov 10 -> Dec 20 (10 carried) -> Jan 30 -> all 30 return on Jan 15; no more renewals
        assert balances(r)["team"][0] == 0
        assert balances(r)["acme"][0] == c(100)
        assert not r.ledger.tenants["acme"].recurring

    def test_a_parent_short_of_funds_renews_with_what_it_has(self):
        s = Script()
        s.purchase(15, ts="2026-11-01T00:00:00Z")
        s.open("team", "acme", ts="2026-11-01T00:00:01Z", fallback=False)
        s.allocate("acme", "team", 10, recurrence={"every": "month"}, ts="2026-11-01T00:00:02Z")
        s.use("team", 10, ts="2026-11-02T00:00:00Z")
        s.tick(ts="2026-12-01T00:00:00Z")
        assert balances(s.fold())["team"][0] == c(5)


class TestIdMemory:
    """wire-v1.md, "Idempotency horizon": ids are remembered for 35 days of event time."""

    def test_a_resend_30_days_later_is_a_no_op(self):
        s = Script()
        s.purchase(1000, id="topup-1")
        first = s.use("acme", 30, id="req-42", ts=at(hours=1))
        s.tick(ts=at(days=30))
        s.lines.append(first)
        s.lines.append(s.lines[0])  # the purchase again
        r = s.fold()
        assert reasons(r) == []
        assert r.ledger.tenants["acme"].totals.purchased == c(1000)
        assert balances(r)["acme"][1] == c(30)

    def test_a_resend_36_days_later_is_too_late(self):
        s = Script()
        s.purchase(1000, id="topup-1")
        first = s.use("acme", 30, id="req-42", ts=at(hours=1))
        s.tick(ts=at(days=36))
        s.lines.append(first)
        s.lines.append(s.lines[0])
        r = s.fold()
        assert reasons(r) == ["too_late", "too_late"]
        assert r.ledger.tenants["acme"].totals.purchased == c(1000)
        assert balances(r)["acme"][1] == c(30)

    def test_an_id_reused_with_other_content_after_the_horizon_is_new(self):
        s = Script()
        s.purchase(1000)
        s.use("acme", 1, id="req-1", ts=at(hours=1))
        s.tick(ts=at(days=40))
        s.use("acme", 2, id="req-1", ts=at(days=40))
        r = s.fold()
        assert reasons(r) == []
        assert balances(r)["acme"][1] == c(3)

    def test_memory_is_pruned_past_the_horizon(self):
        s = Script()
        s.purchase(1000)
        for n in range(3000):
            s.use("acme", "0.001", ts=at(hours=n))  # 3000 ids over 125 days
        r = s.fold()
        assert len(r.ledger.tenants["acme"].ids) <= 35 * 24 + 2 + 1


class TestRulesMadePrecise:
    """wire-v1.md, "v1 rules made precise": one example of each kind, with its right value."""

    def test_labels_never_refuse_usage(self):
        s = Script()
        s.purchase(100)
        for n, labels in enumerate([{"project": 42}, {"cached": True}, {"team": None}, {"x": {"y": [1]}}, None]):
            s.use("acme", 1, id=f"r{n}", usage_labels=labels)
        r = s.fold()
        assert r.rejected == []
        assert balances(r)["acme"][1] == c(5)
        labels = [e.usage_labels for e in r.outputs if getattr(e, "kind", "") == "consume"]
        assert labels == [{"project": "42"}, {"cached": "true"}, None, {"x": '{"y":[1]}'}, None]

    def test_an_allocate_without_cap_keeps_the_hard_cap(self):
        s = Script()
        s.purchase(1000)
        s.open("dev", "acme", fallback=False)
        s.allocate("acme", "dev", 10, cap="hard")
        s.use("dev", 10)
        s.allocate("acme", "dev", 5)  # no cap: dev stays hard-capped
        s.use("dev", 50)
        r = s.fold()
        assert r.ledger.tenants["acme"].accounts["dev"].cap == "hard"
        states = [e.state for e in r.outputs if type(e).__name__ == "Enforcement"]
        assert states == ["blocked", "open", "blocked"]

    def test_the_same_content_in_another_spelling_is_a_no_op(self):
        s = Script()
        first = s.msg("purchase", id="topup-7", credits=100, ts="2026-11-01T10:00:00Z")
        s.lines.append(b'{"ts":"2026-11-01T10:00:00.000Z","credits":"100","id":"topup-7","tenant_id":"acme",'
                       b'"type":"purchase","schema_version":1}')
        s.lines.append(b'{"type":"purchase","id":"topup-7","tenant_id":"acme","ts":"2026-11-01T10:00:00+00:00",'
                       b'"credits":100.0, "note": "an unknown field"}')
        r = s.fold()
        assert first and r.rejected == []
        assert r.ledger.tenants["acme"].totals.purchased == c(100)

    def test_a_settle_after_its_hold_ended_is_charged_and_a_second_one_is_closed(self):
        r = rule_examples.late_settle("acme", 2026).fold()
        assert reasons(r) == ["reservation_closed"]
        assert balances(r)["acme"] == (c(92), c(8), 0)
        assert conservation_holds(r)

    @staticmethod
    def _threshold_alerts(result, account: str, tenant: str = "acme") -> list[tuple[int, str]]:
        return [(a.threshold, a.status) for a in result.outputs
                if type(a).__name__ == "Alert" and a.account_id == account and a.tenant_id == tenant]

    def test_an_offset_does_not_change_the_month(self):
        """Kind 1: the same instant written with +05:30 is still November (UTC)."""
        for stamp in ("2026-11-30T20:30:00Z", "2026-12-01T02:00:00+05:30"):
            r = rule_examples.offset_month("acme", 2026, stamp).fold()
            team = r.ledger.tenants["acme"].accounts["team"]
            assert (team.period, team.period_granted, team.period_used) == ("2026-11", c(200), c(105))
            assert self._threshold_alerts(r, "team") == [(50, "firing"), (50, "resolved"), (50, "firing")]

    def test_two_monthly_allocations_add_up_in_the_period_budget(self):
        """Kind 2: December's budget is 200 (both renewals), 110 is 55 %: one 50 % alert, no block."""
        r = rule_examples.two_monthly("acme", 2026).fold()
        team = r.ledger.tenants["acme"].accounts["team"]
        assert (team.period, team.period_granted, team.period_used) == ("2026-12", c(200), c(110))
        december = [a for a in r.outputs if type(a).__name__ == "Alert" and a.period == "2026-12"
                    and a.status == "firing"]
        assert [a.threshold for a in december] == [50]
        assert not team.blocked and team.available == c(90)

    def test_amounts_are_read_from_their_text(self):
        """Kind 3: 8600000000.000001 as a JSON number stays exact; nothing passes 2^63-1 micro-credits."""
        s = Script()
        s.lines.append(b'{"type":"purchase","id":"p1","tenant_id":"acme","ts":"2026-11-01T00:00:00Z",'
                       b'"credits":8600000000.000001}')
        s.lines.append(b'{"type":"purchase","id":"p2","tenant_id":"acme","ts":"2026-11-01T00:00:00Z",'
                       b'"credits":"9220000000000"}')  # would take the pool past 2^63-1 micro-credits
        s.lines.append(b'{"type":"purchase","id":"p3","tenant_id":"acme","ts":"2026-11-01T00:00:00Z",'
                       b'"credits":"1e2"}')  # an amount string has no exponent
        r = s.fold()
        assert r.ledger.tenants["acme"].totals.purchased == 8_600_000_000_000_001
        assert reasons(r) == ["invalid_amount", "invalid_amount"]

    def test_rate_card_prices_lose_nothing_to_rounding(self):
        """Kind 10: 1,000 usages of one unit at 0.0000004 credits a unit charge 0.0004 in all."""
        s = Script()
        s.purchase(10)
        s.msg("set_rates", rates=[{"model_name": "m", "operation_type": "chat", "credits_per_unit": "0.0000004"}])
        for n in range(1000):
            s.use("acme", None, units_consumed=1, model_name="m", id=f"r{n}")
        r = s.fold()
        assert r.rejected == []
        assert balances(r)["acme"][1] == c("0.0004")
        assert conservation_holds(r)

    def test_approvers_are_compared_after_normalising(self):
        s = Script()
        s.purchase(100)
        s.open("team", "acme")
        s.allocate("acme", "team", 10, cap="hard")
        s.msg("override_cap", account_id="team", until="2026-12-01T00:00:00Z", approvals=["CFO", " cfo "])
        s.msg("override_cap", account_id="team", until="2026-12-01T00:00:00Z", approvals=["Zoë", "zoe\u0308"])
        s.msg("override_cap", account_id="team", until="2026-12-01T00:00:00Z", approvals=["cfo", "cto"])
        assert reasons(s.fold()) == ["approvals_required", "approvals_required"]

    def test_released_credits_go_back_under_the_grant_that_ended(self):
        """Kind 7: a hold released after its grant ended expires; nothing pays the Dec 10 usage."""
        r = rule_examples.released_after_the_grant_ended("acme", 2026).fold()
        assert balances(r)["team"] == (0, c(50), c(50))
        assert r.ledger.tenants["acme"].totals.expired == c(100)
        assert conservation_holds(r)

    def test_purchased_credits_keep_their_expiry_when_allocated_and_reclaimed(self):
        s = Script()
        s.purchase(100, expires_at="2026-12-01T00:00:00Z", ts="2026-11-01T00:00:00Z")
        s.open("team", "acme", ts="2026-11-01T00:00:00Z")
        s.open("user", "team", ts="2026-11-01T00:00:00Z")
        s.allocate("acme", "team", 60, ts="2026-11-02T00:00:00Z")  # no expires_at of its own
        s.allocate("team", "user", 40, on_expiry="return", ts="2026-11-03T00:00:00Z")
        s.reclaim("user", "team", 10, ts="2026-11-04T00:00:00Z")
        s.tick(ts="2026-12-02T00:00:00Z")
        r = s.fold()
        assert {a: v[0] for a, v in balances(r).items()} == {"acme": 0, "team": 0, "user": 0}
        assert r.ledger.tenants["acme"].totals.expired == c(100)
        assert conservation_holds(r)

    def test_a_monthly_allocation_past_the_year_9999_is_refused_and_the_rest_goes_on(self):
        """Kind 4's example: the month after December 9999 does not exist; nothing stops."""
        a, b = Script("acme"), Script("globex")
        a.purchase(1000)
        a.open("team", "acme")
        a.allocate("acme", "team", 10, starts_at="9999-12-15T00:00:00Z", recurrence={"every": "month"})
        a.allocate("acme", "team", 10, starts_at="9999-10-15T00:00:00Z", recurrence={"every": "month"})
        a.tick(ts="9999-12-31T00:00:00Z")  # renewals run into December 9999, where the recurrence ends
        b.purchase(5)
        r = Script("acme").fold()
        for line in a.lines + b.lines:
            r.feed(line)
        r.finish()
        assert reasons(r) == ["invalid_timestamp"]
        assert r.ledger.tenants["globex"].totals.purchased == c(5)
        assert not r.ledger.tenants["acme"].recurring
        assert conservation_holds(r)

    def test_only_time_fields_are_read_as_times(self):
        """Digits past the microsecond are cut and an offset without colon is refused in the time
        fields only (ts, expires_at, ...): an id or a label that looks like a time is kept as
        sent and refuses nothing; a time written with spaces or a second key is still cut."""
        s = Script()
        s.purchase(10, ts="2026-11-01T00:00:00Z")
        s.use("acme", 1, id="2026-11-01T00:00:01.1234567Z", ts="2026-11-01T00:00:01Z",
              usage_labels={"seen": "2026-11-01T00:00:01+0100", "at": "2026-11-01T00:00:01.9999999Z"})
        s.lines.append(b'{"type": "usage", "id": "spaced", "tenant_id": "acme", "ts": "2026-11-30T23:59:59.9999999Z",'
                       b' "account_id": "acme", "api_key_id": "k", "model_name": "m", "operation_type": "o",'
                       b' "units_consumed": 1, "credits_consumed": 1}')
        s.lines.append(b'{"type":"purchase","id":"exp","tenant_id":"acme","ts":"2026-11-01T00:00:02Z",'
                       b'"credits":1,"expires_at":"2026-12-01T00:00:00+0100"}')
        r = s.fold()
        assert reasons(r) == ["invalid_timestamp"]
        entry = next(o for o in r.outputs if getattr(o, "cause_id", "") == "2026-11-01T00:00:01.1234567Z")
        assert entry.usage_labels == {"seen": "2026-11-01T00:00:01+0100", "at": "2026-11-01T00:00:01.9999999Z"}
        assert r.ledger.tenants["acme"].clock.month == 11  # the spaced ts was cut, not rounded into December

    def test_the_verdict_does_not_depend_on_how_the_ts_is_spelt(self):
        """An unknown field named like another type's time field stays an ignored extra, and a
        duplicate key reads the same, whether the ts is compact, spaced, or cut."""
        from finops.schemas import wire

        usage = ('{"type":"usage","id":"u1","tenant_id":"acme","account_id":"acme","api_key_id":"k",'
                 '"model_name":"m","operation_type":"o","units_consumed":1,"credits_consumed":1,%s,'
                 '"expires_at":"2026-12-01T00:00:00+0100"}')
        verdicts = {type(wire.decode((usage % ts).encode())) for ts in (
            '"ts":"2026-11-30T10:00:00Z"', '"ts": "2026-11-30T10:00:00Z"', '"ts":"2026-11-30T10:00:00.1234567Z"')}
        assert verdicts == {wire.Usage}
        twice = ('{"type":"usage","type":"tick","id":"u1","tenant_id":"acme","account_id":"acme","api_key_id":"k",'
                 '"model_name":"m","operation_type":"o","units_consumed":1,"credits_consumed":1,"ts":"%s"}')
        six, seven = (wire.decode((twice % t).encode()) for t in ("2026-11-30T10:00:00.123456Z",
                                                                  "2026-11-30T10:00:00.1234567Z"))
        assert type(six) is type(seven)
        lone = wire.decode('{"type":"tick","id":"\ud800","tenant_id":"acme","ts":"2026-11-30T10:00:00Z"}')
        assert lone.reason == "not_json"  # text no UTF-8 can spell is refused, not raised

    def test_gaps_the_docs_review_found(self):
        """Huge exponents are refused, not a crash; settles cannot pass 2^63-1; exact halves of
        rate-card prices round once over the total; labels in another key order and a price
        spelt with trailing zeros are the same content; a lower-case t cuts digits too."""
        s = Script()
        s.lines.append(b'{"type":"purchase","id":"p1","tenant_id":"acme","ts":"2026-11-01T00:00:00Z",'
                       b'"credits":1e999999}')
        s.lines.append(b'{"type":"purchase","id":"p2","tenant_id":"acme","ts":"2026-11-01T00:00:00Z",'
                       b'"credits":1e-9999999}')
        s.purchase(10, id="p3", ts="2026-11-01T00:00:01Z")
        s.msg("set_rates", id="rates", ts="2026-11-01T00:00:02Z",
              rates=[{"model_name": "m", "operation_type": "chat", "credits_per_unit": "0.0000005"}])
        s.lines.append(s.lines[-1].replace(b'"0.0000005"', b'"0.00000050"'))  # the same content
        for n in range(3):
            s.use("acme", None, units_consumed=1, model_name="m", id=f"half-{n}", ts="2026-11-01T00:00:03Z",
                  usage_labels={"a": "1", "b": "2"})
        s.use("acme", None, units_consumed=1, model_name="m", id="half-0", ts="2026-11-01T00:00:03Z",
              usage_labels={"b": "2", "a": "1"})  # the same content, labels in another order
        s.lines.append(b'{"type":"tick","id":"t","tenant_id":"acme","ts":"2026-11-30t23:59:59.9999999Z"}')
        r = s.fold()
        assert reasons(r) == ["invalid_amount", "invalid_amount"]
        assert balances(r)["acme"][1] == 2  # 1.5 micro-credits in all, rounded once (half-even)
        assert r.ledger.tenants["acme"].clock.month == 11
