"""Every report on generated history with a known answer, on chdb and (where there is one) a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from finops.errors import FinopsError
from finops.projections import clickhouse, reports
from finops.projections.query import LocalReader, QueryServer, endpoint_file
from report_data import History, noon

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
        assert (a["available"], a["daily_burn"], a["runway_days"]) == (55, 10, 5.5)
        # the unapplied allocation (window end Nov 20) does not count
        assert (a["runs_out_on"], a["window_end"], a["runs_out_before_window_end"]) == (
            date(2026, 11, 19), date(2026, 11, 25), True)
        assert (b["available"], b["daily_burn"], b["runway_days"]) == (100, 1, 100)
        assert (b["runs_out_on"], b["runs_out_before_window_end"]) == (date(2027, 2, 22), False)


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


def test_holt_gives_no_forecast_on_under_a_week_of_history():
    from finops.projections.reports import HOLT_MIN_DAYS, holt_month_end

    assert holt_month_end([5.0, 9.0, 7.0], 21.0, days_left=10) == (None, None, None)
    assert holt_month_end([7.0] * HOLT_MIN_DAYS, 21.0, days_left=10) == (91.0, 91.0, 91.0)
    assert holt_month_end([5.0, 9.0, 7.0], 21.0, days_left=0) == (21.0, 21.0, 21.0)  # the month is over
