"""`finops demo` through its library function, on the session's broker and chdb: the usage lies in
the days that end now, so the reports as of today show it; every tenant and team has a runway date;
every tenant reconciles; with serve, the HTTP API answers with the token it printed."""

from __future__ import annotations

import json
import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from finops import demo, stack
from finops.projections import clickhouse, reports
from finops.projections.query import LocalReader

pytestmark = pytest.mark.integration


def _rows(columns_rows: tuple[list[str], list[tuple]]) -> list[dict]:
    columns, rows = columns_rows
    return [dict(zip(columns, r)) for r in rows]


def test_the_demo_s_history_ends_now_and_every_scope_has_a_runway_date(settings):
    started = datetime.now(timezone.utc)
    result = demo.run(settings, usage=900, tenants=2, days=14, log=lambda _m: None)
    assert result.matches_fold and result.reconciled and result.ok
    today = datetime.now(timezone.utc).date()
    assert result.as_of == today.isoformat()

    runway = _rows(result.runway)
    for tenant in result.workload.tenants:
        scopes = {r["account_id"]: r for r in runway if r["tenant_id"] == tenant}
        assert {(a, r["kind"]) for a, r in scopes.items()} == {
            (tenant, "tenant"), ("org", "org"), ("search", "team"), ("support", "team")}
        for account, row in scopes.items():
            assert row["daily_burn"] > 0 and row["runs_out_on"] is not None, (tenant, account)
            assert row["runs_out_on"] >= today
        # the tenant's pool: everything still available anywhere in its tree (finops.balances.v1)
        assert scopes[tenant]["capacity"] == sum(Decimal(b[3]) for b in result.balances if b[0] == tenant)

    reconcile = _rows(result.reconcile)
    assert {r["tenant_id"] for r in reconcile} == set(result.workload.tenants)
    for row in reconcile:
        assert (row["purchased"], row["difference"], row["balanced"], row["matches_ledger"]) == (10_000, 0, True, True)

    # the usage spans the 14 days that end now: the first on the day 14 days ago, the last one step
    # (14 days / 900 usages) before now
    client = clickhouse.connect(settings)
    try:
        reader = LocalReader(client, owned=False)
        _, [(first, last)] = reader.query(
            "SELECT min(ts), max(ts) FROM usage_events WHERE tenant_id IN {t:Array(String)}",
            {"t": result.workload.tenants})
        assert first.date() == (started - timedelta(days=14)).date()
        step = timedelta(days=14) / 900
        assert started - step - timedelta(minutes=1) < last.replace(tzinfo=timezone.utc) <= datetime.now(timezone.utc)
        # and the reports as of today read it: the forecast has Holt's columns (it needs a week)
        forecast = reports.run(reader, "forecast", reports.Params(tenant=result.workload.tenants[0]), today)
        [row] = [dict(zip(forecast.columns, r)) for r in forecast.rows]
        assert row["holt_month_end"] is not None and row["month_to_date"] > 0
    finally:
        client.close()


def test_serve_keeps_the_api_running_with_a_token_until_stopped(settings):
    settings = settings.model_copy(update={"api_port": stack.free_port_pair()})
    stop = threading.Event()
    seen: dict = {}

    def serving(result: demo.DemoResult, where: demo.Serving) -> None:
        try:
            seen["url"] = where.url
            with urllib.request.urlopen(f"{where.url}healthz", timeout=10) as answer:
                seen["health"] = answer.status
            tenant = result.workload.tenants[0]
            request = urllib.request.Request(f"{where.url}v1/tenants/{tenant}/reports/runway",
                                             headers={"Authorization": f"Bearer {where.token}"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                seen["runway"] = json.loads(answer.read())["rows"]
        finally:
            stop.set()  # end the demo (Ctrl-C does it from a terminal)

    result = demo.run(settings, usage=300, tenants=1, days=2, log=lambda _m: None, serve=serving, stop=stop)
    assert result.ok
    assert seen["url"] == f"http://127.0.0.1:{settings.api_port}/"
    assert seen["health"] == 200
    served = {r["account_id"]: r for r in seen["runway"]}
    printed = {r["account_id"]: r for r in _rows(result.runway)}
    assert set(printed) <= set(served)
    for account, row in printed.items():
        assert served[account]["runs_out_on"] == row["runs_out_on"].isoformat()
