"""Every report on generated history with a known answer, on chdb and (where there is one) a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

import msgspec

from finops.errors import FinopsError
from finops.processors.fold import fold_lines
from finops.projections import clickhouse, reports
from finops.projections.query import LocalReader, QueryServer, endpoint_file
from finops.schemas import wire
from finops.schemas.money import credits_str
from report_data import History, ninety_days, noon, through_the_ledger

TO = date(2026, 11, 14)
UTC = timezone.utc


@pytest.fixture
def client(clickhouse_settings):
    return clickhouse.connect(clickhouse_settings)


def run(client, name: str, **params) -> list[dict]:
    report = reports.run(LocalReader(client, owned=False), name, reports.Params(**params), TO)
    return [dict(zip(report.columns, row)) for row in report.rows]


def constant_burn(client) -> None:
    """Account a spends 10 a day and b 1 a day since Oct 1; both windows end Nov 25."""
    ends = datetime(2026, 11, 25, tzinfo=UTC)
    (History("const")
     .daily(date(2026, 10, 1), TO, "a", 10).daily(date(2026, 10, 1), TO, "b", 1)
     .balance("a", 80, noon(TO - timedelta(days=3))).balance("a", 55, noon(TO)).balance("b", 100, noon(TO))
     .allocation("a", 500, noon(date(2026, 10, 1)), ends_at=ends)
     .allocation("b", 500, noon(date(2026, 10, 1)), ends_at=ends)
     .allocation("a", 999, noon(date(2026, 10, 2)), ends_at=datetime(2026, 11, 20, tzinfo=UTC), applied=False)
     .write(client))


class TestConstantBurn:
    def test_burn_rate_is_the_constant(self, client):
        constant_burn(client)
        rows = {(r["scope"], r["account_id"]): r for r in run(client, "burn-rate", tenant="const")}
        assert (rows[("account", "a")]["last_day"], rows[("account", "a")]["avg_7d"],
                rows[("account", "a")]["avg_14d"]) == (10, 10, 10)
        assert (rows[("tenant", "")]["avg_7d"], rows[("tenant", "")]["total"]) == (11, 11 * 30)

    def test_forecast_is_exact_for_both_methods(self, client):
        constant_burn(client)
        [tenant] = run(client, "forecast", tenant="const")
        # Nov 1..14 spent 14 x 11; 16 days left at 11 a day
        assert (tenant["month_to_date"], tenant["avg_daily_14d"], tenant["days_left"]) == (154, 11, 16)
        assert tenant["forecast_month_end"] == 330
        assert (tenant["holt_month_end"], tenant["holt_low"], tenant["holt_high"]) == (330, 330, 330)
        [a] = run(client, "forecast", tenant="const", account="a")
        assert (a["account_id"], a["forecast_month_end"], a["holt_month_end"]) == ("a", 300, 300)

    def test_runway_against_the_window_end(self, client):
        constant_burn(client)
        rows = {r["account_id"]: r for r in run(client, "runway", tenant="const")}
        a, b = rows["a"], rows["b"]
        # leaves: the subtree is the account itself, so both views agree
        assert (a["capacity"], a["daily_burn"], a["burn_days"], a["runway_days"]) == (55, 10, 14, 5.5)
        assert (a["own_available"], a["own_daily_burn"], a["own_runway_days"]) == (55, 10, 5.5)
        # the unapplied allocation (window end Nov 20) does not count
        assert (a["runs_out_on"], a["window_end"], a["runs_out_before_window_end"]) == (
            date(2026, 11, 19), date(2026, 11, 25), True)
        assert a["own_runs_out_on"] == date(2026, 11, 19)
        assert (b["capacity"], b["daily_burn"], b["runway_days"]) == (100, 1, 100)
        assert (b["runs_out_on"], b["runs_out_before_window_end"]) == (date(2027, 2, 22), False)

    def test_forecast_accuracy_is_exact_on_a_constant_burn(self, client):
        constant_burn(client)
        rows = run(client, "forecast-accuracy", tenant="const", start=date(2026, 10, 1))
        # October is the only month over by Nov 14; 11 a day every day: every forecast is the actual
        assert [(r["month"], r["day"], r["as_of"]) for r in rows] == [
            (date(2026, 10, 1), 7, date(2026, 10, 7)), (date(2026, 10, 1), 14, date(2026, 10, 14)),
            (date(2026, 10, 1), 21, date(2026, 10, 21))]
        for r in rows:
            assert r["actual"] == 31 * 11
        day7, day14, day21 = rows
        # day 7: 7 days spent (77) and the 14-day average counts the 7 days of September without spend
        assert (day7["month_to_date"], day7["avg_daily_14d"], day7["days_left"]) == (77, Decimal("5.5"), 24)
        assert day7["formula"] == 77 + Decimal("5.5") * 24 == 209
        assert day7["formula_error_pct"] == round((209 - 341) / 341 * 100, 2)
        assert day7["holt"] == 341 and day7["holt_error_pct"] == 0  # 7 flat days: Holt extends them
        assert (day14["formula"], day14["holt"], day21["formula"], day21["holt"]) == (341, 341, 341, 341)
        assert day14["formula_error_pct"] == day21["formula_error_pct"] == 0


class TestAnomalies:
    def test_exactly_the_planted_spike_is_flagged(self, client):
        spike = date(2026, 11, 10)
        noisy = lambda d: 5 + ((d.toordinal() % 3) - 1) * 0.5  # noqa: E731 - 4.5, 5, 5.5, ...
        history = History("spiky").daily(date(2026, 9, 1), TO, "flat", 3)
        history.daily(date(2026, 9, 1), spike - timedelta(days=1), "s", noisy)
        history.spend(spike, "s", 50).daily(spike + timedelta(days=1), TO, "s", noisy).write(client)
        flagged = run(client, "anomalies", tenant="spiky", start=date(2026, 10, 1))
        assert [(r["account_id"], r["day"]) for r in flagged] == [("s", spike)]
        assert flagged[0]["credits"] == 50 and flagged[0]["z"] > 3

    def test_a_lower_threshold_flags_more_and_no_history_flags_nothing(self, client):
        history = History("short").daily(TO - timedelta(days=3), TO, "s", lambda d: d.day)
        history.write(client)
        assert run(client, "anomalies", tenant="short") == []  # 4 days: below the 7-day minimum
        assert run(client, "anomalies", tenant="short", min_days=2, z=0.5) != []


def labelled(client) -> None:
    day = date(2026, 11, 3)
    (History("labels")
     .spend(day, "u", 3, requests=10, cost_center="cc-1", team="search", model="gpt-4o", key="k1")
     .spend(day, "u", 2, requests=5, cost_center="cc-2", team="ads", model="claude", key="k2")
     .spend(day, "v", 1, requests=7, cost_center="cc-3", team="ads", project="p-2", model="claude",
            operation="embed", key="k2")
     .write(client))


class TestAttribution:
    def test_chargeback_with_a_mapping(self, client, tmp_path):
        labelled(client)
        mapping = tmp_path / "gl.csv"
        mapping.write_text("cost_center,gl_account\ncc-1,GL-100\ncc-2,GL-100\n")
        rows = run(client, "chargeback", tenant="labels", mapping=reports.read_mapping(str(mapping)))
        by_gl: dict[str, Decimal] = {}
        for r in rows:
            by_gl[r["gl_account"]] = by_gl.get(r["gl_account"], 0) + r["credits"]
        assert by_gl == {"GL-100": 40, "unmapped": 7}
        assert sum(r["requests"] for r in rows) == 22
        assert sum(r["share_pct"] for r in rows) == pytest.approx(100)

    def test_showback_by_team_and_project(self, client):
        labelled(client)
        got = {(r["team"], r["project"]): (r["credits"], r["requests"]) for r in run(client, "showback",
                                                                                      tenant="labels")}
        assert got == {("search", "p-1"): (30, 10), ("ads", "p-1"): (10, 5), ("ads", "p-2"): (7, 7)}

    def test_top_drivers_and_cost_per_request(self, client):
        labelled(client)
        got = {(r["driver"], r["value"]): (r["credits"], r["requests"], r["cost_per_request"])
               for r in run(client, "top-drivers", tenant="labels")}
        assert got[("model", "gpt-4o")] == (30, 10, 3)
        assert got[("model", "claude")] == (17, 12, Decimal("17") / 12 // Decimal("0.000001") * Decimal("0.000001"))
        assert got[("operation", "embed")] == (7, 7, 1)
        assert got[("api_key", "k2")][:2] == (17, 12)

    def test_focus_columns_and_costs(self, client):
        labelled(client)
        rows = run(client, "focus", tenant="labels", currency="EUR", credit_price=Decimal("0.5"))
        for column in ("BilledCost", "EffectiveCost", "BillingCurrency", "ChargePeriodStart", "ChargePeriodEnd",
                       "ChargeCategory", "ConsumedQuantity", "ConsumedUnit", "ServiceName", "SkuId",
                       "SubAccountId", "BillingAccountId", "Tags"):
            assert column in rows[0]
        assert sum(r["BilledCost"] for r in rows) == Decimal("23.5")
        assert {r["BillingCurrency"] for r in rows} == {"EUR"}
        assert {r["ChargePeriodStart"] for r in rows} == {"2026-11-03T00:00:00Z"}
        assert json.loads(rows[0]["Tags"])["cost_center"].startswith("cc-")


class TestMapping:
    @pytest.mark.parametrize("text, problem", [
        ("cc,gl\nx,y\n", "needs the columns"),
        ("cost_center,gl_account\ncc-1,\n", "must not be empty"),
        ("cost_center,gl_account\ncc-1,A\ncc-1,B\n", "mapped twice"),
    ])
    def test_bad_mapping_files_are_one_line_errors(self, tmp_path, text, problem):
        path = tmp_path / "m.csv"
        path.write_text(text)
        with pytest.raises(FinopsError, match=problem):
            reports.read_mapping(str(path))


class TestFromAnotherProcess:
    def test_the_cli_reads_through_the_owner_of_the_embedded_clickhouse(self, client, clickhouse_settings,
                                                                        tmp_path):
        """`finops report` in another process: chdb is held here, so it asks this process's endpoint."""
        labelled(client)
        server = QueryServer(clickhouse_settings, LocalReader(client, owned=False)).start()
        env = {**os.environ, "FINOPS_CLICKHOUSE_URL": clickhouse_settings.clickhouse_dsn,
               "FINOPS_CLICKHOUSE_DATABASE": clickhouse_settings.clickhouse_database}
        try:
            if endpoint_file(clickhouse_settings) is not None:
                assert endpoint_file(clickhouse_settings).exists()
            args = [sys.executable, "-m", "finops.cli", "report"]
            got = subprocess.run([*args, "showback", "--tenant", "labels", "--from", "2026-11-01", "--to",
                                  "2026-11-14", "--format", "json", "--plot", str(tmp_path / "s.png")],
                                 capture_output=True, text=True, env=env, timeout=120)
            assert got.returncode == 0, got.stderr
            assert sum(Decimal(r["credits"]) for r in json.loads(got.stdout)) == 47
            assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
            parquet = tmp_path / "focus.parquet"
            got = subprocess.run([*args, "focus", "--tenant", "labels", "--from", "2026-11-01", "--to", "2026-11-14",
                                  "--format", "parquet", "--output", str(parquet)],
                                 capture_output=True, text=True, env=env, timeout=120)
            assert got.returncode == 0, got.stderr
            import pyarrow.parquet as pq

            assert sum(pq.read_table(parquet).column("BilledCost").to_pylist()) == 47
            bad = subprocess.run([*args, "burn-rate", "--to", "2026-02-30"], capture_output=True, text=True,
                                 env=env, timeout=60)
            assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        finally:
            server.stop()


    def test_plan_reconcile_and_accuracy_from_the_cli(self, client, clickhouse_settings, tmp_path):
        _plan_tree(client, "cli-plan")
        server = QueryServer(clickhouse_settings, LocalReader(client, owned=False)).start()
        env = {**os.environ, "FINOPS_CLICKHOUSE_URL": clickhouse_settings.clickhouse_dsn,
               "FINOPS_CLICKHOUSE_DATABASE": clickhouse_settings.clickhouse_database}
        args = [sys.executable, "-m", "finops.cli", "report"]
        try:
            out = tmp_path / "plan.jsonl"
            got = subprocess.run([*args, "plan", "--tenant", "cli-plan", "--account", "org", "--method", "hybrid",
                                  "--reserve-pct", "50", "--to", "2026-11-14", "--format", "json", "--output",
                                  str(out)], capture_output=True, text=True, env=env, timeout=120)
            assert got.returncode == 0, got.stderr
            rows = json.loads(got.stdout)
            assert [(r["to_account"], r["credits"], r["reserve"]) for r in rows] == [
                ("t1", "231.000000", "346.500000"), ("t2", "115.500000", "346.500000"),
                ("t3", "0.000000", "346.500000")]
            commands = [json.loads(line) for line in out.read_text().splitlines()]
            assert [(c["id"], c["credits"]) for c in commands] == [
                ("plan:2026-12:t1", "231"), ("plan:2026-12:t2", "115.5")]
            assert "finops publish" in got.stderr
            bad = subprocess.run([*args, "plan", "--method", "lottery"], capture_output=True, text=True, env=env,
                                 timeout=60)
            assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
            got = subprocess.run([*args, "reconcile", "--tenant", "cli-plan", "--format", "csv"],
                                 capture_output=True, text=True, env=env, timeout=120)
            assert got.returncode == 0, got.stderr
            header, line = got.stdout.splitlines()
            assert dict(zip(header.replace('"', "").split(","), line.replace('"', "").split(",")))["balanced"] == "true"
            got = subprocess.run([*args, "forecast-accuracy", "--tenant", "cli-plan", "--to", "2026-11-30",
                                  "--format", "csv"], capture_output=True, text=True, env=env, timeout=120)
            assert got.returncode == 0, got.stderr
            assert got.stdout.splitlines()[0].split(",")[8:11] == ["formula", "holt", "actual"]
        finally:
            server.stop()


def test_holt_gives_no_forecast_on_under_a_week_of_history():
    from finops.projections.reports import HOLT_MIN_DAYS, holt_month_end

    assert holt_month_end([5.0, 9.0, 7.0], 21.0, days_left=10) == (None, None, None)
    assert holt_month_end([7.0] * HOLT_MIN_DAYS, 21.0, days_left=10) == (91.0, 91.0, 91.0)
    assert holt_month_end([5.0, 9.0, 7.0], 21.0, days_left=0) == (21.0, 21.0, 21.0)  # the month is over


class TestForecastAccuracy:
    def test_a_burn_that_starts_mid_month(self, client):
        """10 a day from Oct 3: by hand, the formula's average of 14 days still holds the days before
        the first spend; Holt needs 7 days of history and then extends the flat line exactly."""
        History("acc").daily(date(2026, 10, 3), TO, "a", 10).write(client)
        rows = {r["day"]: r for r in run(client, "forecast-accuracy", tenant="acc", start=date(2026, 9, 1))}
        assert sorted(rows) == [7, 14, 21]  # September had no spend: no rows; November is not over
        day7, day14, day21 = rows[7], rows[14], rows[21]
        actual = Decimal(29 * 10)  # Oct 3 .. 31
        assert {r["actual"] for r in rows.values()} == {actual}
        # Oct 7: 5 days spent; 50 / 14 = 3.571428 (6 decimals, cut); 24 days left
        assert (day7["month_to_date"], day7["avg_daily_14d"], day7["days_left"]) == (50, Decimal("3.571428"), 24)
        assert day7["formula"] == Decimal("135.714272")
        assert day7["formula_error_pct"] == round(float((Decimal("135.714272") - actual) / actual * 100), 2)
        assert day7["holt"] is None and day7["holt_error_pct"] is None  # 5 days of history
        # Oct 14: 12 days spent, 120 / 14 = 8.571428, 17 days left; Holt: 120 + 17 x 10
        assert (day14["month_to_date"], day14["formula"], day14["holt"]) == (120, Decimal("265.714276"), 290)
        assert day14["holt_error_pct"] == 0
        # Oct 21: 14 full days of 10 in the window: both are exact
        assert (day21["formula"], day21["holt"], day21["formula_error_pct"]) == (290, 290, 0)

    def test_each_forecast_is_what_the_forecast_report_said_that_day(self, client):
        wobbly = lambda d: 20 + (d.toordinal() * 7919 % 13) - d.day / 4  # noqa: E731 - noisy, quarter credits
        History("wob").daily(date(2026, 7, 20), TO, "a", wobbly).daily(date(2026, 8, 5), TO, "b", 3).write(client)
        for account in ("", "a"):
            def spent(d: date) -> Decimal:
                return Decimal(str(wobbly(d))) + (3 if account == "" and d >= date(2026, 8, 5) else 0)

            rows = run(client, "forecast-accuracy", tenant="wob", account=account, start=date(2026, 8, 1))
            assert {r["month"] for r in rows} == {date(2026, 8, 1), date(2026, 9, 1), date(2026, 10, 1)}
            for r in rows:
                forecast = reports.run(LocalReader(client, owned=False), "forecast",
                                       reports.Params(tenant="wob", account=account), r["as_of"])
                [then] = [dict(zip(forecast.columns, row)) for row in forecast.rows]
                assert (r["formula"], r["month_to_date"], r["days_left"], r["holt"]) == (
                    then["forecast_month_end"], then["month_to_date"], then["days_left"], then["holt_month_end"])
                assert r["holt"] is not None
                days = (reports._next_month(r["month"]) - r["month"]).days
                assert r["actual"] == sum(spent(r["month"] + timedelta(days=i)) for i in range(days))


def _subtree_workload(tenant: str) -> list[bytes]:
    """A tenant of 10,000 credits: org 6,000, team-a and team-b 1,000 each, team-c 100; their users
    have no grants and spend every day at noon (a 30, b 20 from Nov 1, c 5 from Nov 11): all of it
    paid by the teams' grants, nothing by the root's own or the org's own grants."""
    def msg(ts: str, type_: str, id_: str, **fields) -> bytes:
        return msgspec.json.encode({"type": type_, "id": id_, "tenant_id": tenant, "ts": ts, **fields})

    setup = "2026-10-31T09:00:00Z"
    lines = [msg(setup, "purchase", "buy", credits=10_000),
             msg(setup, "open_account", "open-org", account_id="org", kind="org", parent_id=tenant),
             msg(setup, "allocate", "alloc-org", from_account=tenant, to_account="org", credits=6_000)]
    for team, amount in (("team-a", 1_000), ("team-b", 1_000), ("team-c", 100)):
        lines += [msg(setup, "open_account", f"open-{team}", account_id=team, kind="team", parent_id="org"),
                  msg(setup, "allocate", f"alloc-{team}", from_account="org", to_account=team, credits=amount),
                  msg(setup, "open_account", f"open-{team}-u", account_id=f"{team}-u", kind="user", parent_id=team)]
    day = date(2026, 11, 1)
    while day <= TO:
        for team, amount, since in (("team-a", 30, 1), ("team-b", 20, 1), ("team-c", 5, 11)):
            if day.day >= since:
                lines.append(msg(f"{day}T12:00:00Z", "usage", f"req-{team}-{day}", account_id=f"{team}-u",
                                 api_key_id="k", model_name="m", operation_type="chat", units_consumed=1,
                                 credits_consumed=amount))
        day += timedelta(days=1)
    return lines


class TestSubtreeRunway:
    def test_the_tenant_runs_out_when_everything_it_bought_is_spent(self, client):
        through_the_ledger(client, _subtree_workload("tree"), token="tree")
        rows = {r["account_id"]: r for r in run(client, "runway", tenant="tree")}
        assert set(rows) == {"tree", "org", "team-a", "team-b", "team-c", "team-a-u", "team-b-u", "team-c-u"}
        root = rows["tree"]
        # spent by Nov 14: a 14 x 30 = 420, b 14 x 20 = 280, c 4 x 5 = 20: 720 of 10,000
        # the whole tenant: capacity 9,280 at 720 / 14 a day = 180.44 days: Nov 14 + 180 = 2027-05-13
        assert (root["kind"], root["capacity"], root["burn_days"]) == ("tenant", 9_280, 14)
        assert root["daily_burn"] == Decimal("51.428571")
        assert (root["runway_days"], root["runs_out_on"]) == (round(9_280 * 14 / 720, 2), date(2027, 5, 13))
        # its own grants: 4,000 that nobody drew from: no burn, no date
        assert (root["own_available"], root["own_daily_burn"], root["own_runway_days"], root["own_runs_out_on"]) == (
            4_000, 0, None, None)
        # the org: 6,000 - 2,100 handed down = 3,900, plus what the teams hold (580 + 720 + 80)
        org = rows["org"]
        assert (org["capacity"], org["runway_days"], org["runs_out_on"]) == (5_280, 102.67, date(2027, 2, 24))
        assert org["own_daily_burn"] == 0
        a, b, c = rows["team-a"], rows["team-b"], rows["team-c"]
        # team-a: 580 left at 30 a day = 19.33 days: Dec 3; team-b: 720 at 20 = 36 days: Dec 20
        assert (a["capacity"], a["daily_burn"], a["runway_days"], a["runs_out_on"]) == (
            580, 30, 19.33, date(2026, 12, 3))
        assert (b["capacity"], b["daily_burn"], b["runway_days"], b["runs_out_on"]) == (720, 20, 36, date(2026, 12, 20))
        # team-c spends since Nov 11: 4 days, not 14 (its 5 a day is not diluted): 80 / 5 = 16 days
        assert (c["burn_days"], c["daily_burn"], c["runway_days"], c["runs_out_on"]) == (
            4, 5, 16, date(2026, 11, 30))
        # the teams pay from their own grants: own and subtree views agree
        assert (a["own_daily_burn"], a["own_runs_out_on"]) == (30, date(2026, 12, 3))
        # a user with no grant: nothing to run out of, it runs dry today
        assert (rows["team-a-u"]["capacity"], rows["team-a-u"]["runs_out_on"]) == (0, TO)

    def test_one_account_is_its_subtree(self, client):
        through_the_ledger(client, _subtree_workload("tree1"), token="tree1")
        [org] = run(client, "runway", tenant="tree1", account="org")
        assert (org["account_id"], org["capacity"], org["runs_out_on"]) == ("org", 5_280, date(2027, 2, 24))


class TestReconcile:
    def test_a_ninety_day_history_reconciles_every_day(self, client):
        lines = ninety_days("ninety", date(2026, 8, 1))
        folded = fold_lines(lines)
        assert not folded.rejected
        through_the_ledger(client, lines, token="ninety")
        [row] = run(client, "reconcile", tenant="ninety")
        totals = folded.summary()["totals"]
        state = folded.ledger.tenants["ninety"]
        assert {k: credits_str(int(row[k] * 1_000_000)) for k in totals} == totals
        assert row["available"] + row["reserved"] == Decimal(
            sum(a.available + a.reserved for a in state.accounts.values())) / 1_000_000
        assert row["expired"] > 0 and row["overage"] > 0  # the history has both
        assert (row["difference"], row["balanced"], row["matches_ledger"]) == (0, True, True)
        assert row["accounts"] == len(state.accounts)
        for day in range(0, 90, 9):  # and as of any past day
            [then] = reports.run(LocalReader(client, owned=False), "reconcile", reports.Params(tenant="ninety"),
                                 date(2026, 8, 1) + timedelta(days=day)).rows
            assert dict(zip(["balanced", "matches_ledger"], then[8:12:3])) == {
                "balanced": True, "matches_ledger": True}, (day, then)

    def test_a_returned_expiry_is_not_expired(self, client):
        def msg(ts: str, type_: str, id_: str, **fields) -> bytes:
            return msgspec.json.encode({"type": type_, "id": id_, "tenant_id": "ret", "ts": ts, **fields})

        through_the_ledger(client, [
            msg("2026-11-01T00:00:00Z", "purchase", "buy", credits=100),
            msg("2026-11-01T00:00:01Z", "open_account", "open", account_id="t", kind="team", parent_id="ret"),
            msg("2026-11-01T00:00:02Z", "allocate", "a1", from_account="ret", to_account="t", credits=30,
                ends_at="2026-11-05T00:00:00Z", on_expiry="return"),
            msg("2026-11-01T00:00:03Z", "allocate", "a2", from_account="ret", to_account="t", credits=20,
                ends_at="2026-11-05T00:00:00Z"),
            msg("2026-11-06T00:00:00Z", "tick", "tick")], token="ret")
        [row] = run(client, "reconcile", tenant="ret")
        assert (row["purchased"], row["available"], row["expired"], row["balanced"]) == (100, 80, 20, True)

    def test_a_missing_entry_or_balance_shows(self, client):
        lines = _subtree_workload("gap")
        through_the_ledger(client, lines, token="gap")
        [row] = run(client, "reconcile", tenant="gap")
        assert (row["balanced"], row["matches_ledger"], row["accounts_differing"]) == (True, True, 0)
        # a consume entry whose balance was never published: consumed grows, nothing else does
        History("gap").spend(TO, "team-a-u", 2.5, funded_by="team-a").write(client)
        [row] = run(client, "reconcile", tenant="gap")
        assert (row["difference"], row["balanced"]) == (Decimal("-2.5"), False)
        assert (row["accounts_differing"], row["matches_ledger"]) == (2, False)  # the payer and the user


def _plan_lines(tenant: str) -> list[bytes]:
    """1,000 credits; the org 700; teams t1 (with a user u1), t2 and t3 under it, with no grants: the
    org pays u1's 2 and t2's 1, and 4 of its own usage."""
    def msg(ts: str, type_: str, id_: str, **fields) -> bytes:
        return msgspec.json.encode({"type": type_, "id": id_, "tenant_id": tenant, "ts": ts, **fields})

    use = dict(api_key_id="k", model_name="m", operation_type="chat", units_consumed=1)
    return [
        msg("2026-11-01T00:00:00Z", "purchase", "buy", credits=1_000),
        msg("2026-11-01T00:00:01Z", "open_account", "o-org", account_id="org", kind="org", parent_id=tenant),
        msg("2026-11-01T00:00:02Z", "allocate", "a-org", from_account=tenant, to_account="org", credits=700),
        *(msg("2026-11-01T00:00:03Z", "open_account", f"o-{t}", account_id=t, kind="team", parent_id="org")
          for t in ("t1", "t2", "t3")),
        msg("2026-11-01T00:00:04Z", "open_account", "o-u1", account_id="u1", kind="user", parent_id="t1"),
        msg("2026-11-02T10:00:00Z", "usage", "r1", account_id="u1", credits_consumed=2, **use),
        msg("2026-11-03T10:00:00Z", "usage", "r2", account_id="t2", credits_consumed=1, **use),
        msg("2026-11-03T11:00:00Z", "usage", "r3", account_id="org", credits_consumed=4, **use),
    ]


def _plan_tree(client, tenant: str) -> None:
    through_the_ledger(client, _plan_lines(tenant), token=tenant)


class TestPlan:
    def test_three_methods_split_the_parent_s_available(self, client):
        _plan_tree(client, "pl")
        got = {}
        for method in reports.PLAN_METHODS:
            rows = run(client, "plan", tenant="pl", account="org", method=method)
            assert [r["to_account"] for r in rows] == ["t1", "t2", "t3"]
            assert {(r["month"], r["budget"]) for r in rows} == {(date(2026, 12, 1), 693)}  # 700 - 7 used
            got[method] = [r["credits"] for r in rows]
            assert sum(got[method]) + rows[0]["reserve"] == 693  # to the micro-credit
        # the subtree's usage: t1's user spent 2, t2 1, t3 nothing (the org's own 4 is no child's)
        assert [r["usage"] for r in rows] == [2, 1, 0]
        assert got["flat"] == [Decimal("231.000000")] * 3
        assert got["usage"] == [462, 231, 0]
        # hybrid: 10 % = 69.3 stays at the org; 623.7 by usage
        assert got["hybrid"] == [Decimal("415.8"), Decimal("207.9"), 0]

    def test_a_budget_and_a_reserve(self, client):
        _plan_tree(client, "pl2")
        rows = run(client, "plan", tenant="pl2", account="org", method="hybrid", budget=Decimal("100"),
                   reserve_pct=Decimal("25"))
        assert [(r["credits"], r["budget"], r["reserve"]) for r in rows] == [
            (50, 100, 25), (25, 100, 25), (0, 100, 25)]
        # shares that do not divide: the leftover micro-credit goes to the largest remainder
        rows = run(client, "plan", tenant="pl2", account="org", method="flat", budget=Decimal("0.000002"))
        assert [r["credits"] for r in rows] == [Decimal("0.000001"), Decimal("0.000001"), 0]
        # by default, the children of the tenant root
        [org] = run(client, "plan", tenant="pl2", method="flat")
        assert (org["from_account"], org["to_account"], org["credits"]) == ("pl2", "org", 300)

    def test_bad_parameters_are_one_line_errors(self, client):
        for params, problem in (({"method": "random"}, "unknown plan method"),
                                ({"reserve_pct": Decimal(101)}, "not a percentage"),
                                ({"budget": Decimal("0.0000001")}, "at most 6 decimals")):
            with pytest.raises(FinopsError, match=problem):
                run(client, "plan", tenant="x", **params)

    def test_the_commands_are_next_month_s_allocations_the_ledger_applies(self, client):
        _plan_tree(client, "pl3")
        report = reports.run(LocalReader(client, owned=False), "plan",
                             reports.Params(tenant="pl3", account="org", method="hybrid"), TO)
        now = datetime(2026, 11, 14, 16, 30, tzinfo=UTC)
        lines = reports.plan_commands(report, now)
        assert len(lines) == 2  # t3 gets nothing: no command
        first = json.loads(lines[0])
        assert first == {"type": "allocate", "id": "plan:2026-12:t1", "tenant_id": "pl3", "ts": "2026-11-14T16:30:00Z",
                         "from_account": "org", "to_account": "t1", "credits": "415.8",
                         "starts_at": "2026-12-01T00:00:00Z", "ends_at": "2027-01-01T00:00:00Z",
                         "on_expiry": "return"}
        assert all(isinstance(json.loads(line)["credits"], str) for line in lines)  # decimal strings, no floats
        assert all(not isinstance(wire.decode(line), wire.Rejection) for line in lines)
        # applied after the history they were planned from: the org keeps its 10 %
        history = _plan_lines("pl3")
        folded = fold_lines([*history, *lines])
        assert not folded.rejected
        accounts = folded.ledger.tenants["pl3"].accounts
        assert (accounts["org"].available, accounts["t1"].available, accounts["t2"].available) == (
            69_300_000, 415_800_000, 207_900_000)
        # the same file again changes nothing; another plan for the same month is refused
        again = fold_lines([*history, *lines, *lines])
        assert not again.rejected
        other = reports.plan_commands(report, now + timedelta(hours=1))
        assert {r.reason for r in fold_lines([*history, *lines, *other]).rejected} == {"duplicate_id_conflict"}


def test_split_is_exact():
    assert reports.split(10, [1, 1, 1]) == [4, 3, 3]
    assert reports.split(10, [0, 0]) == [5, 5]  # no weights: equal shares
    assert reports.split(7, [2, 1, 0]) == [5, 2, 0]  # 4.67, 2.33: the leftover to the larger remainder
    assert reports.split(0, [3, 4]) == [0, 0]
    # 10^15 + 1 over 7 : 11 : 13 (of 31): 225806451612903.45, 354838709677419.71, 419354838709677.84
    assert reports.split(10**15 + 1, [7, 11, 13]) == [225806451612903, 354838709677420, 419354838709678]
