"""``finops serve``: the HTTP API for gateways, apps and admins (FastAPI, run by uvicorn).

Reads come from two places:

* the **live view** (:class:`~finops.projections.live.LiveView`): the ledger's state replicated
  from its changelog into this process: balances, the account tree, entitlement checks.
  Every such answer carries ``as_of`` (the tenant's ledger clock, event time) and ``lag_ms``
  (wall milliseconds since the view last held everything the ledger had committed);
* **ClickHouse** (through :func:`~finops.projections.query.open_reader`, or the sink's own
  client when it runs in this process): ledger history, balances as of a past time, reports.

Writes go to Kafka like the SDK's: ``POST .../commands`` through
:class:`~finops.producers.commands.CommandClient` (waits for the ledger's outcome),
``POST .../usage`` through :class:`~finops.producers.usage.UsageProducer` (acknowledged by
Kafka). Bodies are read as wire-v1 JSON with their numbers' text kept exactly.

Auth: ``Authorization: Bearer <token>`` from the tokens file (:mod:`finops.tokens`). A
tenant's token reaches only its tenant; another tenant, like a tenant that does not exist,
is 404 with the same body (nothing tells them apart). Errors are RFC 9457 problem details
(``application/problem+json``) with ``reason`` (wire-v1's rejection vocabulary) where
there is one. Amounts are exact decimal credit strings plus ``*_micros`` integers.
See docs/api.md.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Callable

import msgspec
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import FinopsError
from .processors.ledger import entitlement
from .processors.state import Account, TenantState
from .projections import reports
from .projections.live import LiveView
from .schemas import wire
from .schemas.money import AmountError, credits_str, to_micros
from .settings import Settings
from .tokens import Principal, TokenStore

log = logging.getLogger("finops.api")

PROBLEM = "application/problem+json"
ENTRY_KINDS = frozenset(("credit", "allocation_out", "allocation_in", "consume", "reserve", "release", "refund",
                         "reclaim", "expire", "overage"))
MAX_USAGE_BATCH = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024
STALLED_AFTER_S = 30.0  # /healthz says "degraded" when the ledger has not moved on pending input this long
LOCAL_HOSTS = frozenset(("127.0.0.1", "::1", "localhost"))
_LOCAL = Principal("local", None, "admin")
_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_encode = msgspec.json.Encoder(decimal_format="string").encode


class Problem(Exception):
    """An RFC 9457 problem: ``type`` is ``urn:finops:problem:<slug>``; ``reason`` is wire-v1's rejection reason."""

    def __init__(self, status: int, slug: str, title: str, detail: str = "", *, reason: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        self.reason, self.headers, self.extra = reason, headers, extra

    def body(self, instance: str) -> dict:
        """The problem as its JSON body (RFC 9457): type, title, status, detail, ``instance`` (the request
        path), ``reason`` when there is one, and the extra fields."""
        body = {"type": f"urn:finops:problem:{self.slug}", "title": self.title, "status": self.status,
                "detail": self.detail or self.title, "instance": instance}
        if self.reason is not None:
            body["reason"] = self.reason
        body.update(self.extra)
        return body


def _not_found(what: str = "tenant") -> Problem:
    # The same answer for "does not exist" and "not yours": a token learns nothing of other tenants.
    return Problem(404, "not-found", "Not Found", f"no such {what} for this token")


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _money(name: str, micros: int) -> dict[str, Any]:
    return {name: credits_str(micros), f"{name}_micros": micros}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else wire.format_time(t, "auto")


def _time(text: str | None, name: str) -> datetime | None:
    """An RFC 3339 time with an offset (as wire v1 writes times), in UTC; 400 otherwise."""
    if text is None:
        return None
    when = wire.parse_time(text)
    if when is None:
        raise Problem(400, "invalid-parameter", "Bad Request",
                      f"{name} {text!r} is not an RFC 3339 time with an offset, e.g. 2026-11-30T12:00:00Z",
                      reason="invalid_timestamp")
    return when


def _credits(text: str, name: str = "credits") -> int:
    try:
        return int(to_micros(text))
    except AmountError as exc:
        raise Problem(400, "invalid-parameter", "Bad Request", f"{name}: {exc}", reason="invalid_amount") from None


# ----------------------------------------------------------------------------- views of the state


def account_view(state: TenantState, acct: Account, now: datetime) -> dict[str, Any]:
    """One account as the API shows it: own balances, effective available through the cascade
    (``processors.ledger.entitlement``), cap state, period budget and use, grants."""
    judged = entitlement(state, acct, 0, now)
    return {
        "account_id": acct.id, "kind": acct.kind, "parent_id": acct.parent_id, "name": acct.name,
        **_money("available", acct.available), **_money("reserved", acct.reserved),
        **_money("consumed", acct.consumed), **_money("overage", acct.overage),
        **_money("effective_available", judged.effective_available),
        "fallback": acct.fallback, "members": sorted(acct.members) if acct.members is not None else None,
        "cap": acct.cap, "blocked": acct.blocked, "override_until": _iso(acct.override_until),
        "period": acct.period, **_money("period_budget", acct.period_granted),
        **_money("period_used", acct.period_used),
        "grants": [{"grant_id": g.id, **_money("remaining", g.remaining), "starts_at": _iso(g.starts_at),
                    "ends_at": _iso(g.ends_at), "expires_at": _iso(g.expiry), "recurrence": g.recurrence,
                    "on_expiry": g.on_expiry} for g in acct.grants],
        "updated": _iso(acct.updated),
    }


def tree_order(state: TenantState) -> list[Account]:
    """Every account, depth first from the root, children by id."""
    children: dict[str | None, list[Account]] = {}
    for acct in state.accounts.values():
        children.setdefault(acct.parent_id, []).append(acct)
    ordered: list[Account] = []
    stack = sorted(children.get(None, []), key=lambda a: a.id, reverse=True)
    seen: set[str] = set()
    while stack:
        acct = stack.pop()
        if acct.id in seen:
            continue
        seen.add(acct.id)
        ordered.append(acct)
        stack.extend(sorted(children.get(acct.id, []), key=lambda a: a.id, reverse=True))
    ordered.extend(a for a in sorted(state.accounts.values(), key=lambda a: a.id) if a.id not in seen)
    return ordered


# ----------------------------------------------------------------------------- metrics


class _Metrics:
    """Prometheus metrics of the API and its view, on their own registry."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self, view: LiveView) -> None:
        self.view = view
        self.registry = CollectorRegistry()
        self.requests = Counter("finops_api_requests", "HTTP requests answered.", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("finops_api_request_seconds", "Time to answer a request (wall seconds).",
                                 ["route"], buckets=self.BUCKETS, registry=self.registry)
        self.lag = Gauge("finops_view_lag_seconds", "Wall seconds since the live view last held everything "
                                                    "the ledger had committed (NaN before it ever did).",
                         registry=self.registry)
        self.records = Gauge("finops_view_records", "Changelog and enforcement records the view has read.",
                             registry=self.registry)
        self.refused = Gauge("finops_view_refused_records", "Records the view could not decode (skipped).",
                             registry=self.registry)
        self.tenants = Gauge("finops_view_tenants", "Tenants in the live view.", registry=self.registry)
        self.pending = Gauge("finops_ledger_pending_records", "Input records the ledger has not committed yet "
                                                              "(NaN before the first look).", registry=self.registry)
        self.stalled = Gauge("finops_ledger_stalled_seconds", "Wall seconds the ledger has not moved on pending "
                                                              "input (0 when none is pending).", registry=self.registry)

    def render(self) -> bytes:
        lag = self.view.lag_s()
        self.lag.set(float("nan") if lag is None else lag)
        self.records.set(self.view.stats.records)
        self.refused.set(self.view.stats.refused)
        self.tenants.set(len(self.view.tenants))
        pending = self.view.ledger.pending
        self.pending.set(float("nan") if pending is None else pending)
        self.stalled.set(self.view.ledger.stalled_s())
        return generate_latest(self.registry)


class _Timing:
    """ASGI middleware: counts and times every request by its route template."""

    def __init__(self, app, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]
        answered = [False]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                answered[0] = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:  # a bug: answered 500 by the app's handler; keep the connection, do not re-raise
            if not answered[0]:
                body = _encode(Problem(500, "internal", "Internal Server Error", "logged by the server").body(
                    scope.get("path", "")))
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
            self.metrics.requests.labels(scope["method"], path, str(status[0])).inc()


# ----------------------------------------------------------------------------- the app


class Backends:
    """What the endpoints reach: the live view, tokens, ClickHouse and Kafka (built lazily, shared).

    ``reader`` makes a ClickHouse reader per request (closed after it); ``commands`` and
    ``usage`` make the Kafka clients on first use. ``tokens`` None with ``insecure_local``
    True lets requests from 127.0.0.1 in without a token.
    """

    def __init__(self, settings: Settings, view: LiveView, *, tokens: TokenStore | None = None,
                 insecure_local: bool = False, reader: Callable[[], Any] | None = None,
                 command_timeout: float = 30.0) -> None:
        self.settings = settings
        self.view = view
        self.tokens = tokens
        self.insecure_local = insecure_local
        self.command_timeout = command_timeout
        if reader is None:
            from .projections.query import open_reader

            def reader():
                return open_reader(settings)
        self.reader = reader
        self._commands = None
        self._usage = None
        self._clients_lock = threading.Lock()  # each client is made once
        self._usage_lock = threading.Lock()

    def commands(self):
        """The shared :class:`~finops.producers.commands.CommandClient` (thread-safe)."""
        with self._clients_lock:
            if self._commands is None:
                from .producers.commands import CommandClient

                self._commands = CommandClient(self.settings, timeout=self.command_timeout)
            return self._commands

    def usage(self):
        """The shared :class:`~finops.producers.usage.UsageProducer` (used under ``_usage_lock``)."""
        with self._clients_lock:
            if self._usage is None:
                from .producers.usage import UsageProducer

                self._usage = UsageProducer(self.settings, kafka_config={"linger.ms": 2})
            return self._usage

    def close(self) -> None:
        """Close the shared command client and usage producer, if they were made (best effort)."""
        for client in (self._commands, self._usage):
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing is best effort: the process is ending
                    log.debug("closing a client failed", exc_info=True)


async def _principal(request: Request) -> Principal:
    """Who asks (a dependency of every /v1 route, so a missing token is 401 before anything else).
    A token seen before is found in microseconds; a new one costs a scrypt, run off the event loop."""
    backends: Backends = request.app.state.backends
    header = request.headers.get("authorization")
    if header is None:
        client = request.client.host if request.client is not None else ""
        if backends.insecure_local and client in LOCAL_HOSTS:
            return _LOCAL
        raise Problem(401, "unauthorized", "Unauthorized", "missing bearer token (Authorization: Bearer ...)",
                      headers={"WWW-Authenticate": 'Bearer realm="finops"'})
    scheme, _, token = header.partition(" ")
    token = token.strip()
    found = None
    if backends.tokens is not None and scheme.lower() == "bearer" and token:
        try:
            found = backends.tokens.cached(token) or await run_in_threadpool(backends.tokens.verify, token)
        except FinopsError as exc:  # the tokens file is unreadable: nobody gets in until it is fixed
            log.error("%s", exc)
            raise Problem(503, "tokens-unavailable", "Service Unavailable",
                          "the server cannot read its tokens file (see its log)") from None
    if found is None:
        raise Problem(401, "unauthorized", "Unauthorized", "unknown, revoked or malformed bearer token",
                      headers={"WWW-Authenticate": 'Bearer realm="finops", error="invalid_token"'})
    return found


Who = Annotated[Principal, Depends(_principal)]


def create_app(backends: Backends) -> FastAPI:
    """The ASGI app over ``backends``. Routes are documented at ``/docs`` and ``/openapi.json``."""
    view = backends.view
    metrics = _Metrics(view)
    app = FastAPI(title="finops", version="1",
                  description="Entitlement checks, balances, history, commands and usage of the finops "
                              "credit ledger. Amounts are exact decimal credit strings plus *_micros "
                              "integers (1 credit = 1,000,000 micro-credits). Errors are RFC 9457 problem "
                              "details. Auth: Authorization: Bearer <token> (`finops tokens add`).")
    app.state.backends = backends
    app.router.redirect_slashes = False  # /v1/tenants/ is 404 (a problem), not a redirect

    def openapi() -> dict:
        """FastAPI's schema, with the bearer token as the security scheme of every /v1 route."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "`finops tokens add` prints one."}}
            for path, operations in schema["paths"].items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def problem_response(request: Request, problem: Problem) -> Response:
        return Response(_encode(problem.body(request.url.path)), status_code=problem.status, media_type=PROBLEM,
                        headers=problem.headers)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return problem_response(request, Problem(422, "invalid-request", "Unprocessable Content", detail,
                                                 reason="invalid", errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem_response(request, Problem(exc.status_code, slug, str(exc.detail), str(exc.detail)))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s", request.url.path)
        return problem_response(request, Problem(500, "internal", "Internal Server Error",
                                                 f"{type(exc).__name__} (logged by the server)"))

    # ---------------------------------------------------------------- auth

    def readable(who: Principal, tenant_id: str) -> Principal:
        if not who.may_read(tenant_id):
            raise _not_found()
        if not view.ready.is_set():
            raise Problem(503, "loading", "Service Unavailable", "the live view is still reading the ledger's "
                          "state; try again shortly", headers={"Retry-After": "1"})
        return who

    def writable(who: Principal, tenant_id: str) -> Principal:
        readable(who, tenant_id)
        if not who.may_write(tenant_id):
            raise Problem(403, "forbidden", "Forbidden", f"this token's role ({who.role}) cannot write")
        return who

    def tenant_of(tenants: dict[str, TenantState], tenant_id: str) -> TenantState:
        state = tenants.get(tenant_id)
        if state is None:
            raise _not_found()
        return state

    def freshness(state: TenantState | None) -> dict[str, Any]:
        """``as_of``: the tenant's ledger clock (event time); ``lag_ms``: wall ms since the view last held
        all the ledger had committed; ``ledger_pending``: input records the ledger has not committed yet
        and ``ledger_stalled_s`` how long (wall seconds) it has not moved on them (a stopped ledger)."""
        lag = view.lag_s()
        return {"as_of": _iso(state.clock) if state is not None else None,
                "lag_ms": None if lag is None else round(lag * 1000, 1),
                "ledger_pending": view.ledger.pending, "ledger_stalled_s": round(view.ledger.stalled_s(), 1)}

    # ---------------------------------------------------------------- health and metrics

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        """200 once the live view has read the ledger's changelog to its end, else 503 (still loading).
        ``status`` is ``degraded`` (still 200) while the ledger has left input pending for over 30 s."""
        lag = view.lag_s()
        ready = view.ready.is_set()
        stalled = view.ledger.stalled_s()
        status = "loading" if not ready else "degraded" if stalled > STALLED_AFTER_S else "ok"
        body = {"status": status, "ledger": {"pending": view.ledger.pending, "stalled_s": round(stalled, 1),
                                             "error": view.ledger.error}, "view": {
            "ready": ready, "lag_ms": None if lag is None else round(lag * 1000, 1),
            "tenants": len(view.tenants), "records": view.stats.records, "refused": view.stats.refused,
            "changelog": view.changelog}}
        return _json(body, 200 if ready else 503)

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        """Prometheus text: requests by route and status, a latency histogram, the view's lag."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ---------------------------------------------------------------- the live view

    @app.get("/v1/check", tags=["entitlement"], openapi_extra={"parameters": CHECK_PARAMETERS})
    async def check(request: Request) -> Response:
        """May this account (or the account this API key is bound to) spend ``credits`` now?

        ``{allow, reason, effective_available, blocked_by}``: ``reason`` is null when allowed,
        else ``blocked`` (a hard cap's block on the account or an ancestor), ``hard_cap`` (it
        would take a hard-capped account past its period budget) or ``insufficient_credits``
        (the cascade cannot fund it). ``at`` (RFC 3339, default now) is the event time judged.
        The query is read here rather than by FastAPI's parameter machinery: this is the hot
        path of every gateway (it halves the app's time per check).
        """
        who = await _principal(request)
        tenant, account, api_key, credits, at = _check_query(request)
        readable(who, tenant)
        if account is None and api_key is None:
            raise Problem(400, "invalid-parameter", "Bad Request", "give account, api_key, or both",
                          reason="invalid")
        micros = _credits(credits)
        when = _time(at, "at") or datetime.now(timezone.utc)

        def judge(tenants, records):
            state = tenant_of(tenants, tenant)
            account_id = account if account is not None else state.keys.get(api_key)
            acct = state.accounts.get(account_id) if account_id is not None else None
            if acct is None:
                raise Problem(404, "not-found", "Not Found", "no such account or api key for this token",
                              reason="unknown_account")
            limit = None
            if api_key is not None and records:  # the strictest limit on this key from its account's chain
                for a in state.ancestors(acct):
                    record = records.get((tenant, a.id))
                    rps = record.rate_limits.get(api_key) if record is not None and record.rate_limits else None
                    if rps is not None and (limit is None or rps < limit):
                        limit = rps
            return state, entitlement(state, acct, micros, when), limit

        state, judged, limit = view.read(judge)
        return _json({"tenant_id": tenant, "account_id": judged.account_id, "allow": judged.allow,
                      "reason": judged.reason, **_money("credits", micros),
                      **_money("effective_available", judged.effective_available),
                      "blocked_by": list(judged.blocked_by), "rate_limit_rps": limit, **freshness(state)})

    @app.get("/v1/whoami", tags=["accounts"])
    async def whoami(who: Who) -> Response:
        """The token's id, tenant (null: every tenant) and role."""
        return _json({"token_id": who.token_id, "tenant_id": who.tenant_id, "role": who.role})

    @app.get("/v1/tenants", tags=["accounts"])
    async def tenants(who: Who) -> Response:
        """The tenants this token may read (an admin token: every tenant in the view)."""
        names = view.read(lambda t, _e: sorted(t))
        return _json({"tenants": [n for n in names if who.may_read(n)]})

    @app.get("/v1/tenants/{tenant_id}/accounts", tags=["accounts"])
    async def accounts(who: Who, tenant_id: str) -> Response:
        """Every account of the tenant, depth first from the root: own and effective available, cap, period;
        and the tenant's ``totals`` (purchased, consumed, overage, expired: conservation's terms)."""
        readable(who, tenant_id)
        now = datetime.now(timezone.utc)

        def listing(tenants, _enforcement):
            state = tenant_of(tenants, tenant_id)
            t = state.totals
            totals = {**_money("purchased", t.purchased), **_money("consumed", t.consumed),
                      **_money("overage", t.overage), **_money("expired", t.expired)}
            return state, totals, [account_view(state, a, now) for a in tree_order(state)]

        state, totals, items = view.read(listing)
        return _json({"tenant_id": tenant_id, "totals": totals, "accounts": items, **freshness(state)})

    @app.get("/v1/tenants/{tenant_id}/enforcement", tags=["entitlement"])
    async def enforcement(who: Who, tenant_id: str) -> Response:
        """What a gateway must enforce now (``finops.enforcement.v1``): the blocked accounts with the keys
        under them (``blocked``), and the per-key rate limits in force (``rate_limited``: requests per
        second of each non-prod key under an account whose critical threshold asked for it)."""
        readable(who, tenant_id)

        def enforced(tenants, records):
            state = tenant_of(tenants, tenant_id)
            mine = [r for (t, _a), r in sorted(records.items()) if t == tenant_id]
            return state, [{"account_id": r.account_id, "state": r.state, "reason": r.reason,
                            "api_key_ids": r.api_key_ids, "ts": _iso(r.ts)} for r in mine if r.state == "blocked"], \
                [{"account_id": r.account_id, "reason": r.reason, "rate_limits": r.rate_limits, "ts": _iso(r.ts)}
                 for r in mine if r.rate_limits]

        state, blocked, limited = view.read(enforced)
        return _json({"tenant_id": tenant_id, "blocked": blocked, "rate_limited": limited, **freshness(state)})

    def known_tenant(tenant_id: str) -> None:
        if not view.read(lambda t, _e: tenant_id in t):
            raise _not_found()

    def known_account(tenant_id: str, account_id: str) -> None:
        if not view.read(lambda t, _e: tenant_id in t and account_id in t[tenant_id].accounts):
            raise _not_found("account")

    # ---------------------------------------------------------------- history (ClickHouse)

    @app.get("/v1/tenants/{tenant_id}/accounts/{account_id:path}/ledger", tags=["history"])
    def ledger(who: Who, tenant_id: str, account_id: str,
               start: str | None = Query(None, alias="from", description="First event time (RFC 3339)."),
               end: str | None = Query(None, alias="to", description="Event time before which to stop."),
               kind: list[str] = Query(default=[], description="Only these entry kinds (repeatable)."),
               limit: int = Query(100, ge=1, le=1000), cursor: str | None = None,
               order: str = Query("asc", pattern="^(asc|desc)$", description="asc: oldest first; desc: newest "
                                                                            "first.")) -> Response:
        """The account's ledger entries in ledger (booking) order, or newest first with ``order=desc``, with
        the balance after each; ``next_cursor`` pages on in the same order (null on the last page)."""
        readable(who, tenant_id)
        known_account(tenant_id, account_id)
        unknown = sorted(set(kind) - ENTRY_KINDS)
        if unknown:
            raise Problem(422, "invalid-parameter", "Unprocessable Content",
                          f"kind {unknown[0]!r} is not a ledger entry kind; choose from {', '.join(sorted(ENTRY_KINDS))}",
                          reason="invalid")
        after_offset = _read_cursor(cursor) if cursor else (-1 if order == "asc" else 2**63 - 1)
        params = {"tenant": tenant_id, "account": account_id,
                  "from": _ch_time(_time(start, "from") or datetime(1970, 1, 1, tzinfo=timezone.utc)),
                  "to": _ch_time(_time(end, "to") or datetime(2299, 12, 31, tzinfo=timezone.utc)),
                  "kinds": kind, "after_offset": after_offset,
                  "limit": limit + 1}
        columns, rows = _query(backends, LEDGER_SQL if order == "asc" else LEDGER_DESC_SQL, params)
        page = [dict(zip(columns, r)) for r in rows[:limit]]
        entries = [{"entry_id": r["entry_id"], "kind": r["kind"], "ts": _iso(_utc(r["ts"])),
                    **_money("amount", r["amount_micros"]), **_money("balance", r["balance_micros"]),
                    "cause_id": r["cause_id"], "cause_type": r["cause_type"],
                    "charged_to": r["charged_to"] or None, "grant_id": r["grant_id"] or None,
                    "hold_id": r["hold_id"] or None, "late": bool(r["late"]),
                    "model_name": r["model_name"] or None, "operation_type": r["operation_type"] or None,
                    "api_key_id": r["api_key_id"] or None, "usage_labels": dict(r["usage_labels"] or {}) or None}
                   for r in page]
        last = page[-1] if len(rows) > limit else None
        next_cursor = _write_cursor(last["kafka_offset"]) if last is not None else None
        return _json({"tenant_id": tenant_id, "account_id": account_id, "entries": entries,
                      "next_cursor": next_cursor})

    @app.get("/v1/tenants/{tenant_id}/accounts/{account_id:path}/balance", tags=["history"])
    def balance_at(who: Who, tenant_id: str, account_id: str,
                   at: str = Query(..., description="RFC 3339 event time.")) -> Response:
        """The account's balance as of event time ``at``, from its ledger history: available after
        the last entry stamped at or before ``at`` (in ledger order), consumed and overage up to it."""
        readable(who, tenant_id)
        when = _time(at, "at")
        known_account(tenant_id, account_id)
        columns, rows = _query(backends, BALANCE_AT_SQL, {"tenant": tenant_id, "account": account_id,
                                                          "at": _ch_time(when)})
        row = dict(zip(columns, rows[0])) if rows else {}
        entries = int(row.get("entries") or 0)  # the account's own entries (usage it was charged may be others')
        return _json({"tenant_id": tenant_id, "account_id": account_id, "at": _iso(when),
                      **_money("available", int(row.get("available_micros") or 0) if entries else 0),
                      **_money("consumed", int(row.get("consumed_micros") or 0)),
                      **_money("overage", int(row.get("overage_micros") or 0)),
                      "entries": entries,
                      "last_entry_ts": _iso(_utc(row["last_ts"])) if entries else None})

    @app.get("/v1/tenants/{tenant_id}/alerts", tags=["history"])
    def alerts(who: Who, tenant_id: str, account: str = "", firing: bool = True,
               days: int = Query(31, ge=1, le=3660, description="Alerts of the last N days (event time).")
               ) -> Response:
        """The tenant's alerts (``finops.alerts.v1`` in ClickHouse), newest first: with ``firing`` (default)
        only those whose latest state is firing (per account, type, threshold and period)."""
        readable(who, tenant_id)
        known_tenant(tenant_id)
        columns, rows = _query(backends, ALERTS_SQL, {"tenant": tenant_id, "account": account,
                                                      "firing": int(firing), "days": days})
        items = [dict(zip(columns, r)) for r in rows]
        return _json({"tenant_id": tenant_id, "alerts": [
            {"id": a["id"], "account_id": a["account_id"], "type": a["type"], "severity": a["severity"],
             "status": a["status"], "threshold": a["threshold"] or None, "period": a["period"],
             **_money("current_usage", a["current_usage_micros"]),
             **_money("monthly_allocation", a["monthly_allocation_micros"]),
             "action": a["action"] or None, "ts": _iso(_utc(a["last_ts"]))} for a in items]})

    @app.get("/v1/tenants/{tenant_id}/accounts/{account_id:path}/balance/daily", tags=["history"])
    def balance_daily(who: Who, tenant_id: str, account_id: str,
                      start: date = Query(..., alias="from", description="First UTC day (YYYY-MM-DD)."),
                      end: date = Query(..., alias="to", description="Last UTC day.")) -> Response:
        """The account's available balance at the end of each UTC day (a burn-down), by the rule of
        ``balance?at=`` (each entry counts at its own event time)."""
        readable(who, tenant_id)
        known_account(tenant_id, account_id)
        if end < start or (end - start).days > 3660:
            raise Problem(400, "invalid-parameter", "Bad Request", "from must be on or before to, at most 10 "
                          "years apart", reason="invalid")
        columns, rows = _query(backends, BALANCE_DAILY_SQL, {"tenant": tenant_id, "account": account_id,
                                                             "from": start.isoformat(), "to": end.isoformat()})
        closing = {r[0]: int(r[1]) for r in rows}  # day -> closing balance, for the days with entries
        days, level = [], 0
        for d in sorted(d for d in closing if d < start):
            level = closing[d]
        day = start
        while day <= end:
            level = closing.get(day, level)
            days.append({"day": day.isoformat(), **_money("available", level)})
            day = date.fromordinal(day.toordinal() + 1)
        return _json({"tenant_id": tenant_id, "account_id": account_id, "days": days})

    @app.get("/v1/tenants/{tenant_id}/accounts/{account_id:path}", tags=["accounts"])
    async def account(who: Who, tenant_id: str, account_id: str) -> Response:
        """One account, with its children and the API keys bound to it (registered after the routes under
        it, so an account id may hold a ``/``)."""
        readable(who, tenant_id)
        now = datetime.now(timezone.utc)

        def one(tenants, _enforcement):
            state = tenant_of(tenants, tenant_id)
            acct = state.accounts.get(account_id)
            if acct is None:
                raise _not_found("account")
            item = account_view(state, acct, now)
            item["children"] = sorted(a.id for a in state.accounts.values() if a.parent_id == acct.id)
            item["api_key_ids"] = sorted(k for k, owner in state.keys.items() if owner == acct.id)
            return state, item

        state, item = view.read(one)
        return _json({"tenant_id": tenant_id, **item, **freshness(state)})

    @app.get("/v1/tenants/{tenant_id}/reports/{name}", tags=["history"])
    def report(who: Who, tenant_id: str, name: str, account: str = "",
               start: date | None = Query(None, alias="from", description="First UTC day (YYYY-MM-DD)."),
               end: date | None = Query(None, alias="to", description="Last UTC day, the 'as of' day."),
               z: float = Query(3.0, gt=0, le=1000, allow_inf_nan=False, description="anomalies: standard "
                                                                                       "deviations above."),
               fmt: str = Query("json", alias="format", pattern="^(json|csv)$"),
               method: str = Query(reports.DEFAULT_PLAN_METHOD, pattern="^(flat|usage|hybrid)$",
                                   description="plan: how to split the budget."),
               budget: str | None = Query(None, description="plan: credits to split (default: the parent's "
                                                            "available)."),
               reserve_pct: str = Query(str(reports.DEFAULT_RESERVE_PCT), alias="reserve-pct",
                                        description="plan, hybrid: % of the budget kept at the parent.")
               ) -> Response:
        """The reports of ``finops report`` with the same parameters, for this tenant: JSON rows
        (as ``finops report --format json``) or CSV. ``plan`` only shows the allocations (the
        commands file is ``finops report plan --output``'s)."""
        readable(who, tenant_id)
        known_tenant(tenant_id)
        if name not in reports.REPORTS:
            raise Problem(404, "not-found", "Not Found", f"no report {name!r}; choose one of "
                                                         f"{', '.join(reports.REPORTS)}")
        try:
            reserve = Decimal(reserve_pct)
            split = Decimal(_credits(budget, "budget")) / 1_000_000 if budget is not None else None
        except ArithmeticError:
            raise Problem(400, "invalid-parameter", "Bad Request", "reserve-pct is not a number",
                          reason="invalid") from None
        if not reserve.is_finite() or not 0 <= reserve <= 100:
            raise Problem(400, "invalid-parameter", "Bad Request", "reserve-pct must be 0 to 100", reason="invalid")
        params = reports.Params(tenant=tenant_id, account=account, start=start, end=end, z=z,
                                currency=backends.settings.billing_currency,
                                credit_price=backends.settings.credit_price, method=method, budget=split,
                                reserve_pct=reserve)
        today = datetime.now(timezone.utc).date()
        from .projections.clickhouse import ClickHouseError

        reader = _reader(backends)
        try:
            if fmt == "csv":
                return Response(reports.export(reader, name, params, today, "CSVWithNames"), media_type="text/csv")
            result = reports.run(reader, name, params, today)
        except ClickHouseError as exc:
            raise Problem(503, "clickhouse-unavailable", "Service Unavailable", str(exc)) from None
        except FinopsError as exc:
            raise Problem(400, "invalid-parameter", "Bad Request", str(exc)) from None
        finally:
            reader.close()
        return _json({"report": name, "tenant_id": tenant_id, "from": result.params.start.isoformat(),
                      "to": result.params.end.isoformat(), "columns": result.columns,
                      "rows": reports.records(result.columns, result.rows)})

    # ---------------------------------------------------------------- writes (Kafka)

    @app.post("/v1/tenants/{tenant_id}/commands", tags=["writes"], status_code=200,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["type"], "additionalProperties": True,
                  "description": "One wire-v1 command (docs/wire-v1.md): purchase, open_account, allocate, "
                                 "reclaim, set_members, bind_key, set_rates, set_policy, reserve, settle, "
                                 "override_cap, tick. id and ts are filled in when both are absent.",
                  "example": {"type": "allocate", "from_account": "org", "to_account": "team-search",
                              "credits": "25.5"}}}}}})
    async def command(request: Request, who: Who, tenant_id: str, wait: bool = True,
                      timeout: float = Query(30.0, gt=0, le=300)) -> Response:
        """Publish one wire-v1 command (``id`` and ``ts`` filled in when absent) and, unless
        ``wait=false``, wait for the ledger's outcome: 200 applied, 409 rejected with the reason;
        202 with the id when not waiting. A repeat of an applied command (same id and content) is
        applied again as a no-op."""
        writable(who, tenant_id)
        fields = _body_object(await _body(request), tenant_id)
        return await run_in_threadpool(_send_command, backends, fields, wait, timeout)

    @app.post("/v1/tenants/{tenant_id}/usage", tags=["writes"], status_code=202,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "array", "minItems": 1, "maxItems": MAX_USAGE_BATCH,
                  "items": {"type": "object", "additionalProperties": True,
                            "description": "A wire-v1 usage event (docs/wire-v1.md)."},
                  "example": [{"api_key_id": "key-ann", "model_name": "gpt-4o", "operation_type": "chat",
                               "units_consumed": 1200, "credits_consumed": "3"}]}}}}})
    async def usage(request: Request, who: Who, tenant_id: str) -> Response:
        """Publish a JSON array of usage events (at most 10,000; ``id`` and ``ts`` filled in when
        absent), checked as the SDK checks them: all or nothing. 202 once Kafka has them all."""
        writable(who, tenant_id)
        try:
            items = _raw_list.decode(await _body(request))
        except RecursionError:
            raise Problem(400, "invalid-body", "Bad Request", "the body is nested too deeply to read",
                          reason="invalid") from None
        except msgspec.DecodeError as exc:
            raise Problem(400, "invalid-body", "Bad Request", f"the body is not a JSON array of usage events: {exc}",
                          reason="not_json") from None
        if not items or len(items) > MAX_USAGE_BATCH:
            raise Problem(400, "invalid-body", "Bad Request",
                          f"send 1 to {MAX_USAGE_BATCH} usage events, not {len(items)}", reason="invalid")
        events = [_body_object(bytes(item), tenant_id, index=i) for i, item in enumerate(items)]
        return await run_in_threadpool(_send_usage, backends, events)

    from .console import mount

    mount(app)  # the console's pages at / (server-rendered over this API)
    return _Timing(app, metrics)  # type: ignore[return-value]


CHECK_PARAMETERS = [
    {"name": "tenant", "in": "query", "required": True, "schema": {"type": "string"}, "description": "Tenant id."},
    {"name": "account", "in": "query", "schema": {"type": "string"},
     "description": "The account charged (else the account api_key is bound to)."},
    {"name": "api_key", "in": "query", "schema": {"type": "string"},
     "description": "The API key of the request: its bound account is charged when account is not given; "
                    "rate_limit_rps is this key's limit."},
    {"name": "credits", "in": "query", "schema": {"type": "string", "default": "0"},
     "description": "What the request would cost: a decimal credit string, at most 6 decimals."},
    {"name": "at", "in": "query", "schema": {"type": "string", "format": "date-time"},
     "description": "Event time judged (RFC 3339 with an offset); default now."},
]


def _check_query(request: Request) -> tuple[str, str | None, str | None, str, str | None]:
    """``/v1/check``'s query: (tenant, account, api_key, credits, at); 422 for a missing tenant or a
    parameter given twice (a proxy reading the first and this server the last would disagree)."""
    query = request.query_params
    for name in ("tenant", "account", "api_key", "credits", "at"):
        if len(query.getlist(name)) > 1:
            raise Problem(422, "invalid-request", "Unprocessable Content", f"{name} is given more than once",
                          reason="invalid")
    tenant = query.get("tenant")
    if tenant is None:
        raise Problem(422, "invalid-request", "Unprocessable Content", "tenant is required", reason="invalid")
    return tenant, query.get("account"), query.get("api_key"), query.get("credits", "0"), query.get("at")


async def _body(request: Request) -> bytes:
    """The request body, refused (413) past :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Problem(413, "too-large", "Content Too Large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Problem(413, "too-large", "Content Too Large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    return body


def _body_object(body: bytes, tenant_id: str, index: int | None = None) -> dict[str, msgspec.Raw]:
    """A JSON object with each field's text kept as sent (numbers are read from their text), its
    ``tenant_id`` filled in from the path when absent; another tenant's id is 404."""
    where = "the body" if index is None else f"item {index}"
    try:
        fields = _raw_object.decode(body)
    except msgspec.ValidationError:
        raise Problem(422, "invalid-body", "Unprocessable Content", f"{where} is not a JSON object",
                      reason="not_object", index=index) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "invalid-body", "Bad Request", f"{where} is not JSON: {exc}", reason="not_json",
                      index=index) from None
    except RecursionError:
        raise Problem(400, "invalid-body", "Bad Request", f"{where} is nested too deeply to read",
                      reason="invalid", index=index) from None
    if "id" not in fields:
        fields["id"] = msgspec.Raw(_encode(uuid.uuid4().hex))
    elif "ts" not in fields:  # a retry must be the same message: with ts filled in now, it would not be
        raise Problem(422, "invalid-body", "Unprocessable Content", f"{where} has an id but no ts: send both, "
                      "so that sending it again is the same message (the ledger applies it once)",
                      reason="missing_field", index=index)
    sent = fields.get("tenant_id")
    if sent is None:
        fields["tenant_id"] = msgspec.Raw(_encode(tenant_id))
    else:
        try:
            same = msgspec.json.decode(sent) == tenant_id
        except msgspec.DecodeError:
            same = False
        if not same:
            raise _not_found()
    return fields


def _send_command(backends: Backends, fields: dict, wait: bool, timeout: float) -> Response:
    from .producers.commands import OutcomeTimeout
    from .producers.usage import InvalidEvent

    try:
        pending = backends.commands().send(fields, wait=False)
    except InvalidEvent as exc:
        detail = exc.detail
        if detail.startswith("usage is not a command"):
            detail = "a usage is not a command: POST it to /v1/tenants/T/usage"
        raise Problem(422, "invalid-command", "Unprocessable Content", detail, reason=exc.reason) from None
    except FinopsError as exc:
        raise Problem(503, "kafka-unavailable", "Service Unavailable", str(exc)) from None
    if not wait:
        return _json({"id": pending.id, "type": pending.type, "status": "pending"}, 202)
    try:
        sent = backends.commands().wait(pending, timeout)
    except OutcomeTimeout as exc:
        raise Problem(504, "outcome-timeout", "Gateway Timeout", f"{exc} (the command is in Kafka: the ledger "
                      "will decide it; send it again, same id and ts, to learn its outcome)", id=pending.id,
                      command_type=pending.type) from None
    except FinopsError as exc:
        raise Problem(503, "kafka-unavailable", "Service Unavailable", str(exc), id=pending.id) from None
    if not sent.applied:
        raise Problem(409, "command-rejected", "Conflict", sent.detail or sent.reason, reason=sent.reason,
                      id=sent.id, command_type=sent.type)
    return _json({"id": sent.id, "type": sent.type, "status": "applied"})


def _send_usage(backends: Backends, events: list[dict]) -> Response:
    from .producers.usage import InvalidEvent, checked, complete

    decoded = []
    errors = []
    for i, fields in enumerate(events):
        try:
            _raw, message = checked(complete(fields, "usage"))
        except InvalidEvent as exc:
            errors.append({"index": i, "reason": exc.reason, "detail": exc.detail})
            continue
        if not isinstance(message, wire.Usage):
            errors.append({"index": i, "reason": "invalid", "detail": "a command: POST it to .../commands"})
            continue
        decoded.append(message)
    if errors:
        raise Problem(422, "invalid-usage", "Unprocessable Content",
                      f"{len(errors)} of {len(events)} usage events are invalid; none was published",
                      reason=errors[0]["reason"], errors=errors[:100])
    with backends._usage_lock:
        producer = backends.usage()
        failed_before = producer.failed
        for message in decoded:
            producer.send(message)
        left = producer.flush(30)
        failed = producer.failed - failed_before
    if left or failed:
        raise Problem(503, "kafka-unavailable", "Service Unavailable",
                      f"{left + failed} of {len(decoded)} usage events were not acknowledged by Kafka; "
                      "send the batch again (the ledger counts a repeated id once)")
    return _json({"accepted": len(decoded), "ids": [m.id for m in decoded]}, 202)


# ----------------------------------------------------------------------------- ClickHouse

# Ledger order is booking order: a tenant's entries are on one partition of finops.ledger.v1, in
# the order the ledger booked them, so the offset orders them (a late entry comes where it was
# booked, flagged late, and the balance after each entry runs on from the one before).
LEDGER_SQL = """
SELECT entry_id, kind, ts, amount_micros, balance_micros, cause_id, cause_type, charged_to, grant_id, hold_id,
       late, model_name, operation_type, api_key_id, usage_labels, kafka_offset
FROM ledger_entries
WHERE tenant_id = {tenant:String} AND account_id = {account:String}
  AND ts >= toDateTime64({from:String}, 6, 'UTC') AND ts < toDateTime64({to:String}, 6, 'UTC')
  AND (empty({kinds:Array(String)}) OR has({kinds:Array(String)}, kind))
  AND toInt64(kafka_offset) > {after_offset:Int64}
ORDER BY kafka_offset, entry_id
LIMIT {limit:UInt32}
"""

LEDGER_DESC_SQL = LEDGER_SQL.replace("toInt64(kafka_offset) > {after_offset:Int64}",
                                     "toInt64(kafka_offset) < {after_offset:Int64}").replace(
    "ORDER BY kafka_offset, entry_id", "ORDER BY kafka_offset DESC, entry_id DESC")

# available at T: the sum of what each of the account's entries stamped at or before T changed
# (the balance after it less the balance after the entry booked before it), so a late entry
# counts at its own time. consumed: a usage's consume entries are on the accounts that paid
# (charged_to names the account charged when an ancestor paid); its unfunded part is an
# overage entry on the charged account.
BALANCE_AT_SQL = """
SELECT countIf(account_id = {account:String}) AS entries,
       sumIf(delta, account_id = {account:String}) AS available_micros,
       maxIf(ts, account_id = {account:String}) AS last_ts,
       sumIf(amount_micros, kind = 'consume' AND (charged_to = {account:String}
                                                  OR charged_to = '' AND account_id = {account:String}))
         + sumIf(amount_micros, kind = 'overage' AND account_id = {account:String}) AS consumed_micros,
       sumIf(amount_micros, kind = 'overage' AND account_id = {account:String}) AS overage_micros
FROM (
    SELECT account_id, kind, ts, amount_micros, charged_to,
           balance_micros - lagInFrame(balance_micros, 1, 0) OVER (
               PARTITION BY account_id ORDER BY kafka_offset, entry_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS delta
    FROM ledger_entries
    WHERE tenant_id = {tenant:String} AND (account_id = {account:String} OR charged_to = {account:String})
)
WHERE ts <= toDateTime64({at:String}, 6, 'UTC')
"""


ALERTS_SQL = """
SELECT argMax(id, (ts, kafka_offset)) AS id, account_id, type, argMax(severity, (ts, kafka_offset)) AS severity,
       argMax(status, (ts, kafka_offset)) AS status, threshold, period,
       argMax(current_usage_micros, (ts, kafka_offset)) AS current_usage_micros,
       argMax(monthly_allocation_micros, (ts, kafka_offset)) AS monthly_allocation_micros,
       argMax(action, (ts, kafka_offset)) AS action, max(ts) AS last_ts
FROM alerts
WHERE tenant_id = {tenant:String} AND ({account:String} = '' OR account_id = {account:String})
  AND ts >= now64(6) - toIntervalDay({days:UInt32})
GROUP BY account_id, type, threshold, period
HAVING NOT {firing:UInt8} OR status = 'firing'
ORDER BY last_ts DESC, account_id, type, threshold
LIMIT 1000
"""

# the closing balance of each day with an entry up to {to} (the caller carries it over the days
# without one), by the rule of BALANCE_AT_SQL: each entry's change counts at its own event time
BALANCE_DAILY_SQL = """
SELECT toDate(ts) AS day, argMax(level, (ts, kafka_offset, entry_id)) AS available_micros
FROM (
    SELECT ts, kafka_offset, entry_id,
           sum(delta) OVER (ORDER BY ts, kafka_offset, entry_id
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS level
    FROM (
        SELECT ts, kafka_offset, entry_id,
               balance_micros - lagInFrame(balance_micros, 1, 0) OVER (
                   ORDER BY kafka_offset, entry_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS delta
        FROM ledger_entries
        WHERE tenant_id = {tenant:String} AND account_id = {account:String}
    )
)
WHERE toDate(ts) <= toDate({to:String})
GROUP BY day
ORDER BY day
"""


def _reader(backends: Backends):
    from .projections.clickhouse import ClickHouseError

    try:
        return backends.reader()
    except ClickHouseError as exc:
        raise Problem(503, "clickhouse-unavailable", "Service Unavailable", str(exc)) from None


def _query(backends: Backends, sql: str, params: dict) -> tuple[list[str], list[tuple]]:
    from .projections.clickhouse import ClickHouseError

    reader = _reader(backends)
    try:
        return reader.query(sql, params)
    except ClickHouseError as exc:
        raise Problem(503, "clickhouse-unavailable", "Service Unavailable", str(exc)) from None
    finally:
        reader.close()


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _ch_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _write_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(_encode([offset])).decode().rstrip("=")


def _read_cursor(text: str) -> int:
    try:
        (offset,) = msgspec.json.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(offset, int) or isinstance(offset, bool) or not -1 <= offset < 2**63:
            raise ValueError(offset)
        return offset
    except (ValueError, TypeError, msgspec.DecodeError):
        raise Problem(400, "invalid-parameter", "Bad Request", "cursor is not one this API gave",
                      reason="invalid") from None


# ----------------------------------------------------------------------------- running it


class ApiServer:
    """The live view and the HTTP server in threads of this process (``finops serve``, ``finops run serve``).

    ``run()`` blocks until ``stop()``; ``start()`` runs it in a thread and returns once the
    server listens (``url`` then names it; port 0 picks a free port). ``reader`` makes a
    ClickHouse reader per request (default: :func:`~finops.projections.query.open_reader`).
    """

    def __init__(self, settings: Settings, *, host: str | None = None, port: int | None = None,
                 insecure_local: bool = False, reader: Callable[[], Any] | None = None,
                 tokens: TokenStore | None = None) -> None:
        import uvicorn

        host = host or settings.api_host
        if insecure_local and host not in LOCAL_HOSTS:
            raise FinopsError(f"--insecure-local serves without tokens only on 127.0.0.1, not on {host}")
        self.view = LiveView(settings)
        self.backends = Backends(settings, self.view, tokens=tokens or TokenStore(settings.tokens_path),
                                 insecure_local=insecure_local, reader=reader)
        self.app = create_app(self.backends)
        config = uvicorn.Config(self.app, host=host, port=settings.api_port if port is None else port,
                                log_level="warning", access_log=False, lifespan="off", http="httptools",
                                loop="uvloop", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self._view_thread = threading.Thread(target=self.view.run, name="finops-view", daemon=True)
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        """The address it listens on, e.g. ``http://127.0.0.1:8080`` (the real port when 0 was asked for)."""
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def run(self) -> None:
        """Serve in this thread until stopped, with the live view read in another; closes everything at
        the end. Raises :class:`FinopsError` when the address cannot be listened on."""
        if not self._view_thread.is_alive():
            self._view_thread.start()
        try:
            self.server.run()
            if not self.server.started:
                raise FinopsError(f"cannot listen on {self.server.config.host}:{self.server.config.port} "
                                  "(in use? choose another with --port or FINOPS_API_PORT)")
        finally:
            self.view.stop()
            self._view_thread.join(10)
            self.backends.close()

    def start(self, timeout: float = 30.0) -> ApiServer:
        """Serve in a thread and return once listening. Raises the server's error, or
        :class:`FinopsError` when it does not listen within ``timeout`` seconds."""
        def target() -> None:
            try:
                self.run()
            except BaseException as exc:  # noqa: BLE001 - reported by start() and the owner
                self.error = exc

        self._thread = threading.Thread(target=target, name="finops-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise self.error or FinopsError(f"the API server did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Ask the server and the live view to end; waits up to 15 s for the server thread."""
        self.server.should_exit = True
        self.view.stop()
        if self._thread is not None:
            self._thread.join(15)


__all__ = ["Backends", "Problem", "create_app", "account_view", "tree_order", "ApiServer"]
