"""The operator's console: server-rendered pages at ``/`` of ``finops serve``, over its own HTTP API.

Every number a page shows comes from an answer of the API (called in-process with the
visitor's token, through ``httpx.ASGITransport``), so the console and the API cannot
disagree, and a tenant's token sees in the console exactly what it may read through the
API. The login is the API's bearer token: ``POST /console/login`` checks it and keeps it in
an ``HttpOnly``, ``SameSite=Strict`` cookie. Charts are SVG drawn here; the pages need no
script and load nothing from elsewhere.

Pages: ``/console`` (tenants), ``/console/t/T`` (overview: purchased, available, consumed
this month, the month's forecast, the tenant's runway, alerts firing, the account tree),
``/console/t/T/a/A`` (burn-down with the forecast band, the ledger paged and filtered by
kind, alerts), ``/console/t/T/reports/chargeback|showback`` (tables, CSV download).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from .schemas.money import credits_str

COOKIE = "finops_token"
TABLE_REPORTS = ("chargeback", "showback")
_templates = Jinja2Templates(directory=str(__import__("pathlib").Path(__file__).parent / "templates"))


class _Refused(Exception):
    """The API refused a console call: shown as a page with its status and detail (401: the login)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _api(request: Request, path: str, params: dict | None = None, raw: bool = False) -> Any:
    """GET ``path`` of this server's API with the visitor's token; the JSON answer (or bytes)."""
    headers = {}
    token = request.cookies.get(COOKIE)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    client_host = request.client.host if request.client is not None else "127.0.0.1"
    transport = httpx.ASGITransport(app=request.app, client=(client_host, 0))
    async with httpx.AsyncClient(transport=transport, base_url="http://console", timeout=120) as client:
        answer = await client.get(path, params=params, headers=headers)
    if answer.status_code >= 400:
        try:
            detail = answer.json().get("detail", answer.text)
        except ValueError:
            detail = answer.text
        raise _Refused(answer.status_code, detail)
    return answer.content if raw else answer.json()


# Pages hold balances: never cached (the back button after signing out shows nothing), never framed,
# and they load nothing but themselves (no script at all).
HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                      "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"}


def _page(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    answer = _templates.TemplateResponse(request, template, {"request": request, **context}, status_code=code)
    answer.headers.update(HEADERS)
    return answer


def _same_origin(request: Request) -> bool:
    """A form POST from this console (or a client that sends no Origin): not a cross-site forgery."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


def _next(path: str) -> str:
    """Where to go after signing in: a console path of this server only (no open redirect)."""
    return path if path.startswith("/console/") and not path.startswith("//") and "\\" not in path else "/console"


def _credits(value: Any) -> str:
    """A credit amount for people: thousands separated, exact decimals kept."""
    if value is None or value == "":
        return ""
    try:
        d = Decimal(str(value))
    except ArithmeticError:  # not a number (an undefined template value): shown as it is
        return str(value)
    if not d.is_finite():
        return str(value)
    whole, _, frac = f"{d:f}".partition(".")
    frac = frac.rstrip("0")
    sign = "-" if whole.startswith("-") else ""
    whole = f"{int(whole.lstrip('-') or 0):,}"
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


_templates.env.filters["credits"] = _credits
_templates.env.filters["q"] = lambda s: quote(str(s), safe="")


def burn_down_svg(days: list[dict], forecast: dict | None, width: int = 720, height: int = 260) -> str:
    """An SVG line of the daily closing balance, with the month-end forecast as a band.

    ``days``: ``[{"day", "available_micros"}]``; ``forecast``: ``{"end_day", "mid", "low", "high"}`` in
    micro-credits (None: no band). Returns SVG markup (escaped numbers only).
    """
    if not days:
        return ""
    points = [(date.fromisoformat(d["day"]), d["available_micros"]) for d in days]
    last_day = points[-1][0]
    span_end = date.fromisoformat(forecast["end_day"]) if forecast else last_day
    first = points[0][0]
    total_days = max((span_end - first).days, 1)
    values = [v for _d, v in points] + ([forecast["low"], forecast["high"], forecast["mid"]] if forecast else [])
    top, bottom = max(values + [0]), min(values + [0])
    scale = (top - bottom) or 1
    pad = 40

    def x(d: date) -> float:
        return round(pad + (width - 2 * pad) * (d - first).days / total_days, 1)

    def y(v: int) -> float:
        return round(height - pad - (height - 2 * pad) * (v - bottom) / scale, 1)

    line = " ".join(f"{x(d)},{y(v)}" for d, v in points)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="burn-down" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" aria-label="burn-down">',
             f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" class="axis"/>',
             f'<polyline class="balance" fill="none" points="{line}"/>']
    if forecast:
        lx, ly = x(last_day), y(points[-1][1])
        ex = x(span_end)
        parts.append(f'<polygon class="band" points="{lx},{ly} {ex},{y(forecast["high"])} '
                     f'{ex},{y(forecast["low"])}"/>')
        parts.append(f'<line class="forecast" x1="{lx}" y1="{ly}" x2="{ex}" y2="{y(forecast["mid"])}"/>')
    parts.append(f'<text x="{pad}" y="{height - 10}" class="label">{first.isoformat()}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 10}" class="label" text-anchor="end">'
                 f'{span_end.isoformat()}</text>')
    parts.append(f'<text x="{pad}" y="{pad - 10}" class="label">{_credits(Decimal(top) / 1_000_000)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _micros(text: Any) -> int:
    return int(Decimal(str(text)) * 1_000_000)


def mount(app: FastAPI) -> None:
    """Add the console's routes to the API ``app``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def root() -> Response:
        return RedirectResponse("/console", status_code=303)

    @router.get("/console")
    async def tenants(request: Request) -> Response:
        try:
            names = (await _api(request, "/v1/tenants"))["tenants"]
        except _Refused as refused:
            return _login_or_error(request, refused)
        if len(names) == 1:
            return RedirectResponse(f"/console/t/{quote(names[0], safe='')}", status_code=303)
        return _page(request, "tenants.html", tenants=names)

    @router.get("/console/login")
    async def login_page(request: Request, error: str = "", next: str = "/console") -> Response:
        return _page(request, "login.html", error=_SIGN_IN_ERRORS.get(error, ""), next=_next(next))

    @router.post("/console/login")
    async def login(request: Request, token: str = Form(""), next: str = Form("/console")) -> Response:
        if not _same_origin(request):
            return _page(request, "error.html", 403, status=403, detail="a sign-in from another site")
        if not token.strip():
            return RedirectResponse(f"/console/login?{urlencode({'error': 'empty', 'next': _next(next)})}",
                                    status_code=303)
        answer = RedirectResponse(_next(next), status_code=303)
        # Lax: a link from a chat or a ticket opens the page signed in; a cross-site POST sends no cookie
        answer.set_cookie(COOKIE, token.strip(), httponly=True, samesite="lax",
                          secure=request.url.scheme == "https", path="/")
        return answer

    @router.post("/console/logout")
    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return _page(request, "error.html", 403, status=403, detail="a sign-out from another site")
        answer = RedirectResponse("/console/login", status_code=303)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
        return answer

    @router.get("/console/t/{tenant}")
    async def overview(request: Request, tenant: str) -> Response:
        t = quote(tenant, safe="")
        today = datetime.now(timezone.utc).date()
        try:
            who = await _api(request, "/v1/whoami")
            listing = await _api(request, f"/v1/tenants/{t}/accounts")
            forecast = await _api(request, f"/v1/tenants/{t}/reports/forecast", {"to": today.isoformat()})
            runway = await _api(request, f"/v1/tenants/{t}/reports/runway", {"to": today.isoformat()})
            alerts = (await _api(request, f"/v1/tenants/{t}/alerts"))["alerts"]
        except _Refused as refused:
            return _login_or_error(request, refused)
        accounts = listing["accounts"]
        depth = _depths(accounts)
        month = next((r for r in forecast["rows"] if not r.get("account_id")), None)
        runway_by_account = {r["account_id"]: r for r in runway["rows"]}
        summary = {
            "purchased": listing["totals"]["purchased"],
            "overage": listing["totals"]["overage"],
            "expired": listing["totals"]["expired"],
            "available": credits_str(sum(a["available_micros"] for a in accounts)),
            "reserved": credits_str(sum(a["reserved_micros"] for a in accounts)),
            "consumed": listing["totals"]["consumed"],
            "month_to_date": month["month_to_date"] if month else "0",
            "forecast": month["forecast_month_end"] if month else None,
            "holt_low": month.get("holt_low") if month else None,
            "holt_high": month.get("holt_high") if month else None,
            "runway": runway_by_account.get(tenant, {}),
        }
        return _page(request, "overview.html", tenant=tenant, listing=listing, accounts=accounts, depth=depth,
                     summary=summary, runway=runway_by_account, alerts=alerts, today=today, who=who)

    @router.get("/console/t/{tenant}/a/{account:path}")
    async def account(request: Request, tenant: str, account: str, kind: str = "", cursor: str = "") -> Response:
        t, a = quote(tenant, safe=""), quote(account, safe="")
        today = datetime.now(timezone.utc).date()
        start = today - timedelta(days=29)
        params: dict[str, Any] = {"limit": 50, "order": "desc"}  # newest first
        if kind:
            params["kind"] = kind
        if cursor:
            params["cursor"] = cursor
        try:
            who = await _api(request, "/v1/whoami")
            item = await _api(request, f"/v1/tenants/{t}/accounts/{a}")
            daily = await _api(request, f"/v1/tenants/{t}/accounts/{a}/balance/daily",
                               {"from": start.isoformat(), "to": today.isoformat()})
            forecast = await _api(request, f"/v1/tenants/{t}/reports/forecast",
                                  {"account": account, "to": today.isoformat()})
            ledger = await _api(request, f"/v1/tenants/{t}/accounts/{a}/ledger", params)
            alerts = (await _api(request, f"/v1/tenants/{t}/alerts", {"account": account, "firing": "false"}))["alerts"]
        except _Refused as refused:
            return _login_or_error(request, refused)
        row = next((r for r in forecast["rows"] if r.get("account_id") == account), None)
        band = None
        if row is not None and row.get("forecast_month_end") is not None:
            now_micros = item["available_micros"]
            still = _micros(row["forecast_month_end"]) - _micros(row["month_to_date"])
            low = row.get("holt_low")
            high = row.get("holt_high")
            mtd = _micros(row["month_to_date"])
            band = {"end_day": row["month"][:10] if len(row["month"]) >= 10 else today.isoformat(),
                    "mid": now_micros - still,
                    "low": now_micros - (_micros(high) - mtd if high is not None else still),
                    "high": now_micros - (_micros(low) - mtd if low is not None else still)}
            end = date.fromisoformat(band["end_day"])
            band["end_day"] = date(end.year + end.month // 12, end.month % 12 + 1, 1).isoformat() \
                if end.day == 1 else end.isoformat()
        svg = burn_down_svg(daily["days"], band)
        next_link = None
        if ledger["next_cursor"]:
            next_link = "?" + urlencode({**({"kind": kind} if kind else {}), "cursor": ledger["next_cursor"]})
        newest_link = ("?" + urlencode({"kind": kind}) if kind else "?") if cursor else None
        return _page(request, "account.html", tenant=tenant, item=item, svg=svg, ledger=ledger, alerts=alerts,
                     kind=kind, kinds=KINDS, next_link=next_link, newest_link=newest_link, forecast=row, who=who)

    @router.get("/console/t/{tenant}/reports/{name}")
    async def table(request: Request, tenant: str, name: str, start: str = Query("", alias="from"),
                    end: str = Query("", alias="to")) -> Response:
        t = quote(tenant, safe="")
        period = {k: v for k, v in (("from", start), ("to", end)) if v}
        if name.endswith(".csv") and name[:-4] in TABLE_REPORTS:
            try:
                data = await _api(request, f"/v1/tenants/{t}/reports/{name[:-4]}", {"format": "csv", **period},
                                  raw=True)
            except _Refused as refused:
                return _login_or_error(request, refused)
            return Response(data, media_type="text/csv", headers={**HEADERS, "Content-Disposition": _attachment(
                f"{name[:-4]}-{tenant}.csv")})
        if name not in TABLE_REPORTS:
            return _page(request, "error.html", 404, status=404, detail=f"no console report {name!r}")
        try:
            who = await _api(request, "/v1/whoami")
            report = await _api(request, f"/v1/tenants/{t}/reports/{name}", period)
        except _Refused as refused:
            return _login_or_error(request, refused)
        numeric = {c for c in report["columns"] if report["rows"] and all(
            isinstance(r[c], (int, float)) or _is_number(r[c]) for r in report["rows"] if r[c] is not None)}
        return _page(request, "report.html", tenant=tenant, name=name, report=report, numeric=numeric, who=who,
                     csv_query=urlencode(period))

    @router.get("/console/{rest:path}")
    async def unknown(request: Request, rest: str) -> Response:
        return _page(request, "error.html", 404, status=404, detail="no such console page")

    app.include_router(router)


def _is_number(value: Any) -> bool:
    try:
        Decimal(str(value))
    except ArithmeticError:
        return False
    return True


def _attachment(filename: str) -> str:
    """A Content-Disposition naming ``filename`` (RFC 6266: an ASCII fallback, the exact name in UTF-8)."""
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in filename)
    return f'attachment; filename="{fallback}"; filename*=UTF-8\'\'{quote(filename, safe="")}'


KINDS = ("credit", "allocation_in", "allocation_out", "consume", "overage", "reserve", "release", "refund",
         "reclaim", "expire")


_SIGN_IN_ERRORS = {"refused": "that token is unknown, revoked or malformed", "empty": "paste a token first"}


def _login_or_error(request: Request, refused: _Refused) -> Response:
    if refused.status == 401:  # to the sign-in page (a page of its own: a browser logs no failed load)
        query = {"next": _next(request.url.path + (f"?{request.url.query}" if request.url.query else ""))}
        if request.cookies.get(COOKIE):
            query["error"] = "refused"
        return RedirectResponse(f"/console/login?{urlencode(query)}", status_code=303)
    return _page(request, "error.html", refused.status, status=refused.status, detail=refused.detail)


def _depths(accounts: list[dict]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for a in accounts:  # depth first from the root: a parent comes before its children
        depth[a["account_id"]] = depth.get(a["parent_id"], -1) + 1 if a["parent_id"] is not None else 0
    return depth

