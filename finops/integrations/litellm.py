"""LiteLLM integration: every call metered as one wire-v1 usage, and refused before it runs
when the ledger has blocked its key or account.

Built on LiteLLM's own callback API (``litellm.integrations.custom_logger.CustomLogger``);
install with ``pip install 'finops[litellm]'``.

Library (``litellm.completion``)::

    import litellm
    from finops.integrations.litellm import FinopsLiteLLM

    finops = FinopsLiteLLM(tenant_id="acme", credits_per_usd="1000",          # 1 USD = 1,000 credits
                           api_url="http://127.0.0.1:8080", api_token="...")  # finops serve, for the check
    litellm.callbacks = [finops]                                             # meters every call
    response = finops.completion(model="gpt-4o", messages=[...],             # check, then litellm.completion
                                 metadata={"finops_api_key_id": "key-search"})

Proxy (``litellm --config config.yaml``)::

    litellm_settings:
      callbacks: finops.integrations.litellm.proxy_handler

with ``FINOPS_LITELLM_TENANT_ID`` (and the other ``FINOPS_LITELLM_*`` settings of
:class:`LiteLLMSettings`) and ``FINOPS_KAFKA_BOOTSTRAP`` in the proxy's environment.

**Metering.** After each call, success or failure, :meth:`FinopsLiteLLM.log_success_event`
(and its failure and async forms) publishes one usage through :class:`UsageProducer`:
id = LiteLLM's call id (``litellm_call_id``), so a resent request, or the same call logged by
both the sync and the async handler, is one usage (the ledger takes an id once:
wire-v1.md, "Idempotency"); a failed attempt is ``<call id>:failed`` (LiteLLM retries under
the same call id, and the success must not collide with the failure before it); ``ts`` = the call's start (event time); ``units_consumed`` = input
+ output tokens; ``credits_consumed`` = LiteLLM's ``response_cost`` (US dollars) times
``credits_per_usd``, rounded half-even to the micro-credit, or priced by a
:class:`~finops.producers.usage.RateCard`, or left out so the tenant's ``set_rates`` card
prices the tokens; ``response_latency_ms``; ``error_code`` for a failed call; labels
``team``, ``user``, ``end_user``, ``model_group`` from LiteLLM's metadata (a key's registry
entry overrides them in the ledger). ``input_tokens``, ``output_tokens``, ``cached_tokens``
and ``provider_cost_usd`` ride along as extra fields: kept in the raw history
(``usage_events.raw``), ignored by the ledger (wire-v1.md, "Unknown extra fields").

**Enforcement.** Before a call, :meth:`FinopsLiteLLM.check` asks ``finops serve``'s
``GET /v1/check`` (the live view of the ledger's committed state) about the call's key, or
its account when the call names one. ``blocked`` and ``hard_cap`` refuse the call with
LiteLLM's ``BudgetExceededError``; a ``rate_limit_rps`` (an alert's critical action on a
non-prod key, ``finops.enforcement.v1``) throttles the key in this process with a token
bucket, refusing with LiteLLM's ``RateLimitError``. In the proxy the check runs in
``async_pre_call_hook``. LiteLLM's SDK has no pre-call hook that may refuse a call (it logs
and swallows what ``log_pre_api_call`` raises), so in the library the check runs in
:meth:`FinopsLiteLLM.completion` / :meth:`FinopsLiteLLM.acompletion`, or call
:meth:`FinopsLiteLLM.check` yourself. Without ``api_url`` there is no check: metering only.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal, Mapping

import httpx
import litellm
from litellm.integrations.custom_logger import CustomLogger
from ..producers.usage import InvalidEvent, RateCard, UsageProducer
from ..settings import Settings
from .settings import LiteLLMSettings, Policy

log = logging.getLogger("finops.litellm")

_MICRO = Decimal("0.000001")
_SENT_MEMORY = 65_536  # call ids remembered to publish each once per process (the ledger dedupes as well)

#: LiteLLM's call types as the usage's ``operation_type`` (others pass through as named).
OPERATION_TYPES = {
    "completion": "chat", "acompletion": "chat", "text_completion": "completion",
    "atext_completion": "completion", "embedding": "embedding", "aembedding": "embedding",
    "image_generation": "image", "aimage_generation": "image", "transcription": "audio",
    "atranscription": "audio", "speech": "speech", "aspeech": "speech", "responses": "responses",
    "aresponses": "responses", "anthropic_messages": "chat", "rerank": "rerank", "arerank": "rerank",
}

@dataclass(frozen=True)
class Caller:
    """Who a call is for, in finops terms: the tenant, the ``api_key_id``, the account when the
    call (or ``account_from``) names one, and LiteLLM's team, user and end user for labels."""

    tenant_id: str
    api_key_id: str
    account_id: str | None = None
    team: str | None = None
    user: str | None = None
    end_user: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The pre-call check's answer. ``allow``: may the call run; ``reason``: the ledger's
    (``blocked``, ``hard_cap``, ...), or ``unavailable`` / ``unknown`` when the policy decided;
    ``rate_limit_rps``: the key's throttle (requests per second, wall time), if any."""

    allow: bool
    reason: str | None = None
    account_id: str | None = None
    rate_limit_rps: float | None = None
    blocked_by: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- who and what


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _first(*values: Any) -> str | None:
    return next((t for t in map(_text, values) if t is not None), None)


def _metadata(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's metadata: what the caller passed (``metadata=``), then what the proxy added."""
    params = kwargs.get("litellm_params") or {}
    found: dict[str, Any] = {}
    for source in ((kwargs.get("standard_logging_object") or {}).get("metadata"), params.get("metadata"),
                   params.get("litellm_metadata"), kwargs.get("metadata")):
        if isinstance(source, Mapping):
            found.update({k: v for k, v in source.items() if v is not None})
    return found


def caller_of(metadata: Mapping[str, Any], *, tenant_id: str | None, account_from: str = "key",
              default_api_key_id: str = "litellm", key: Any = None, user: Any = None) -> Caller:
    """The :class:`Caller` of a call from its metadata.

    ``metadata``: the call's ``metadata`` (LiteLLM's ``user_api_key_*`` keys in the proxy, any
    keys in the library); ``finops_tenant_id``, ``finops_account_id`` and ``finops_api_key_id``
    in the virtual key's own metadata (set by an admin), else in the call's, name finops ids
    directly. ``key``: the proxy's
    ``UserAPIKeyAuth`` when there is one. ``user``: the OpenAI ``user`` field (the end user).
    Raises ValueError when no tenant is named and there is no default.
    """
    key_meta = getattr(key, "metadata", None) or metadata.get("user_api_key_metadata") or {}
    if not isinstance(key_meta, Mapping):
        key_meta = {}
    tenant = _first(key_meta.get("finops_tenant_id"), metadata.get("finops_tenant_id"), tenant_id)
    if tenant is None:
        raise ValueError("the call names no finops tenant: set tenant_id (FINOPS_LITELLM_TENANT_ID) "
                         "or metadata finops_tenant_id")
    team = _first(getattr(key, "team_id", None), metadata.get("user_api_key_team_id"))
    person = _first(getattr(key, "user_id", None), metadata.get("user_api_key_user_id"))
    end_user = _first(getattr(key, "end_user_id", None), metadata.get("user_api_key_end_user_id"), user)
    api_key = _first(key_meta.get("finops_api_key_id"), metadata.get("finops_api_key_id"),
                     getattr(key, "key_alias", None), metadata.get("user_api_key_alias"),
                     getattr(key, "token", None), metadata.get("user_api_key_hash"), default_api_key_id)
    account = _first(key_meta.get("finops_account_id"), metadata.get("finops_account_id"),
                     team if account_from == "team" else None, person if account_from == "user" else None)
    return Caller(tenant, api_key or default_api_key_id, account, team, person, end_user)


def credits_of_cost(cost_usd: Any, credits_per_usd: Decimal) -> Decimal:
    """LiteLLM's ``response_cost`` (US dollars, a float) in credits, rounded half-even to the
    micro-credit. The float is read by its shortest text (``0.000225``, not its binary
    expansion); a missing, negative or non-finite cost is 0."""
    try:
        cost = Decimal(repr(float(cost_usd))) if cost_usd is not None else Decimal(0)
    except (TypeError, ValueError, InvalidOperation):
        cost = Decimal(0)
    if not cost.is_finite() or cost < 0:
        cost = Decimal(0)
    return (cost * credits_per_usd).quantize(_MICRO, rounding=ROUND_HALF_EVEN)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.astimezone()).timestamp()
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _cached_tokens(response_obj: Any, metadata: Mapping[str, Any]) -> int:
    usage = getattr(response_obj, "usage", None)
    if usage is None:
        usage = metadata.get("usage_object")
    details = usage.get("prompt_tokens_details") if isinstance(usage, Mapping) else getattr(
        usage, "prompt_tokens_details", None)
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else getattr(details, "cached_tokens", None)
    return int(cached) if isinstance(cached, (int, float)) and cached > 0 else 0


def usage_of_call(kwargs: Mapping[str, Any], response_obj: Any, caller: Caller, *,
                  credits_per_usd: Decimal | None = None, rate_card: RateCard | None = None,
                  failed: bool = False, start_time: Any = None, end_time: Any = None) -> dict[str, Any]:
    """The wire-v1 usage of one LiteLLM call, from the ``kwargs`` LiteLLM passes its loggers
    (its ``standard_logging_object`` above all). Shape in the module docstring; amounts are
    decimal strings of credits (6 places). Raises :class:`InvalidEvent` (``no_rate``) when the
    rate card has no price for the model."""
    slo = kwargs.get("standard_logging_object") or {}
    metadata = _metadata(kwargs)
    call_id = _first(kwargs.get("litellm_call_id"), slo.get("litellm_call_id"), slo.get("id"))
    model = _first(slo.get("model"), kwargs.get("model"), getattr(response_obj, "model", None)) or "unknown"
    input_tokens = int(slo.get("prompt_tokens") or 0)
    output_tokens = int(slo.get("completion_tokens") or 0)
    started = _epoch(slo.get("startTime")) or _epoch(start_time) or time.time()
    ended = _epoch(slo.get("endTime")) or _epoch(end_time) or started
    cost = slo.get("response_cost", kwargs.get("response_cost"))
    failed = failed or slo.get("status") == "failure"
    event: dict[str, Any] = {
        "type": "usage", "tenant_id": caller.tenant_id, "ts": _iso(started), "api_key_id": caller.api_key_id,
        "model_name": model, "operation_type": OPERATION_TYPES.get(str(slo.get("call_type") or kwargs.get(
            "call_type") or "completion"), str(slo.get("call_type") or "chat")),
        "units_consumed": input_tokens + output_tokens,
        "response_latency_ms": max(0, round((ended - started) * 1000)),
        "usage_labels": {k: v for k, v in (("team", caller.team), ("user", caller.user),
                                           ("end_user", caller.end_user),
                                           ("model_group", _text(slo.get("model_group")))) if v},
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cached_tokens": _cached_tokens(response_obj, metadata),
        "provider_cost_usd": repr(float(cost)) if isinstance(cost, (int, float)) else None,
    }
    if event["provider_cost_usd"] is None:
        del event["provider_cost_usd"]
    if call_id is not None:  # a failed attempt has its own id: a retry that succeeds reuses the call id
        event["id"] = f"{call_id}:failed" if failed else call_id
    if caller.account_id is not None:
        event["account_id"] = caller.account_id
    if rate_card is not None:
        event["credits_consumed"] = str(rate_card.credits(model, input_tokens, output_tokens))
    elif credits_per_usd is not None:
        event["credits_consumed"] = str(credits_of_cost(cost, credits_per_usd))
    if failed:
        info = slo.get("error_information") or {}
        event["error_code"] = _first(info.get("error_code"), info.get("error_class")) or "error"
    return event


# ----------------------------------------------------------------------------- the check


class KeyThrottle:
    """Per-key token buckets: at most ``rps`` calls per wall-clock second on average, bursts of
    up to ``max(1, rps)``. Per process: N proxy workers let N times the rate through."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def admit(self, tenant_id: str, api_key_id: str, rps: float, now: float | None = None) -> bool:
        """Take one token from the key's bucket; False when it is empty (the call is throttled)."""
        now = time.monotonic() if now is None else now
        capacity = max(1.0, rps)
        with self._lock:
            tokens, at = self._buckets.get((tenant_id, api_key_id), (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rps)
            admitted = tokens >= 1.0
            self._buckets[(tenant_id, api_key_id)] = (tokens - 1.0 if admitted else tokens, now)
            return admitted


class EntitlementClient:
    """Asks ``finops serve``'s ``GET /v1/check`` about a :class:`Caller`, synchronously or not.

    A 200 is the ledger's answer; a 404 (no such key or account in the view) follows
    ``on_unknown``; anything else (connection refused, timeout, 503 while the view loads, a
    refused token) follows ``on_unavailable`` and is logged.
    """

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 0.5,
                 on_unavailable: Policy = "allow", on_unknown: Policy = "allow") -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.on_unavailable = on_unavailable
        self.on_unknown = on_unknown
        self._client: httpx.Client | None = None
        self._aclients: dict[int, httpx.AsyncClient] = {}  # one per event loop

    def _params(self, caller: Caller) -> dict[str, str]:
        if caller.account_id is not None:
            return {"tenant": caller.tenant_id, "account": caller.account_id}
        return {"tenant": caller.tenant_id, "api_key": caller.api_key_id}

    def _verdict(self, caller: Caller, status: int | None, body: Any, problem: str) -> Verdict:
        if status == 200 and isinstance(body, Mapping):
            return Verdict(bool(body.get("allow")), body.get("reason"), body.get("account_id"),
                           body.get("rate_limit_rps"), tuple(body.get("blocked_by") or ()))
        if status == 404:
            return Verdict(self.on_unknown == "allow", "unknown", caller.account_id)
        log.warning("finops check for %s/%s unavailable (%s): %s the call", caller.tenant_id,
                    caller.account_id or caller.api_key_id, problem,
                    "allowing" if self.on_unavailable == "allow" else "refusing")
        return Verdict(self.on_unavailable == "allow", "unavailable", caller.account_id)

    def check(self, caller: Caller) -> Verdict:
        """The verdict for ``caller``, asked over HTTP (blocking, at most ``timeout_s``)."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout_s)
        try:
            response = self._client.get("/v1/check", params=self._params(caller))
            return self._verdict(caller, response.status_code, _json(response), f"HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            return self._verdict(caller, None, None, f"{type(exc).__name__}: {exc}")

    async def acheck(self, caller: Caller) -> Verdict:
        """The verdict for ``caller``, asked over HTTP without blocking the event loop."""
        loop = id(asyncio.get_running_loop())
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = httpx.AsyncClient(base_url=self.url, headers=self.headers,
                                                              timeout=self.timeout_s)
        try:
            response = await client.get("/v1/check", params=self._params(caller))
            return self._verdict(caller, response.status_code, _json(response), f"HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            return self._verdict(caller, None, None, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Close the blocking client (the async ones close with their event loops)."""
        if self._client is not None:
            self._client.close()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the logger


class FinopsLiteLLM(CustomLogger):
    """LiteLLM's ``CustomLogger`` that meters every call into finops and, with ``api_url``,
    refuses what the ledger blocks. See the module docstring for what it publishes and checks.

    ``tenant_id``: the default tenant (a call's metadata ``finops_tenant_id`` overrides it).
    ``settings``: finops's Kafka settings (default: ``FINOPS_*`` from the environment), or pass
    a ``producer`` (a :class:`UsageProducer`, not closed by :meth:`close`). Pricing, at most one
    of ``credits_per_usd`` (credits per US dollar of LiteLLM's cost) and ``rate_card``. The other
    parameters are :class:`LiteLLMSettings`'s. Counters: ``published``, ``unmetered`` (calls
    that could not become a valid usage: logged with the reason), ``refused``, ``throttled``.
    """

    def __init__(self, tenant_id: str | None = None, *, settings: Settings | None = None,
                 producer: UsageProducer | None = None, credits_per_usd: Decimal | str | int | None = None,
                 rate_card: RateCard | None = None, api_url: str | None = None, api_token: str | None = None,
                 account_from: Literal["key", "team", "user"] = "key", default_api_key_id: str = "litellm",
                 on_unavailable: Policy = "allow", on_unknown: Policy = "allow",
                 check_timeout_s: float = 0.5) -> None:
        super().__init__()
        if credits_per_usd is not None and rate_card is not None:
            raise ValueError("give at most one of credits_per_usd and rate_card")
        if account_from not in ("key", "team", "user"):
            raise ValueError(f"account_from must be key, team or user, not {account_from!r}")
        self.tenant_id = tenant_id
        self.credits_per_usd = Decimal(str(credits_per_usd)) if credits_per_usd is not None else None
        if self.credits_per_usd is not None and (not self.credits_per_usd.is_finite() or self.credits_per_usd < 0):
            raise ValueError(f"credits_per_usd must be a non-negative number, not {credits_per_usd!r}")
        self.rate_card = rate_card
        self.account_from = account_from
        self.default_api_key_id = default_api_key_id
        self.entitlements = EntitlementClient(api_url, api_token, timeout_s=check_timeout_s,
                                              on_unavailable=on_unavailable,
                                              on_unknown=on_unknown) if api_url else None
        self.throttle = KeyThrottle()
        self._settings = settings
        self._producer = producer
        self._own_producer = producer is None
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.published = self.unmetered = self.refused = self.throttled = 0

    @classmethod
    def from_env(cls, settings: LiteLLMSettings | None = None) -> FinopsLiteLLM:
        """A handler configured by ``FINOPS_LITELLM_*`` and ``FINOPS_*`` (the proxy's way)."""
        s = settings or LiteLLMSettings()
        return cls(s.tenant_id, credits_per_usd=s.credits_per_usd, api_url=s.api_url,
                   api_token=s.api_token.get_secret_value() if s.api_token else None,
                   account_from=s.account_from, default_api_key_id=s.default_api_key_id,
                   on_unavailable=s.on_unavailable, on_unknown=s.on_unknown, check_timeout_s=s.check_timeout_s)

    # --------------------------------------------------------------- metering

    @property
    def producer(self) -> UsageProducer:
        """The usage producer, created on first use (flushed at interpreter exit when it is ours)."""
        with self._lock:
            if self._producer is None:
                self._producer = UsageProducer(self._settings)
                atexit.register(self.close)
            return self._producer

    def _caller(self, metadata: Mapping[str, Any], key: Any = None, user: Any = None) -> Caller:
        return caller_of(metadata, tenant_id=self.tenant_id, account_from=self.account_from,
                         default_api_key_id=self.default_api_key_id, key=key, user=user)

    def _first_time(self, call_id: str | None) -> bool:
        if call_id is None:
            return True
        with self._lock:
            if call_id in self._sent:
                return False
            self._sent[call_id] = None
            if len(self._sent) > _SENT_MEMORY:
                self._sent.popitem(last=False)
            return True

    def meter(self, kwargs: Mapping[str, Any], response_obj: Any, *, failed: bool = False,
              start_time: Any = None, end_time: Any = None) -> str | None:
        """Publish the usage of one finished call; returns its id, or None when it was already
        published by this process or could not be made valid (then ``unmetered`` counts it and
        the reason is logged). Never raises: LiteLLM would only log it."""
        try:
            params = kwargs.get("litellm_params") or {}
            caller = self._caller(_metadata(kwargs), user=kwargs.get("user") or params.get("user"))
            event = usage_of_call(kwargs, response_obj, caller, credits_per_usd=self.credits_per_usd,
                                  rate_card=self.rate_card, failed=failed, start_time=start_time, end_time=end_time)
            if not self._first_time(event.get("id")):
                return None
            sent = self.producer.send(event)
            self.published += 1
            return sent
        except (InvalidEvent, ValueError) as exc:
            self.unmetered += 1
            log.error("finops: a LiteLLM call could not be metered (%s); call id %s", exc,
                      kwargs.get("litellm_call_id"))
            return None

    def log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102 - LiteLLM's hook
        """LiteLLM's hook after a call succeeded: its usage is metered (:meth:`meter`)."""
        self.meter(kwargs, response_obj, start_time=start_time, end_time=end_time)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102 - LiteLLM's hook
        """LiteLLM's hook after a call failed: metered as a failed attempt (:meth:`meter` with ``failed``)."""
        self.meter(kwargs, response_obj, failed=True, start_time=start_time, end_time=end_time)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        """The async proxy's hook after a call succeeded; meters it like :meth:`log_success_event`."""
        self.meter(kwargs, response_obj, start_time=start_time, end_time=end_time)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        """The async proxy's hook after a call failed; meters it like :meth:`log_failure_event`."""
        self.meter(kwargs, response_obj, failed=True, start_time=start_time, end_time=end_time)

    # --------------------------------------------------------------- enforcement

    def _enforce(self, caller: Caller, verdict: Verdict, model: str | None) -> Verdict:
        if not verdict.allow:
            self.refused += 1
            whom = verdict.account_id or caller.account_id or f"key {caller.api_key_id}"
            behind = f" by {', '.join(verdict.blocked_by)}" if verdict.blocked_by else ""
            raise litellm.BudgetExceededError(
                current_cost=0.0, max_budget=0.0, llm_provider="finops", entity_type="account", entity_id=whom,
                message=f"finops: {whom} of tenant {caller.tenant_id} may not spend: {verdict.reason}{behind}")
        if verdict.rate_limit_rps is not None and not self.throttle.admit(
                caller.tenant_id, caller.api_key_id, float(verdict.rate_limit_rps)):
            self.throttled += 1
            raise litellm.RateLimitError(
                message=f"finops: key {caller.api_key_id} of tenant {caller.tenant_id} is limited to "
                        f"{verdict.rate_limit_rps:g} requests/s by a critical budget alert",
                llm_provider="finops", model=model or "")
        return verdict

    def check(self, metadata: Mapping[str, Any] | None = None, *, user: str | None = None,
              model: str | None = None) -> Verdict:
        """Check a call about to run (its ``metadata`` and ``user`` as passed to LiteLLM).

        Returns the :class:`Verdict` when it may run. Raises ``litellm.BudgetExceededError``
        when the ledger refuses it (``blocked``, ``hard_cap``; or a policy's ``unknown`` /
        ``unavailable``) and ``litellm.RateLimitError`` when its key is over its rate limit.
        Without ``api_url``: always allowed.
        """
        caller = self._caller(metadata or {}, user=user)
        if self.entitlements is None:
            return Verdict(True)
        return self._enforce(caller, self.entitlements.check(caller), model)

    async def acheck(self, metadata: Mapping[str, Any] | None = None, *, user: str | None = None,
                     model: str | None = None, key: Any = None) -> Verdict:
        """:meth:`check` without blocking the event loop; ``key``: the proxy's ``UserAPIKeyAuth``."""
        caller = self._caller(metadata or {}, key=key, user=user)
        if self.entitlements is None:
            return Verdict(True)
        return self._enforce(caller, await self.entitlements.acheck(caller), model)

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):  # noqa: D102 - proxy hook
        """The proxy's hook: check the call's key (or account) before it runs; raise to refuse."""
        await self.acheck(data.get("metadata") or {}, user=data.get("user"), model=data.get("model"),
                          key=user_api_key_dict)
        return data

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`check`, then ``litellm.completion(*args, **kwargs)``."""
        self.check(kwargs.get("metadata"), user=kwargs.get("user"), model=kwargs.get("model"))
        return litellm.completion(*args, **kwargs)

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`acheck`, then ``litellm.acompletion(*args, **kwargs)``."""
        await self.acheck(kwargs.get("metadata"), user=kwargs.get("user"), model=kwargs.get("model"))
        return await litellm.acompletion(*args, **kwargs)

    # --------------------------------------------------------------- lifecycle

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for published usage to be delivered; returns how many are still queued."""
        return self._producer.flush(timeout) if self._producer is not None else 0

    def close(self) -> None:
        """Flush and close the producer this handler made (not one passed in) and the check's client."""
        if self.entitlements is not None:
            self.entitlements.close()
        with self._lock:
            producer, self._producer = (self._producer, None) if self._own_producer else (None, self._producer)
        if producer is not None:
            producer.close()


_proxy_handler: FinopsLiteLLM | None = None


def __getattr__(name: str) -> Any:
    """``proxy_handler``: the handler the proxy config names, made from the environment on first use."""
    global _proxy_handler
    if name == "proxy_handler":
        if _proxy_handler is None:
            _proxy_handler = FinopsLiteLLM.from_env()
        return _proxy_handler
    raise AttributeError(name)
