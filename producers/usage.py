"""The SDK apps use to publish usage: one event per request, checked in the app.

    from finops.producers import UsageProducer

    with UsageProducer() as usage:                    # FINOPS_KAFKA_BOOTSTRAP or the local broker
        usage.send({"tenant_id": "acme", "account_id": "team-search", "api_key_id": "key-1",
                    "model_name": "gpt-4o", "operation_type": "chat", "units_consumed": 1200,
                    "credits_consumed": "0.0036"})

``send`` fills ``type``, ``id`` (a new request id) and ``ts`` (now) when absent, checks the
event against wire v1 and raises :class:`InvalidEvent` at once, so a bad event fails in
the app and never reaches the topic. Delivery is asynchronous (batched, idempotent,
lz4): ``flush()`` waits for it, and failures are counted and kept in ``failures`` (and
passed to ``on_delivery``). For OpenAI-style responses see :func:`usage_from_openai`
and :func:`measure_latency`.
"""

from __future__ import annotations

import itertools
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Callable, Iterator, Mapping

import msgspec

from .. import clients
from ..errors import FinopsError
from ..schemas import topics, wire
from ..settings import Settings


class InvalidEvent(FinopsError, ValueError):
    """An event that is not a valid wire-v1 message; ``reason`` is the rejection reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DeliveryFailure:
    """A message Kafka did not take: its ``id`` (None when unreadable), the topic and Kafka's error."""

    id: str | None
    topic: str
    error: str


def resolve_settings(settings: Settings | None, bootstrap: str | None) -> Settings:
    """The caller's settings (default: FINOPS_* from the environment), with ``bootstrap`` if given."""
    settings = settings if settings is not None else Settings()
    if bootstrap:
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    return settings


def now_iso() -> str:
    """This machine's wall time, UTC, as RFC 3339 with microseconds and ``Z`` (a wire-v1 ``ts``)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _Ids:
    """Request ids that are unique without coordination: a random 128-bit prefix per process
    and a counter (cheaper than a uuid4 per event)."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex
        self.count = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}-{next(self.count)}"


_ids = _Ids()


def complete(message: Mapping[str, Any], type_: str | None = None) -> dict[str, Any]:
    """The message with ``type``, ``id`` and ``ts`` (now, UTC) filled in where absent."""
    full = dict(message)
    if type_ is not None and "type" not in full:
        full["type"] = type_
    if "id" not in full:
        full["id"] = _ids.next()
    if "ts" not in full:
        full["ts"] = datetime.now(timezone.utc)  # msgspec writes it as RFC 3339 with Z
    return full


# The ledger refuses a ts more than FINOPS_MAX_FUTURE_SKEW (default 5 minutes) ahead of the
# time Kafka stores the message (ts_in_future); the SDK refuses one that far ahead of this
# machine's clock at once, so a bad client clock fails in the app, not downstream.
MAX_FUTURE_SKEW = timedelta(minutes=5)


def checked(message: Mapping[str, Any] | bytes) -> tuple[bytes, wire.Message]:
    """The message as wire bytes and decoded, or :class:`InvalidEvent` (a wire-v1 reason, or
    ``ts_in_future`` for a ts more than :data:`MAX_FUTURE_SKEW` ahead of this machine's clock)."""
    raw = message if isinstance(message, bytes) else msgspec.json.encode(message)
    decoded = wire.decode(raw)
    if isinstance(decoded, wire.Rejection):
        raise InvalidEvent(decoded.reason, decoded.detail)
    now = datetime.now(timezone.utc)
    if decoded.ts - now > MAX_FUTURE_SKEW:
        raise InvalidEvent("ts_in_future", f"ts {decoded.ts.isoformat()} is more than {MAX_FUTURE_SKEW} ahead of "
                                           f"this machine's clock ({now.isoformat(timespec='seconds')})")
    return raw, decoded


class _IdOnly(msgspec.Struct):
    id: str | None = None


_id_decoder = msgspec.json.Decoder(_IdOnly)


def _event_id(value: bytes | None) -> str | None:
    try:
        return _id_decoder.decode(value).id if value else None
    except msgspec.MsgspecError:
        return None


class UsageProducer:
    """Publishes usage events to ``finops.usage.v1``, keyed by tenant.

    ``settings`` defaults to the ``FINOPS_*`` environment; ``bootstrap`` overrides the
    cluster; ``kafka_config`` is passed to librdkafka (e.g. ``{"linger.ms": 5}``).
    ``on_delivery(event_id, error_or_None)`` is called from ``send``/``flush``/``poll``.
    One per process is enough (its counters are plain ints: read them after `flush()`).
    It publishes usage only: a tenant's commands go through :class:`CommandClient`, which
    returns once Kafka has them, so usage sent after a command is behind it.
    """

    def __init__(self, settings: Settings | None = None, *, bootstrap: str | None = None,
                 on_delivery: Callable[[str | None, str | None], None] | None = None,
                 kafka_config: Mapping[str, Any] | None = None) -> None:
        self.settings = resolve_settings(settings, bootstrap)
        self._producer = clients.producer(self.settings, **{"message.timeout.ms": 60_000, **(kafka_config or {})})
        self._on_delivery = on_delivery
        self.queued = 0  # handed to the producer
        self.sent = 0  # acknowledged by the broker
        self.failed = 0
        self.failures: list[DeliveryFailure] = []  # the first 1,000

    def send(self, event: Mapping[str, Any] | wire.Usage) -> str:
        """Check and queue one usage event; returns its id. Raises :class:`InvalidEvent`."""
        if isinstance(event, wire.Usage):
            raw, decoded = wire.encode(event), event
        else:
            raw, decoded = checked(complete(event, "usage"))
        if not isinstance(decoded, wire.Usage):
            raise InvalidEvent("invalid", f"{decoded.__struct_config__.tag!r} is a command: "
                                          "send it with CommandClient")
        self._produce(raw, decoded.tenant_id)
        return decoded.id

    def _delivered(self, error, msg) -> None:
        if error is None:
            self.sent += 1
        else:
            self.failed += 1
        if error is not None or self._on_delivery is not None:
            event_id = _event_id(msg.value())
            if error is not None and len(self.failures) < 1000:
                self.failures.append(DeliveryFailure(event_id, msg.topic(), error.str()))
            if self._on_delivery is not None:
                self._on_delivery(event_id, None if error is None else error.str())

    def _produce(self, raw: bytes, tenant_id: str) -> None:
        clients.produce(self._producer, topics.USAGE, raw, tenant_id.encode(), self._delivered)
        self.queued += 1

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports (``send`` does this too)."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every queued event is delivered or failed; returns how many are still queued."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush; raise :class:`FinopsError` if events are still undelivered at the timeout."""
        remaining = self.flush(timeout)
        if remaining:
            raise FinopsError(f"{remaining} usage events were not delivered to {self.settings.bootstrap} "
                              f"within {timeout:g} s")

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ----------------------------------------------------------------------------- OpenAI-style usage


_MICRO = Decimal("0.000001")


def round_credits(exact: Decimal) -> Decimal:
    """An exact amount of credits rounded half-even to the micro-credit (6 decimals): how the
    SDK prices a request before it becomes ``credits_consumed``."""
    return exact.quantize(_MICRO, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class ModelPrice:
    """Credits per 1,000 input (prompt) and output (completion) tokens."""

    input_per_1k: Decimal
    output_per_1k: Decimal


@dataclass(frozen=True)
class RateCard:
    """Prices per model; a versioned model name (``gpt-4o-2024-08-06``) matches the longest
    priced prefix (``gpt-4o``, not ``gpt-4``). Amounts are exact decimals.

        cards = RateCard.per_1k({"gpt-4o": ("0.0025", "0.01"), "gpt-4o-mini": ("0.00015", "0.0006")})
    """

    prices: dict[str, ModelPrice] = field(default_factory=dict)

    @classmethod
    def per_1k(cls, prices: Mapping[str, tuple[str | int | Decimal, str | int | Decimal]]) -> RateCard:
        """A rate card from ``{model: (input, output)}`` prices in credits per 1,000 tokens, each
        an exact decimal (a string is best: ``"0.0025"``)."""
        return cls({m: ModelPrice(Decimal(str(i)), Decimal(str(o))) for m, (i, o) in prices.items()})

    def price(self, model: str) -> ModelPrice:
        """The price of ``model`` (the longest priced prefix of a versioned name). Raises
        :class:`InvalidEvent` ``no_rate`` when none matches."""
        best = max((name for name in self.prices if model == name or model.startswith(name + "-")),
                   key=len, default=None)
        if best is None:
            raise InvalidEvent("no_rate", f"no price for model {model!r} in the rate card")
        return self.prices[best]

    def credits(self, model: str, input_tokens: int, output_tokens: int) -> Decimal:
        """Credits for one request, rounded half-even to 6 decimals (micro-credits)."""
        p = self.price(model)
        exact = (p.input_per_1k * input_tokens + p.output_per_1k * output_tokens) / 1000
        return round_credits(exact)


@dataclass
class Latency:
    """Filled by :func:`measure_latency`: ``ms`` when the block ends, ``error`` if it raised."""

    started: float = 0.0
    ms: int | None = None
    error: str | None = None

    def elapsed_ms(self) -> int:
        """Milliseconds (wall, monotonic clock) since the start: the final ``ms`` once the block
        ended, else the time so far."""
        return self.ms if self.ms is not None else round((time.perf_counter() - self.started) * 1000)


@contextmanager
def measure_latency() -> Iterator[Latency]:
    """Time a provider call for ``response_latency_ms``; an exception is noted and re-raised.

        with measure_latency() as latency:
            response = client.chat.completions.create(model="gpt-4o", messages=...)
        usage.send(usage_from_openai(response, tenant_id="acme", ..., latency=latency))
    """
    latency = Latency(started=time.perf_counter())
    try:
        yield latency
    except BaseException as exc:
        latency.error = type(exc).__name__
        raise
    finally:
        latency.ms = round((time.perf_counter() - latency.started) * 1000)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def usage_from_openai(response: Any, *, tenant_id: str, api_key_id: str, account_id: str | None = None,
                      rate_card: RateCard | None = None, operation_type: str = "chat",
                      usage_labels: Mapping[str, str] | None = None, latency: Latency | None = None,
                      model_name: str | None = None, id: str | None = None, ts: str | None = None) -> dict[str, Any]:
    """A usage event from an OpenAI-style response (an SDK object or its dict).

    Reads ``usage.prompt_tokens``/``completion_tokens`` (Chat Completions) or
    ``input_tokens``/``output_tokens`` (Responses API), ``model`` and ``id``. Units are the
    total tokens; credits come from ``rate_card`` (without one they are left to the
    tenant's ``set_rates`` rate card in the ledger). The request id defaults to the
    response's id, so a retried publish of the same response is taken once.
    """
    usage = _field(response, "usage")
    if usage is None:
        raise InvalidEvent("invalid", "the response has no usage block")
    input_tokens = _field(usage, "prompt_tokens")
    output_tokens = _field(usage, "completion_tokens")
    if input_tokens is None and output_tokens is None:
        input_tokens, output_tokens = _field(usage, "input_tokens"), _field(usage, "output_tokens")
    input_tokens, output_tokens = int(input_tokens or 0), int(output_tokens or 0)
    model = model_name or _field(response, "model")
    if not model:
        raise InvalidEvent("invalid", "the response names no model: pass model_name=")
    event: dict[str, Any] = {
        "type": "usage", "id": id or _field(response, "id") or uuid.uuid4().hex, "tenant_id": tenant_id,
        "ts": ts or now_iso(), "api_key_id": api_key_id, "model_name": model, "operation_type": operation_type,
        "units_consumed": input_tokens + output_tokens,
        "usage_labels": dict(usage_labels or {}),
    }
    if account_id is not None:
        event["account_id"] = account_id
    if rate_card is not None:
        event["credits_consumed"] = str(rate_card.credits(model, input_tokens, output_tokens))
    if latency is not None:
        event["response_latency_ms"] = latency.elapsed_ms()
        if latency.error:
            event["error_code"] = latency.error
    return event
