"""The key registry (issue 18, part 2): ``bind_key`` tags stamp a usage's labels, and a tenant may
require registered keys (``set_policy``); and the seed's critical action (part 4): an account
whose allocation says ``on_critical: rate_limit`` has its 90 % alert carry the action and its
non-prod keys rate-limited on ``finops.enforcement.v1`` until the alert resolves or the period ends."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec

from finops.processors.store import KEY, PartitionStore, tenant_prefix
from finops.schemas import outputs, wire
from ledger_helpers import Script, at, balances, c, conservation_holds, reasons
from test_state_store import Shell

DEV = {"team": "search", "cost_center": "cc-7", "env": "dev"}
PROD = {"team": "search", "project": "ranker", "env": "prod"}
ENC = msgspec.json.Encoder(enc_hook=wire.enc_hook)
RATE_LIMIT = {"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": 5}}


def entries(result, kind: str | None = None) -> list[outputs.LedgerEntry]:
    return [o for o in result.outputs if type(o) is outputs.LedgerEntry and (kind is None or o.kind == kind)]


def of(result, cause_id: str) -> list[outputs.LedgerEntry]:
    return [e for e in entries(result) if e.cause_id == cause_id]


def funded(s: Script, credits=100) -> None:
    s.purchase(1000)
    s.open("org", "acme")
    s.open("search", "org")
    s.allocate("acme", "org", 500)
    s.allocate("org", "search", credits)


class TestStamping:
    def test_the_registry_labels_win_over_what_the_caller_sent_and_the_entry_keeps_both(self):
        # given a key registered with the search team's tags
        s = Script()
        funded(s)
        s.msg("bind_key", api_key_id="k-dev", account_id="search", **DEV)
        # when its usage claims another team (and a label the registry does not set)
        s.use(None, 3, api_key_id="k-dev", id="req-1", usage_labels={"team": "ads", "feature": "chat"})
        r = s.fold()
        # then it is charged to the key's account, with the registry's labels over the caller's
        [entry] = of(r, "req-1")
        assert entry.kind == "consume" and entry.amount_micros == c(3) and entry.charged_to == "search"
        assert entry.usage_labels == {"team": "search", "feature": "chat", "cost_center": "cc-7", "env": "dev"}
        assert entry.caller_labels == {"team": "ads", "feature": "chat"}
        assert not entry.untagged
        assert balances(r)["search"][1] == c(3)

    def test_labels_that_agree_with_the_registry_are_recorded_once(self):
        s = Script()
        funded(s)
        s.msg("bind_key", api_key_id="k-dev", account_id="search", **DEV)
        s.use(None, 1, api_key_id="k-dev", id="same", usage_labels=dict(DEV))
        s.use(None, 1, api_key_id="k-dev", id="none")
        r = s.fold()
        [same] = of(r, "same")
        assert same.usage_labels == DEV and same.caller_labels is None
        assert b"caller_labels" not in ENC.encode(same)
        [none] = of(r, "none")  # the caller sent no labels: caller_labels is {}, not left out
        assert none.usage_labels == DEV and none.caller_labels == {}

    def test_the_registry_stamps_usage_that_names_its_account_too_and_its_overage(self):
        s = Script()
        s.purchase(10)
        s.open("search", "acme", fallback=False)
        s.msg("bind_key", api_key_id="k-prod", account_id="search", **PROD)
        s.use("search", 4, api_key_id="k-prod", id="over", usage_labels={"env": "dev"})
        r = s.fold()
        [overage] = of(r, "over")
        assert overage.kind == "overage" and overage.usage_labels == PROD
        assert overage.caller_labels == {"env": "dev"}

    def test_a_later_bind_key_replaces_the_whole_entry(self):
        s = Script()
        funded(s)
        s.msg("bind_key", api_key_id="k", account_id="search", **DEV)
        s.use(None, 1, api_key_id="k", id="u1", usage_labels={"team": "ads"})
        s.msg("bind_key", api_key_id="k", account_id="org", env="prod")
        s.use(None, 1, api_key_id="k", id="u2", usage_labels={"team": "ads"})
        s.msg("bind_key", api_key_id="k", account_id="org")  # no tags: the caller's labels stand
        s.use(None, 1, api_key_id="k", id="u3", usage_labels={"team": "ads"})
        r = s.fold()
        assert [(e.charged_to, e.usage_labels, e.caller_labels) for e in entries(r, "consume")] == [
            ("search", {"team": "search", "cost_center": "cc-7", "env": "dev"}, {"team": "ads"}),
            ("org", {"team": "ads", "env": "prod"}, {"team": "ads"}),
            ("org", {"team": "ads"}, None)]

    def test_usage_held_for_its_key_is_stamped_when_the_key_is_registered(self):
        s = Script()
        funded(s)
        s.use(None, 2, api_key_id="k-new", id="early", usage_labels={"team": "ads"})
        s.msg("bind_key", api_key_id="k-new", account_id="search", **DEV)
        [entry] = of(s.fold(), "early")
        assert entry.usage_labels == {"team": "search", "cost_center": "cc-7", "env": "dev"}
        assert entry.caller_labels == {"team": "ads"} and entry.late

    def test_bind_key_tags_are_part_of_its_content(self):
        s = Script()
        funded(s)
        when = at(hours=1)
        s.msg("bind_key", id="bind", api_key_id="k", account_id="search", team="search", ts=when)
        s.msg("bind_key", id="bind", api_key_id="k", account_id="search", team="search", ts=when)  # a no-op
        s.msg("bind_key", id="bind", api_key_id="k", account_id="search", team="ads", ts=when)
        s.msg("bind_key", api_key_id="k", account_id="search", team="")  # an empty tag is no tag at all
        s.msg("bind_key", api_key_id="k", account_id="search", env=3)
        assert reasons(s.fold()) == ["duplicate_id_conflict", "invalid", "wrong_type"]


class TestRequiredRegistry:
    def test_usage_of_an_unregistered_key_is_charged_and_flagged_untagged(self):
        # given a tenant that requires registered keys
        s = Script()
        funded(s)
        s.msg("set_policy", require_key_registry=True)
        s.msg("bind_key", api_key_id="k-dev", account_id="search", **DEV)
        s.msg("bind_key", api_key_id="k-bare", account_id="search")  # bound, but no registry tags
        # when usage comes from a registered key, a bound untagged key, and a key never bound
        s.use(None, 1, api_key_id="k-dev", id="registered")
        s.use(None, 2, api_key_id="k-bare", id="bare", usage_labels={"team": "ads"})
        s.use("search", 3, api_key_id="k-unknown", id="unknown")
        r = s.fold()
        # then all are charged; only the two without registry tags are flagged, labels as sent
        assert reasons(r) == [] and balances(r)["search"][1] == c(6)
        flagged = {e.cause_id: (e.untagged, e.usage_labels) for e in entries(r, "consume")}
        assert flagged == {"registered": (False, DEV), "bare": (True, {"team": "ads"}), "unknown": (True, None)}
        assert b'"untagged":true' in ENC.encode(of(r, "bare")[0])
        assert conservation_holds(r)

    def test_without_the_setting_or_after_it_is_turned_off_nothing_is_flagged(self):
        s = Script()
        funded(s)
        s.use("search", 1, api_key_id="k-unknown", id="before")
        s.msg("set_policy", require_key_registry=True)
        s.use("search", 1, api_key_id="k-unknown", id="during")
        s.msg("set_policy")  # a field left out keeps its setting
        s.use("search", 1, api_key_id="k-unknown", id="still")
        s.msg("set_policy", require_key_registry=False)
        s.use("search", 1, api_key_id="k-unknown", id="after")
        r = s.fold()
        assert [(e.cause_id, e.untagged) for e in entries(r, "consume")] == [
            ("before", False), ("during", True), ("still", True), ("after", False)]


class TestStore:
    def test_tags_and_the_policy_survive_the_store_and_its_changelog(self):
        s = Script()
        funded(s)
        s.msg("set_policy", require_key_registry=True)
        s.msg("bind_key", api_key_id="k-dev", account_id="search", **DEV)
        s.msg("bind_key", api_key_id="k-bare", account_id="search")
        first = list(s.lines)
        s.use(None, 1, api_key_id="k-dev", id="u1", usage_labels={"team": "ads"})
        s.use(None, 1, api_key_id="k-bare", id="u2")
        rest = s.lines[len(first):]
        with tempfile.TemporaryDirectory() as tmp:
            live = Shell(Path(tmp) / "live")
            live.run(first, 3)
            changelog = list(live.changelog)
            expected = live.run(rest, 1)
            live.close()
            restored = Shell(Path(tmp) / "restored", changelog)  # from the changelog alone
            assert restored.run(rest, 1) == expected
            restored.close()
        state = s.fold().ledger.tenants["acme"]
        assert state.key_tags == {"k-dev": DEV} and state.keys["k-bare"] == "search"

    def test_an_older_store_with_plain_account_ids_still_loads(self):
        with tempfile.TemporaryDirectory() as tmp:
            s = Script()
            funded(s)
            s.msg("bind_key", api_key_id="k-old", account_id="search")
            shell = Shell(Path(tmp) / "p")
            shell.run(s.lines, 4)
            key = tenant_prefix(KEY, "acme") + b"k-old"
            assert msgspec.msgpack.decode(shell.store.db[key]) == "search"  # an untagged key: as before
            shell.close()
            store = PartitionStore(Path(tmp) / "p")
            state = store.load(shell.ledger.rules)["acme"]
            assert state.keys == {"k-old": "search"} and state.key_tags == {}
            assert not state.policy.require_key_registry
            store.close()


def critical_setup(s: Script, **allocate) -> None:
    """search (budget 100, rate limit at 90 %) with a dev key, an untagged key and a prod key,
    a sub-team with its own dev key, and another team's key."""
    s.purchase(1000)
    s.open("org", "acme")
    s.open("search", "org")
    s.open("ranking", "search")
    s.open("ads", "org")
    s.allocate("acme", "org", 500)
    s.allocate("org", "search", 100, on_critical=RATE_LIMIT, **allocate)
    s.msg("bind_key", api_key_id="k-dev", account_id="search", **DEV)
    s.msg("bind_key", api_key_id="k-bare", account_id="search")
    s.msg("bind_key", api_key_id="k-prod", account_id="search", **PROD)
    s.msg("bind_key", api_key_id="k-rank", account_id="ranking", env="staging")
    s.msg("bind_key", api_key_id="k-ads", account_id="ads", env="dev")


def enforcement(result) -> list[outputs.Enforcement]:
    return [o for o in result.outputs if type(o) is outputs.Enforcement]


def threshold_alerts(result) -> list[outputs.Alert]:
    return [o for o in result.outputs if type(o) is outputs.Alert and o.type == "threshold"]


class TestCriticalAction:
    def test_the_90_percent_alert_carries_the_action_and_non_prod_keys_are_limited(self):
        # given an account whose allocation asks for a rate limit at its critical threshold
        s = Script()
        critical_setup(s)
        # when its usage reaches 50, 70, then 90 %
        s.use(None, 50, api_key_id="k-prod")
        s.use(None, 20, api_key_id="k-dev")
        assert enforcement(s.fold()) == []
        s.use(None, 20, api_key_id="k-rank")
        r = s.fold()
        # then only the 90 % alert carries the seed's action
        alerts = [(a.threshold, a.severity, a.action) for a in threshold_alerts(r) if a.account_id == "search"]
        assert alerts == [(50, "info", None), (70, "warning", None),
                          (90, "critical", {"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": 5}})]
        # and the enforcement record limits the keys under it whose env is not prod (sub-teams too)
        [record] = enforcement(r)
        assert (record.account_id, record.state) == ("search", "open")
        assert record.api_key_ids == ["k-bare", "k-dev", "k-prod", "k-rank"]
        assert record.rate_limits == {"k-bare": 5, "k-dev": 5, "k-rank": 5}
        assert r.summary()["enforcement"] == [{
            "account_id": "search", "state": "open", "reason": "critical threshold reached: non-prod keys rate-limited",
            "api_key_ids": ["k-bare", "k-dev", "k-prod", "k-rank"], "rate_limits": record.rate_limits}]
        assert r.summary()["alerts"][-1]["action"]["type"] == "rate_limit"

    def test_the_limit_is_lifted_when_the_alert_resolves(self):
        s = Script()
        critical_setup(s)
        s.use(None, 95, api_key_id="k-dev")
        s.allocate("org", "search", 100)  # a top-up: 95 of 200 is below 90 % (and 50 %)
        r = s.fold()
        records = enforcement(r)
        assert [(e.state, e.rate_limits) for e in records] == [("open", {"k-bare": 5, "k-dev": 5, "k-rank": 5}),
                                                                ("open", None)]
        assert records[-1].reason == "within budget"
        assert b"rate_limits" not in ENC.encode(records[-1])
        resolved = [a for a in threshold_alerts(r) if a.status == "resolved"]
        assert {a.threshold for a in resolved} == {50, 70, 90} and all(a.action is None for a in resolved)

    def test_the_limit_is_lifted_when_the_period_ends(self):
        s = Script()
        critical_setup(s, recurrence={"every": "month", "rollover_pct": 0})
        s.use(None, 92, api_key_id="k-dev", ts=at(days=5))
        s.tick(ts=at(days=31))  # 2026-12-02: a new monthly period
        r = s.fold()
        assert [(e.rate_limits, e.ts.month) for e in enforcement(r)] == [
            ({"k-bare": 5, "k-dev": 5, "k-rank": 5}, 11), (None, 12)]

    def test_no_action_without_on_critical_and_none_clears_it(self):
        s = Script()
        s.purchase(1000)
        s.open("search", "acme")
        s.allocate("acme", "search", 100)
        s.msg("bind_key", api_key_id="k-dev", account_id="search", **DEV)
        s.use(None, 91, api_key_id="k-dev")
        r = s.fold()
        assert enforcement(r) == [] and all(a.action is None for a in threshold_alerts(r))
        # an allocation that asks for it while the alert fires applies it at once; {"type": "none"} clears it
        s.allocate("acme", "search", 1, on_critical=RATE_LIMIT)
        s.allocate("acme", "search", 1)  # absent: kept
        s.allocate("acme", "search", 1, on_critical={"type": "none"})
        r = s.fold()
        assert [e.rate_limits for e in enforcement(r)] == [{"k-dev": 5}, None]

    def test_a_key_bound_while_the_limit_holds_is_limited_too(self):
        s = Script()
        critical_setup(s)
        s.use(None, 90, api_key_id="k-prod")
        s.msg("bind_key", api_key_id="k-new", account_id="ranking", env="test")
        s.msg("bind_key", api_key_id="k-dev", account_id="search", team="search", env="prod")  # now prod
        r = s.fold()
        assert [e.rate_limits for e in enforcement(r)] == [
            {"k-bare": 5, "k-dev": 5, "k-rank": 5},
            {"k-bare": 5, "k-dev": 5, "k-new": 5, "k-rank": 5},
            {"k-bare": 5, "k-new": 5, "k-rank": 5}]

    def test_a_hard_cap_still_blocks_at_100_and_keeps_the_limit_until_lifted(self):
        s = Script()
        critical_setup(s, cap="hard")
        s.use(None, 90, api_key_id="k-dev")
        s.use(None, 10, api_key_id="k-dev")
        s.allocate("org", "search", 100)
        r = s.fold()
        assert [(e.state, e.rate_limits) for e in enforcement(r)] == [
            ("open", {"k-bare": 5, "k-dev": 5, "k-rank": 5}),
            ("blocked", {"k-bare": 5, "k-dev": 5, "k-rank": 5}),
            ("open", None)]
        assert [a.action for a in threshold_alerts(r) if a.status == "firing" and a.threshold >= 90] == [
            {"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": 5}}, {"type": "block"}]

    def test_on_critical_must_be_a_known_action(self):
        s = Script()
        s.purchase(100)
        s.open("search", "acme")
        s.allocate("acme", "search", 1, on_critical={"type": "rate_limit", "params": {"max_rps": 0}})
        s.allocate("acme", "search", 1, on_critical={"type": "rate_limit", "params": {"scope": "prod", "max_rps": 1}})
        s.allocate("acme", "search", 1, on_critical={"type": "rate_limit"})
        s.allocate("acme", "search", 1, on_critical={"type": "throttle"})
        s.allocate("acme", "search", 1, on_critical={"type": "rate_limit", "params": {"max_rps": 3}})
        r = s.fold()
        assert len(r.rejected) == 4
        assert r.ledger.tenants["acme"].accounts["search"].critical_rps == 3


def test_set_policy_and_the_additions_decode_and_encode():
    line = (b'{"type":"bind_key","id":"b","tenant_id":"t","ts":"2026-11-01T00:00:00Z","api_key_id":"k",'
            b'"account_id":"a","env":"dev","team":"x"}')
    message = wire.decode(line)
    assert type(message) is wire.BindKey and (message.env, message.team, message.project) == ("dev", "x", None)
    policy = wire.decode(b'{"type":"set_policy","id":"p","tenant_id":"t","ts":"2026-11-01T00:00:00Z",'
                         b'"require_key_registry":true}')
    assert type(policy) is wire.SetPolicy and policy.require_key_registry is True
    assert "set_policy" in wire.COMMAND_TYPES
