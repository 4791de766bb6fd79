"""LiteLLM integration: every call metered as one wire-v1 usage, and refused before it runs
when the ledger has blocked its key or account.

Built on LiteLLM's own callback API (``litellm.integrations.custom_logger.CustomLogger``);
install with ``pip install 'finops[litellm]'``; docs/integrations.md is the user's guide.

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
:class:`~finops.integrations.settings.LiteLLMSettings`) and ``FINOPS_KAFKA_BOOTSTRAP`` in the
proxy's environment.

**Metering.** After each call attempt, success or failure, the handler publishes one usage
through :class:`UsageProducer`. Its id is LiteLLM's call id and the attempt's start
(``<litellm_call_id>:<start µs>``, ``...:failed:<end µs>`` for a failed attempt): the same
attempt logged twice (LiteLLM's sync and async loggers, another process) is one usage, as
the ledger takes an id once (wire-v1.md, "Idempotency"), while a caller who sends its call id
again (the proxy's ``x-litellm-call-id`` header is the caller's) makes a new attempt, billed
again by the provider and charged again here. ``ts`` = the attempt's start (event time);
``units_consumed`` = input + output tokens; ``credits_consumed`` = LiteLLM's
``response_cost`` (US dollars) times ``credits_per_usd``, rounded half-even to the
micro-credit, or priced by a :class:`~finops.producers.usage.RateCard`; left out (the
tenant's ``set_rates`` card prices the tokens) without pricing, or when LiteLLM could not
price the model; 0 for a cache hit. Also ``response_latency_ms``, ``error_code`` for a
failed attempt, labels ``team``, ``user``, ``end_user``, ``model_group``, ``cache_hit`` (a
key's registry entry overrides them in the ledger), and the extra fields ``input_tokens``,
``output_tokens``, ``cached_tokens``, ``provider_cost_usd``: kept in the raw history
(``usage_events.raw``), ignored by the ledger (wire-v1.md, "Unknown extra fields"). A
request's ``no-log`` does not turn metering off (LiteLLM runs callbacks whose class name
holds ``_PROXY_`` for such requests: its own spend tracking's convention).

**Enforcement.** Before a call, :meth:`FinopsLiteLLM.check` asks ``finops serve``'s
``GET /v1/check`` (the live view of the ledger's committed state) about the call's account
and key. ``blocked`` and ``hard_cap`` refuse the call with LiteLLM's ``BudgetExceededError``;
a ``rate_limit_rps`` (an alert's critical action on a non-prod key,
``finops.enforcement.v1``) throttles the key in this process with a token bucket, refusing
with LiteLLM's ``RateLimitError``. In the proxy the check runs in ``async_pre_call_hook``.
LiteLLM's library has no pre-call hook that may refuse a call (it logs and swallows what
``log_pre_api_call`` raises), so there the check runs in :meth:`FinopsLiteLLM.completion` /
:meth:`FinopsLiteLLM.acompletion`, or call :meth:`FinopsLiteLLM.check` yourself. Without
``api_url`` there is no check: metering only.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping

import httpx
import litellm
from litellm.integrations.custom_logger import CustomLogger

from ..producers.usage import InvalidEvent, RateCard, UsageProducer, round_credits
from ..schemas import wire
from ..settings import Settings
from .settings import AccountFrom, LiteLLMSettings, Policy

log = logging.getLogger("finops.litellm")

_SENT_MEMORY = 65_536  # usage ids remembered to publish each once per process (the ledger dedupes as well)
_ACCOUNT_FROM = ("key", "team", "user", "end_user")

#: LiteLLM's call types as the usage's ``operation_type`` (others pass through as named).
OPERATION_TYPES = {
    "completion": "chat", "acompletion": "chat", "text_completion": "completion",
    "atext_completion": "completion", "embedding": "embedding", "aembedding": "embedding",
    "image_generation": "image", "aimage_generation": "image", "transcription": "audio",
    "atranscription": "audio", "speech": "speech", "aspeech": "speech", "responses": "responses",
    "aresponses": "responses", "anthropic_messages": "chat", "rerank": "rerank", "arerank": "rerank",
}


class NoTenant(ValueError):
    """A call that names no finops tenant, and there is no default (``FINOPS_LITELLM_TENANT_ID``)."""


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
    (``blocked``, ``hard_cap``, ...), or ``unavailable`` / ``unknown`` / ``auth_error`` when a
    policy decided; ``rate_limit_rps``: the key's throttle (requests per second, wall time)."""

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
    """The call's metadata: LiteLLM's logging view, then what the caller passed (``metadata=``)
    and what the proxy added (``user_api_key_*``)."""
    params = kwargs.get("litellm_params") or {}
    found: dict[str, Any] = {}
    for source in ((kwargs.get("standard_logging_object") or {}).get("metadata"), params.get("metadata"),
                   params.get("litellm_metadata"), kwargs.get("metadata")):
        if isinstance(source, Mapping):
            found.update({k: v for k, v in source.items() if v is not None})
    return found


def caller_of(metadata: Mapping[str, Any], *, tenant_id: str | None, account_from: AccountFrom = "key",
              default_api_key_id: str = "litellm", key: Any = None, user: Any = None,
              trust_request: bool = False) -> Caller:
    """The :class:`Caller` of a call from its metadata.

    ``metadata``: the call's ``metadata`` (with LiteLLM's ``user_api_key_*`` keys in the proxy).
    ``key``: the proxy's ``UserAPIKeyAuth`` in the pre-call hook. ``user``: the OpenAI ``user``
    field (the end user). ``finops_tenant_id``, ``finops_api_key_id`` and ``finops_account_id``
    name finops ids: from the virtual key's own metadata (set by an admin), then from the
    call's metadata, which behind the proxy counts only with ``trust_request`` (else a caller
    could pick whom it is charged to); the library has no proxy key, and its caller is the app.
    Without them: the key's alias, then its hash, is the ``api_key_id``; ``account_from``
    names the account (``key``: none, the ledger's ``bind_key`` registry finds it).
    Raises :class:`NoTenant` when no tenant is named and there is no default.
    """
    key_meta = getattr(key, "metadata", None) or metadata.get("user_api_key_metadata") or {}
    if not isinstance(key_meta, Mapping):
        key_meta = {}
    behind_proxy = key is not None or _text(metadata.get("user_api_key_hash")) is not None
    request = metadata if trust_request or not behind_proxy else {}
    tenant = _first(key_meta.get("finops_tenant_id"), request.get("finops_tenant_id"), tenant_id)
    if tenant is None:
        raise NoTenant("the call names no finops tenant: set FINOPS_LITELLM_TENANT_ID (tenant_id=), "
                       "or finops_tenant_id in the key's metadata")
    team = _first(getattr(key, "team_id", None), metadata.get("user_api_key_team_id"))
    person = _first(getattr(key, "user_id", None), metadata.get("user_api_key_user_id"))
    end_user = _first(getattr(key, "end_user_id", None), metadata.get("user_api_key_end_user_id"), user)
    api_key = _first(key_meta.get("finops_api_key_id"), request.get("finops_api_key_id"),
                     getattr(key, "key_alias", None), metadata.get("user_api_key_alias"),
                     getattr(key, "token", None), metadata.get("user_api_key_hash"), default_api_key_id)
    by_identity = {"team": team, "user": person, "end_user": end_user}.get(account_from)
    account = _first(key_meta.get("finops_account_id"), request.get("finops_account_id"), by_identity)
    return Caller(tenant, api_key or default_api_key_id, account, team, person, end_user)


def credits_of_cost(cost_usd: Any, credits_per_usd: Decimal) -> Decimal:
    """LiteLLM's ``response_cost`` (US dollars, a float) in credits, rounded half-even to the
    micro-credit. The float is read by its shortest text (``0.000225``, not its binary
    expansion); a missing, negative, non-finite or absurd (over 10^12 dollars) cost is 0."""
    try:
        cost = float(cost_usd) if cost_usd is not None else 0.0
    except (TypeError, ValueError):
        cost = 0.0
    if not math.isfinite(cost) or not 0 <= cost <= 1e12:
        return round_credits(Decimal(0))
    return round_credits(Decimal(repr(cost)) * credits_per_usd)


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.astimezone()).timestamp()
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else 0


def _cached_tokens(response_obj: Any, metadata: Mapping[str, Any]) -> int:
    usage = getattr(response_obj, "usage", None)
    if usage is None:
        usage = metadata.get("usage_object")
    details = usage.get("prompt_tokens_details") if isinstance(usage, Mapping) else getattr(
        usage, "prompt_tokens_details", None)
    return _count(details.get("cached_tokens") if isinstance(details, Mapping)
                  else getattr(details, "cached_tokens", None))


def model_of(slo: Mapping[str, Any], fallback: Any = None) -> str:
    """The model a call was priced as: LiteLLM's cost-map key (``gpt-4o`` for ``openai/gpt-4o``,
    an Azure deployment's base model), else its model without the provider prefix."""
    mapped = _text((slo.get("model_map_information") or {}).get("model_map_key"))
    model = mapped or _first(slo.get("model"), fallback) or "unknown"
    provider = _text(slo.get("custom_llm_provider"))
    if provider and model.startswith(provider + "/"):
        model = model[len(provider) + 1:]
    return model


def usage_of_call(kwargs: Mapping[str, Any], response_obj: Any, caller: Caller, *,
                  credits_per_usd: Decimal | None = None, rate_card: RateCard | None = None,
                  failed: bool = False, start_time: Any = None, end_time: Any = None) -> dict[str, Any]:
    """The wire-v1 usage of one LiteLLM call attempt, from the ``kwargs`` LiteLLM passes its
    loggers (its ``standard_logging_object`` above all). Shape in the module docstring; amounts
    are decimal strings of credits (6 places). Never raises for what LiteLLM logs: a model the
    rate card or LiteLLM cannot price is left to the ledger's card (``credits_consumed`` out)."""
    slo = kwargs.get("standard_logging_object") or {}
    metadata = _metadata(kwargs)
    call_id = _first(kwargs.get("litellm_call_id"), slo.get("litellm_call_id"), slo.get("id"))
    model = model_of(slo, kwargs.get("model") or getattr(response_obj, "model", None))
    input_tokens, output_tokens = _count(slo.get("prompt_tokens")), _count(slo.get("completion_tokens"))
    started = _epoch(slo.get("startTime")) or _epoch(start_time) or time.time()
    ended = _epoch(slo.get("endTime")) or _epoch(end_time) or started
    cost = slo.get("response_cost", kwargs.get("response_cost"))
    failed = failed or slo.get("status") == "failure"
    cache_hit = slo.get("cache_hit") is True
    call_type = str(slo.get("call_type") or kwargs.get("call_type") or "completion")
    labels = {"team": caller.team, "user": caller.user, "end_user": caller.end_user,
              "model_group": _text(slo.get("model_group")), "cache_hit": "true" if cache_hit else None}
    event: dict[str, Any] = {
        "type": "usage", "tenant_id": caller.tenant_id, "ts": wire.format_time(started),
        "api_key_id": caller.api_key_id, "model_name": model, "operation_type": OPERATION_TYPES.get(call_type, call_type),
        "units_consumed": 0 if cache_hit else input_tokens + output_tokens,
        "response_latency_ms": max(0, round((ended - started) * 1000)),
        "usage_labels": {k: v for k, v in labels.items() if v},
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cached_tokens": _cached_tokens(response_obj, metadata),
    }
    if isinstance(cost, (int, float)) and math.isfinite(cost):
        event["provider_cost_usd"] = repr(float(cost))
    attempt = f"{call_id or 'call'}:{round(started * 1e6)}"
    event["id"] = f"{attempt}:failed:{round(ended * 1e6)}" if failed else attempt
    if caller.account_id is not None:
        event["account_id"] = caller.account_id
    unpriced = cost is None or bool(slo.get("response_cost_failure_debug_info"))
    if cache_hit:  # served from LiteLLM's cache: the provider billed nothing
        event["credits_consumed"] = "0.000000"
    elif rate_card is not None:
        try:
            event["credits_consumed"] = str(rate_card.credits(model, input_tokens, output_tokens))
        except InvalidEvent as exc:
            log.warning("finops: %s; the ledger's rate card prices usage %s", exc, event["id"])
    elif credits_per_usd is not None and (failed or not unpriced):
        event["credits_consumed"] = str(credits_of_cost(cost, credits_per_usd))
    elif credits_per_usd is not None:
        log.warning("finops: LiteLLM could not price model %s; the ledger's rate card prices usage %s",
                    model, event["id"])
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
    """Asks ``finops serve``'s ``GET /v1/check`` about a :class:`Caller`, blocking or not.

    A 200 is the ledger's answer; a 404 (no such key or account in the view) follows
    ``on_unknown``; a 401 or 403 (the token is revoked, or another tenant's) follows
    ``on_auth_error`` and is logged as an error; anything else (connection refused, timeout,
    503 while the view loads) follows ``on_unavailable`` and is logged.
    """

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 0.5, on_unavailable: Policy = "allow",
                 on_unknown: Policy = "allow", on_auth_error: Policy = "refuse") -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.on_unavailable, self.on_unknown, self.on_auth_error = on_unavailable, on_unknown, on_auth_error
        self._client: httpx.Client | None = None
        self._aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its client
        self._lock = threading.Lock()

    @staticmethod
    def params(caller: Caller) -> dict[str, str]:
        """The check's query: the account when known (else the key's bound account), and the key."""
        query = {"tenant": caller.tenant_id, "api_key": caller.api_key_id}
        if caller.account_id is not None:
            query["account"] = caller.account_id
        return query

    def verdict(self, caller: Caller, status: int | None, body: Any, problem: str) -> Verdict:
        """The :class:`Verdict` of an HTTP answer (``status`` None: no answer, ``problem`` says why)."""
        if status == 200 and isinstance(body, Mapping):
            return Verdict(bool(body.get("allow")), body.get("reason"), body.get("account_id"),
                           body.get("rate_limit_rps"), tuple(body.get("blocked_by") or ()))
        if status == 404:
            return Verdict(self.on_unknown == "allow", "unknown", caller.account_id)
        whom = f"{caller.tenant_id}/{caller.account_id or caller.api_key_id}"
        if status in (401, 403):
            log.error("finops check for %s: the API refused the token (HTTP %s): %s the call", whom, status,
                      "allowing" if self.on_auth_error == "allow" else "refusing")
            return Verdict(self.on_auth_error == "allow", "auth_error", caller.account_id)
        log.warning("finops check for %s unavailable (%s): %s the call", whom, problem,
                    "allowing" if self.on_unavailable == "allow" else "refusing")
        return Verdict(self.on_unavailable == "allow", "unavailable", caller.account_id)

    def check(self, caller: Caller) -> Verdict:
        """The verdict for ``caller``, asked over HTTP (blocking; ``timeout_s`` per connect and read)."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout_s)
            client = self._client
        try:
            response = client.get("/v1/check", params=self.params(caller))
            return self.verdict(caller, response.status_code, _json(response), f"HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            return self.verdict(caller, None, None, f"{type(exc).__name__}: {exc}")

    async def acheck(self, caller: Caller) -> Verdict:
        """The verdict for ``caller`` without blocking the event loop; ``timeout_s`` bounds the whole check."""
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = httpx.AsyncClient(base_url=self.url, headers=self.headers,
                                                              timeout=self.timeout_s)
        try:
            response = await asyncio.wait_for(client.get("/v1/check", params=self.params(caller)), self.timeout_s)
            return self.verdict(caller, response.status_code, _json(response), f"HTTP {response.status_code}")
        except (httpx.HTTPError, asyncio.TimeoutError) as exc:
            return self.verdict(caller, None, None, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Close the blocking client; an event loop's client goes with its loop."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the logger


class _PROXY_FinopsLiteLLM(CustomLogger):  # "_PROXY_": LiteLLM runs it for no-log requests (module docstring)
    """LiteLLM's ``CustomLogger`` that meters every call into finops and, with ``api_url``,
    refuses what the ledger blocks. See the module docstring for what it publishes and checks.

    ``tenant_id``: the default tenant. ``settings``: finops's Kafka settings (default:
    ``FINOPS_*`` from the environment), or pass a ``producer`` (a :class:`UsageProducer`, not
    closed by :meth:`close`). Pricing: at most one of ``credits_per_usd`` (credits per US
    dollar of LiteLLM's cost) and ``rate_card``. The other parameters are
    :class:`~finops.integrations.settings.LiteLLMSettings`'s. Raises ValueError for bad ones.
    Counters: ``published``; ``unmetered`` (an attempt that could not become a usage: logged
    with the reason); ``refused``; ``throttled``; :attr:`undelivered` (Kafka gave up on them).
    """

    def __init__(self, tenant_id: str | None = None, *, settings: Settings | None = None,
                 producer: UsageProducer | None = None, credits_per_usd: Decimal | str | int | None = None,
                 rate_card: RateCard | None = None, api_url: str | None = None, api_token: str | None = None,
                 account_from: AccountFrom = "key", default_api_key_id: str = "litellm",
                 trust_request_metadata: bool = False, on_unavailable: Policy = "allow",
                 on_unknown: Policy = "allow", on_auth_error: Policy = "refuse",
                 check_timeout_s: float = 0.5) -> None:
        super().__init__()
        if credits_per_usd is not None and rate_card is not None:
            raise ValueError("give at most one of credits_per_usd and rate_card")
        if account_from not in _ACCOUNT_FROM:
            raise ValueError(f"account_from must be one of {', '.join(_ACCOUNT_FROM)}, not {account_from!r}")
        self.tenant_id = tenant_id
        self.credits_per_usd = Decimal(str(credits_per_usd)) if credits_per_usd is not None else None
        if self.credits_per_usd is not None and (not self.credits_per_usd.is_finite() or self.credits_per_usd < 0):
            raise ValueError(f"credits_per_usd must be a non-negative number, not {credits_per_usd!r}")
        self.rate_card = rate_card
        self.account_from = account_from
        self.default_api_key_id = default_api_key_id
        self.trust_request_metadata = trust_request_metadata
        self.entitlements = EntitlementClient(
            api_url, api_token, timeout_s=check_timeout_s, on_unavailable=on_unavailable, on_unknown=on_unknown,
            on_auth_error=on_auth_error) if api_url else None
        self.throttle = KeyThrottle()
        self._settings = settings
        self._producer = producer
        self._own_producer = producer is None
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._running: dict[str, float] = {}  # call ids LiteLLM is still running or logging -> wall time seen
        self._lock = threading.Lock()
        self.published = self.unmetered = self.refused = self.throttled = 0

    @classmethod
    def from_env(cls, settings: LiteLLMSettings | None = None) -> FinopsLiteLLM:
        """A handler configured by ``FINOPS_LITELLM_*`` and ``FINOPS_*`` (the proxy's way)."""
        s = settings or LiteLLMSettings()
        return cls(s.tenant_id, credits_per_usd=s.credits_per_usd, api_url=s.api_url,
                   api_token=s.api_token.get_secret_value() if s.api_token else None,
                   account_from=s.account_from, default_api_key_id=s.default_api_key_id,
                   trust_request_metadata=s.trust_request_metadata, on_unavailable=s.on_unavailable,
                   on_unknown=s.on_unknown, on_auth_error=s.on_auth_error, check_timeout_s=s.check_timeout_s)

    def _bump(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    # --------------------------------------------------------------- metering

    @property
    def producer(self) -> UsageProducer:
        """The usage producer, made on first use (closed, so flushed, at interpreter exit when it is ours)."""
        with self._lock:
            if self._producer is None:
                self._producer = UsageProducer(self._settings)
                atexit.register(self.close)
            return self._producer

    @property
    def undelivered(self) -> int:
        """Usage Kafka did not take (a delivery that failed after the producer's retries)."""
        return self._producer.failed if self._producer is not None else 0

    def _caller(self, metadata: Mapping[str, Any], key: Any = None, user: Any = None) -> Caller:
        return caller_of(metadata, tenant_id=self.tenant_id, account_from=self.account_from,
                         default_api_key_id=self.default_api_key_id, key=key, user=user,
                         trust_request=self.trust_request_metadata)

    def _first_time(self, usage_id: str) -> bool:
        with self._lock:
            if usage_id in self._sent:
                return False
            self._sent[usage_id] = None
            if len(self._sent) > _SENT_MEMORY:
                self._sent.popitem(last=False)
            return True

    def _started(self, kwargs: Mapping[str, Any]) -> None:
        call_id = _text(kwargs.get("litellm_call_id"))
        if call_id is not None:
            with self._lock:
                self._running[call_id] = time.time()

    def meter(self, kwargs: Mapping[str, Any], response_obj: Any, *, failed: bool = False,
              start_time: Any = None, end_time: Any = None) -> str | None:
        """Publish the usage of one finished call attempt; returns its id, or None when this
        process already published it, or it could not be made a usage (``unmetered`` counts it
        and the reason is logged). Never raises: LiteLLM would only log it."""
        try:
            params = kwargs.get("litellm_params") or {}
            caller = self._caller(_metadata(kwargs), user=kwargs.get("user") or params.get("user"))
            event = usage_of_call(kwargs, response_obj, caller, credits_per_usd=self.credits_per_usd,
                                  rate_card=self.rate_card, failed=failed, start_time=start_time, end_time=end_time)
            if not self._first_time(event["id"]):
                return None
            sent = self.producer.send(event)
            self._bump("published")
            return sent
        except Exception as exc:  # noqa: BLE001 - a call LiteLLM served must never break on its metering
            self._bump("unmetered")
            log.error("finops: LiteLLM call %s could not be metered: %s: %s", kwargs.get("litellm_call_id"),
                      type(exc).__name__, exc)
            return None
        finally:
            with self._lock:
                self._running.pop(_text(kwargs.get("litellm_call_id")) or "", None)

    def log_pre_api_call(self, model, messages, kwargs):
        """LiteLLM's hook before the provider is called: the call is running (:meth:`flush` waits for it)."""
        self._started(kwargs)

    async def async_log_pre_api_call(self, model, messages, kwargs):
        """:meth:`log_pre_api_call`, for LiteLLM's async calls."""
        self._started(kwargs)

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        """LiteLLM's hook after a call succeeded (in its logging thread): publish its usage."""
        self.meter(kwargs, response_obj, start_time=start_time, end_time=end_time)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):
        """LiteLLM's hook after a call failed: publish the attempt's usage with its error code."""
        self.meter(kwargs, response_obj, failed=True, start_time=start_time, end_time=end_time)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        """:meth:`log_success_event` for async calls, off the event loop (Kafka's queue may be full)."""
        await asyncio.to_thread(self.meter, kwargs, response_obj, start_time=start_time, end_time=end_time)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        """:meth:`log_failure_event` for async calls, off the event loop."""
        await asyncio.to_thread(self.meter, kwargs, response_obj, failed=True, start_time=start_time,
                                end_time=end_time)

    # --------------------------------------------------------------- enforcement

    def _enforce(self, caller: Caller, verdict: Verdict, model: str | None) -> Verdict:
        if not verdict.allow:
            self._bump("refused")
            whom = verdict.account_id or caller.account_id or f"key {caller.api_key_id}"
            behind = f" by {', '.join(verdict.blocked_by)}" if verdict.blocked_by else ""
            raise litellm.BudgetExceededError(
                current_cost=0.0, max_budget=0.0, llm_provider="finops", entity_type="account", entity_id=whom,
                message=f"finops: {whom} of tenant {caller.tenant_id} may not spend: {verdict.reason}{behind}")
        if verdict.rate_limit_rps is not None and not self.throttle.admit(
                caller.tenant_id, caller.api_key_id, float(verdict.rate_limit_rps)):
            self._bump("throttled")
            raise litellm.RateLimitError(
                message=f"finops: key {caller.api_key_id} of tenant {caller.tenant_id} is limited to "
                        f"{verdict.rate_limit_rps:g} requests/s by a critical budget alert",
                llm_provider="finops", model=model or "")
        return verdict

    def _checked_caller(self, metadata: Mapping[str, Any] | None, user: Any, model: str | None,
                        key: Any = None) -> Caller:
        try:
            return self._caller(metadata or {}, key=key, user=user)
        except NoTenant as exc:
            self._bump("refused")
            raise litellm.BadRequestError(message=f"finops: {exc}", model=model or "", llm_provider="finops") from None

    def check(self, metadata: Mapping[str, Any] | None = None, *, user: str | None = None,
              model: str | None = None) -> Verdict:
        """Check a call about to run (its ``metadata`` and ``user`` as passed to LiteLLM).

        Returns the :class:`Verdict` when it may run. Raises ``litellm.BudgetExceededError``
        when the ledger refuses it (``blocked``, ``hard_cap``; or a policy's ``unknown``,
        ``unavailable``, ``auth_error``), ``litellm.RateLimitError`` when its key is over its
        rate limit, ``litellm.BadRequestError`` when it names no tenant. Without ``api_url``:
        allowed.
        """
        caller = self._checked_caller(metadata, user, model)
        if self.entitlements is None:
            return Verdict(True)
        return self._enforce(caller, self.entitlements.check(caller), model)

    async def acheck(self, metadata: Mapping[str, Any] | None = None, *, user: str | None = None,
                     model: str | None = None, key: Any = None) -> Verdict:
        """:meth:`check` without blocking the event loop; ``key``: the proxy's ``UserAPIKeyAuth``."""
        caller = self._checked_caller(metadata, user, model, key)
        if self.entitlements is None:
            return Verdict(True)
        return self._enforce(caller, await self.entitlements.acheck(caller), model)

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        """The proxy's hook before a call: check its key and account; raise to refuse it."""
        await self.acheck(data.get("metadata") or data.get("litellm_metadata") or {}, user=data.get("user"),
                          model=data.get("model"), key=user_api_key_dict)
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
        """Wait (up to ``timeout`` wall seconds) for calls LiteLLM is still running or logging in its
        background threads, then for their usage to reach Kafka. Returns how many are not
        delivered yet (calls still running, such as open streams, and queued messages)."""
        deadline = time.monotonic() + timeout
        while self._still_running() and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = self._producer.flush(max(0.0, deadline - time.monotonic())) if self._producer is not None else 0
        return self._still_running() + queued

    def _still_running(self) -> int:
        """Calls started in the last hour and not logged yet (one LiteLLM never logs is forgotten then)."""
        with self._lock:
            recent = time.time() - 3600
            for call_id in [c for c, seen in self._running.items() if seen < recent]:
                del self._running[call_id]
            return len(self._running)

    def close(self, timeout: float = 30.0) -> None:
        """:meth:`flush`, then close the producer this handler made (not one passed in) and the
        check's client. Usage logged after this makes a new producer, closed at exit."""
        self.flush(timeout)
        if self.entitlements is not None:
            self.entitlements.close()
        with self._lock:
            producer, self._producer = (self._producer, None) if self._own_producer else (None, self._producer)
        if producer is not None:
            producer.close()


FinopsLiteLLM = _PROXY_FinopsLiteLLM
"""The handler: ``FinopsLiteLLM(tenant_id, ...)``, added to ``litellm.callbacks`` (see above)."""

_proxy_handler: FinopsLiteLLM | None = None
_proxy_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """``proxy_handler``: the handler the proxy config names, made from the environment on first use."""
    global _proxy_handler
    if name == "proxy_handler":
        with _proxy_lock:
            if _proxy_handler is None:
                _proxy_handler = FinopsLiteLLM.from_env()
            return _proxy_handler
    raise AttributeError(name)
