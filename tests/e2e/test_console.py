"""The console in a real browser: Debian's chromium driven by Playwright's Python API.

Given a seeded workload folded by the ledger (``Pipeline`` with the sink and the API in this
process), each page loads without console errors, the numbers shown equal the API's answers,
the tree shows every account, the burn-down chart is drawn, and a tenant's token sees only
its tenant. Screenshots go to ``build/test-artifacts/console/``. Nothing is downloaded: the
tests skip, saying why, where no chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from finops.pipeline import Pipeline
from finops.producers.publish import publish_lines
from finops.tokens import TokenStore
from support import wait_until
from support import bearer, settled

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "console"


def recent_workload(tenant: str) -> list[bytes]:
    """A tree with usage over the last 10 days (so this month's reports and the burn-down have data)."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    lines = []

    def msg(type_: str, ago: timedelta, **fields) -> None:
        lines.append(json.dumps({"type": type_, "id": f"{type_}-{len(lines)}", "tenant_id": tenant,
                                 "ts": (now - ago).isoformat().replace("+00:00", "Z"), **fields}).encode())

    start = timedelta(days=12)
    msg("purchase", start, credits="5000")
    msg("open_account", start, account_id="org", kind="org", parent_id=tenant)
    msg("open_account", start, account_id="team-a", kind="team", parent_id="org")
    msg("open_account", start, account_id="team-b", kind="team", parent_id="org")
    msg("open_account", start, account_id="ann", kind="user", parent_id="team-a")
    msg("open_account", start, account_id="bob", kind="user", parent_id="team-b")
    msg("allocate", start, from_account=tenant, to_account="org", credits="3000")
    msg("allocate", start, from_account="org", to_account="team-a", credits="900", cap="hard")
    msg("allocate", start, from_account="org", to_account="team-b", credits="400")
    msg("allocate", start, from_account="team-a", to_account="ann", credits="100")
    for day in range(10, 0, -1):
        for n, (account, credits, cc) in enumerate((("ann", "12.5", "cc-research"), ("bob", "7.25", "cc-sales"),
                                                    ("team-a", "3", "cc-research"))):
            msg("usage", timedelta(days=day, hours=3 - n), account_id=account, api_key_id=f"key-{account}",
                model_name="gpt-4o", operation_type="chat", units_consumed=100, credits_consumed=credits,
                usage_labels={"team": account, "cost_center": cc})
    return lines


@pytest.fixture
def console(settings, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    tokens = TokenStore(tmp_path / "tokens.json")
    with Pipeline(settings, ("ledger", "sink", "serve"), serve={"port": 0, "tokens": tokens}) as running:
        wait_until(lambda: running.api.server.started, 60, "the API server", running)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                yield running, tokens, browser
            finally:
                browser.close()


class Page:
    """A browser page that records console errors and failed requests, and signs in with a token."""

    def __init__(self, browser, base: str) -> None:
        self.base = base
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def sign_in(self, token: str) -> None:
        self.page.goto(f"{self.base}/console")
        self.page.fill("#token", token)
        self.page.click("#sign-in")
        self.page.wait_for_load_state()

    def visit(self, path: str, shot: str):
        answer = self.page.goto(f"{self.base}{path}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        return answer

    def value(self, selector: str) -> str:
        return self.page.get_attribute(selector, "data-value")


def test_every_page_shows_the_apis_numbers(settings, console):
    pipeline, tokens, browser = console
    tenant = f"console-{uuid.uuid4().hex[:8]}"
    assert publish_lines(settings, recent_workload(tenant)).failed == 0
    _id, token = tokens.add(tenant, "read")
    api = httpx.Client(base_url=pipeline.api.url, headers=bearer(token), timeout=60)
    settled(settings, pipeline, api)
    page = Page(browser, pipeline.api.url)

    # sign in: one tenant, so the console goes straight to its overview
    page.sign_in(token)
    assert page.page.url.endswith(f"/console/t/{tenant}")
    page.visit(f"/console/t/{tenant}", "overview")
    listing = api.get(f"/v1/tenants/{tenant}/accounts").json()
    assert page.value("#purchased") == listing["totals"]["purchased"]
    assert int(float(page.value("#available")) * 1_000_000) == sum(a["available_micros"] for a in listing["accounts"])
    today = datetime.now(timezone.utc).date().isoformat()
    forecast = api.get(f"/v1/tenants/{tenant}/reports/forecast", params={"to": today}).json()["rows"]
    month = next(r for r in forecast if not r["account_id"])
    assert page.value("#month-to-date") == month["month_to_date"]
    assert page.value("#forecast") == month["forecast_month_end"]
    runway = api.get(f"/v1/tenants/{tenant}/reports/runway", params={"to": today}).json()["rows"]
    tenant_runway = next(r for r in runway if r["account_id"] == tenant)
    assert page.value("#runway") == (tenant_runway["runs_out_on"] or "")
    # the tree: every account, in the API's order, each number as the API has it
    rows = page.page.query_selector_all("#accounts tbody tr")
    assert [r.get_attribute("data-account") for r in rows] == [a["account_id"] for a in listing["accounts"]]
    for row, account in zip(rows, listing["accounts"]):
        for column in ("available", "effective_available", "reserved", "consumed", "period_budget", "period_used"):
            cell = row.query_selector(f'[data-col="{column}"]')
            assert cell.get_attribute("data-value") == account[column], (account["account_id"], column)
        assert row.query_selector('[data-col="cap"]').inner_text() == ("blocked" if account["blocked"]
                                                                         else account["cap"])

    # an account: the burn-down is drawn, the ledger is the API's, the kind filter works
    page.visit(f"/console/t/{tenant}/a/team-a", "account-team-a")
    item = api.get(f"/v1/tenants/{tenant}/accounts/team-a").json()
    assert page.value("#available") == item["available"]
    assert page.value("#effective-available") == item["effective_available"]
    points = page.page.get_attribute("#burn-down svg polyline.balance", "points").split()
    assert len(points) == 30 and len(set(points)) > 1  # 30 days, and it moves
    ledger = api.get(f"/v1/tenants/{tenant}/accounts/team-a/ledger",
                     params={"limit": 50, "order": "desc"}).json()["entries"]  # newest first
    shown = page.page.query_selector_all("#ledger tbody tr")
    assert [r.get_attribute("data-entry") for r in shown] == [e["entry_id"] for e in ledger]
    assert [r.query_selector('[data-col="balance"]').get_attribute("data-value") for r in shown] == [
        e["balance"] for e in ledger]
    page.page.select_option("#kind-filter select", "consume")
    page.page.click("#kind-filter button")
    page.page.wait_for_load_state()
    kinds = {r.query_selector_all("td")[1].inner_text() for r in page.page.query_selector_all("#ledger tbody tr")}
    assert kinds == {"consume"}
    page.visit(f"/console/t/{tenant}/a/ann", "account-ann")
    assert page.page.query_selector("#burn-down svg") is not None
    assert page.page.inner_text("#signed-in") == f"signed in: {tenant} (read)"
    # a link from elsewhere opens the page signed in (the cookie is SameSite=Lax)
    assert page.context.cookies()[0]["sameSite"] == "Lax" and page.context.cookies()[0]["httpOnly"]

    # chargeback and showback: the API's rows, and the CSV is the API's CSV
    for name in ("showback", "chargeback"):
        page.visit(f"/console/t/{tenant}/reports/{name}", name)
        report = api.get(f"/v1/tenants/{tenant}/reports/{name}").json()
        cells = [[td.inner_text() for td in tr.query_selector_all("td")]
                 for tr in page.page.query_selector_all("#report tbody tr")]
        assert report["rows"] and cells == [["" if r[c] is None else str(r[c]) for c in report["columns"]]
                                            for r in report["rows"]]
        with page.page.expect_download() as download:
            page.page.click("#csv")
        csv = Path(download.value.path()).read_bytes()
        assert csv == api.get(f"/v1/tenants/{tenant}/reports/{name}", params={"format": "csv"}).content
    assert page.errors == []


def test_a_tenants_token_sees_only_its_tenant(settings, console):
    pipeline, tokens, browser = console
    mine, theirs = f"mine-{uuid.uuid4().hex[:6]}", f"theirs-{uuid.uuid4().hex[:6]}"
    assert publish_lines(settings, recent_workload(mine) + recent_workload(theirs)).failed == 0
    _a, token = tokens.add(mine, "read")
    api = httpx.Client(base_url=pipeline.api.url, headers=bearer(token), timeout=60)
    settled(settings, pipeline, api)
    page = Page(browser, pipeline.api.url)
    # without a token: the sign-in page, which then goes where the visitor was going
    page.visit(f"/console/t/{mine}/reports/showback", "signed-out")
    assert "/console/login" in page.page.url and page.page.query_selector("#token") is not None
    # a wrong token: refused, said so
    page.sign_in("fo_00000000_" + "x" * 43)
    assert page.page.query_selector("#login-error") is not None
    page.page.goto(f"{page.base}/console/login?next=/console/t/{mine}/reports/showback")
    page.page.fill("#token", token)
    page.page.click("#sign-in")
    page.page.wait_for_load_state()
    assert page.page.url.endswith(f"/console/t/{mine}/reports/showback")
    for path in (f"/console/t/{theirs}", f"/console/t/{theirs}/a/ann", f"/console/t/{theirs}/reports/showback",
                 f"/console/t/{theirs}/reports/showback.csv"):
        answer = page.visit(path, "other-tenant")
        assert answer.status == 404, path
        assert theirs not in page.page.inner_text("main")
    assert page.visit(f"/console/t/{mine}", "own-tenant").status == 200
    page.page.click("text=sign out")
    page.page.wait_for_load_state()
    assert page.page.query_selector("#token") is not None
    assert [e for e in page.errors if "404" not in e] == []  # (the other tenant's pages were 404s)
