"""Webhooks: forward ``finops.alerts.v1`` to an HTTP endpoint, signed, retried, never lost.

Each alert is POSTed as JSON: the alert itself plus a Slack-compatible ``text``. Headers:

- ``Idempotency-Key``: the alert's ``id`` (stable across replays and retries: drop repeats);
- ``X-Finops-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Finops-Signature``: ``sha256=`` + hex HMAC-SHA256 of ``"<timestamp>.<body>"`` with the
  shared secret (``FINOPS_WEBHOOK_SECRET``); check it with :func:`verify`.

Delivery is at least once: the consumer offset is committed only after the receiver
answered 2xx, or after ``max_attempts`` failures, when the alert goes to the dead-letter
topic ``finops.alerts.deadletter.v1`` with the last error. Retries back off from 0.5 s
to 30 s; a receiver that is down for a while gets everything afterwards, in order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from urllib import error as urlerror
from urllib import request as urlrequest

from confluent_kafka import KafkaError, TopicPartition

from .. import clients
from ..errors import FinopsError
from ..schemas import topics
from ..schemas.wire import format_time
from ..service import Service
from ..settings import Settings

log = logging.getLogger("finops.webhooks")

SEVERITY_ICON = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
SEVERITIES = ("info", "warning", "critical")


def severity_rank(severity: str | None) -> int:
    """0 (info) .. 2 (critical); an unknown or missing severity ranks as info."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def alert_wanted(alert: dict, *, tenant: str | None = None, min_severity: str = "info") -> bool:
    """The alert filter of ``finops run webhooks`` and ``finops alerts tail``: whether ``alert`` (a
    decoded ``finops.alerts.v1`` record) is of ``tenant`` (None or empty: any tenant) and at least
    ``min_severity`` (info < warning < critical, :func:`severity_rank`; an alert with a missing or
    unknown severity ranks as info). Callers check ``min_severity`` is one of :data:`SEVERITIES`."""
    if tenant and alert.get("tenant_id") != tenant:
        return False
    return severity_rank(alert.get("severity")) >= severity_rank(min_severity)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Finops-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``"<timestamp>.<body>"`` with
    ``secret``; ``timestamp`` in Unix seconds (wall time)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, body: bytes, timestamp: str, signature: str, *, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """For receivers: is this body signed with ``secret``, within ``tolerance_s`` of now (replay guard)?"""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


def slack_text(alert: dict) -> str:
    """One line a person reads in Slack (or any chat that takes ``text``)."""
    icon = SEVERITY_ICON.get(alert.get("severity", ""), "")
    state = "resolved" if alert.get("status") == "resolved" else alert.get("severity", "")
    where = f"{alert.get('tenant_id')}/{alert.get('account_id')}"
    kind = alert.get("type", "alert").replace("_", " ")
    detail = f"{alert.get('threshold')} %" if kind == "threshold" else f"threshold {alert.get('threshold')}"
    return (f"{icon} [{state}] {where}: {kind} {detail}; used {alert.get('current_usage')} of "
            f"{alert.get('monthly_allocation')} credits ({alert.get('period') or 'one-time'})").strip()


def backoff_delay(attempt: int, initial_s: float = 0.5, max_s: float = 30.0) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, ...): doubling from ``initial_s`` up to ``max_s``."""
    return min(initial_s * 2 ** (attempt - 1), max_s)


def alert_body(alert: dict) -> bytes:
    """What a webhook receiver gets: the alert as published plus a Slack-compatible ``text``."""
    return json.dumps({**alert, "text": slack_text(alert)}, separators=(",", ":")).encode()


def post_json(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> str:
    """POST ``body`` as JSON once; '' when the receiver answered 2xx, else the error in a few words."""
    req = urlrequest.Request(url, data=body, method="POST",
                             headers={"Content-Type": "application/json", **headers})
    try:
        with urlrequest.urlopen(req, timeout=timeout_s) as resp:
            return "" if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except urlerror.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # refused, reset, timeout, DNS
        return str(getattr(exc, "reason", exc))


def post_signed(url: str, body: bytes, secret: str, idempotency_key: str, attempt: int, timeout_s: float) -> str:
    """One signed webhook POST (the headers of the module docstring); '' when it was taken, else the error."""
    ts = int(time.time())
    return post_json(url, body, {
        "User-Agent": "finops-webhooks/1", "Idempotency-Key": idempotency_key, "X-Finops-Timestamp": str(ts),
        "X-Finops-Signature": sign(secret, ts, body), "X-Finops-Attempt": str(attempt)}, timeout_s)


@dataclass
class Delivery:
    """Counters of ``finops run webhooks``: alerts delivered, dead-lettered, attempts that failed, and
    alerts skipped by the tenant and severity filter."""

    delivered: int = 0
    dead_lettered: int = 0
    failed_attempts: int = 0
    skipped: int = 0  # filtered out (tenant, severity)


class WebhookForwarder(Service):
    """Consumes alerts (read_committed) and POSTs them one by one, in order; see the module docstring."""

    def __init__(self, settings: Settings, url: str, *, tenant: str | None = None, min_severity: str = "info",
                 max_attempts: int = 10, timeout_s: float = 10.0, group_id: str | None = None) -> None:
        super().__init__()
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        if not secret:
            raise FinopsError("webhooks are signed: set FINOPS_WEBHOOK_SECRET (a shared secret for the receiver)")
        if not url.startswith(("http://", "https://")):
            raise FinopsError(f"webhook url {url!r} must start with http:// or https://")
        if min_severity not in SEVERITIES:
            raise FinopsError(f"unknown severity {min_severity!r}; choose {', '.join(SEVERITIES)}")
        self.settings, self.url, self.secret = settings, url, secret
        self.tenant, self.min_severity = tenant, min_severity
        self.max_attempts, self.timeout_s = max_attempts, timeout_s
        self.progress = Delivery()
        worst_wait = sum(backoff_delay(n) + timeout_s for n in range(1, max_attempts + 1))
        self.consumer = clients.consumer(
            settings, group_id or settings.group("webhooks"),
            # retries sleep without polling: stay in the group for the longest retry sequence
            **{"max.poll.interval.ms": int(max(300.0, worst_wait + 60) * 1000)})
        self.consumer.subscribe([topics.ALERTS])
        self.producer = clients.producer(settings)

    def close(self) -> None:
        """Close the consumer and flush the dead-letter producer (10 s at most)."""
        self.consumer.close()
        self.producer.flush(10)

    def step(self) -> int:
        """Read up to 500 alerts (waiting at most 0.2 s), forward each in order and commit the
        offsets of those delivered or dead-lettered; the number of records read."""
        messages = self.consumer.consume(500, 0.2)
        done: dict[tuple[str, int], int] = {}
        for m in messages:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", m.error())
                continue
            if not self.forward(m.value()):
                break  # stopping mid-retry: this alert and the rest stay uncommitted
            done[(m.topic(), m.partition())] = m.offset() + 1
        if done:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in done.items()],
                                 asynchronous=False)
        return len(messages)

    def wanted(self, alert: dict) -> bool:
        """Whether this forwarder delivers ``alert``: :func:`alert_wanted` with its tenant and severity."""
        return alert_wanted(alert, tenant=self.tenant, min_severity=self.min_severity)

    def forward(self, value: bytes) -> bool:
        """Deliver one alert, retrying with backoff; dead-letter it after ``max_attempts`` failures.

        False when asked to stop before either happened (the alert is not done).
        """
        try:
            alert = json.loads(value)
        except ValueError:
            self._dead_letter(value, "not JSON", 0)
            return True
        if not self.wanted(alert):
            self.progress.skipped += 1
            return True
        body = alert_body(alert)
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            last_error = self._post(body, alert.get("id", ""), attempt)
            if not last_error:
                self.progress.delivered += 1
                return True
            self.progress.failed_attempts += 1
            if attempt < self.max_attempts:
                delay = backoff_delay(attempt)
                log.warning("webhook %s failed (%s); attempt %d of %d in %.1f s", self.url, last_error,
                            attempt + 1, self.max_attempts, delay)
                if self._stop.wait(delay):
                    return False
        self._dead_letter(value, last_error, self.max_attempts)
        return True

    def _post(self, body: bytes, idempotency_key: str, attempt: int) -> str:
        """POST once; '' when the receiver took it, else the error in a few words."""
        return post_signed(self.url, body, self.secret, idempotency_key, attempt, self.timeout_s)

    def _dead_letter(self, value: bytes, error: str, attempts: int) -> None:
        record = json.dumps({"url": self.url, "attempts": attempts, "error": error,
                             "ts": format_time(time.time(), "seconds"),
                             "alert": value.decode("utf-8", errors="replace")}).encode()
        self.producer.produce(topics.ALERTS_DEADLETTER, record)
        if self.producer.flush(30):
            raise FinopsError("could not write to the dead-letter topic; the alert stays uncommitted")
        self.progress.dead_lettered += 1
        log.error("alert dead-lettered after %d attempts: %s", attempts, error)


class Receiver:
    """A webhook endpoint for trying things out (``finops alerts receive``): it checks each
    POST's signature (when it has a secret), drops repeats by ``Idempotency-Key`` and hands
    each new alert to ``on_alert``. Answers 204, or 401 for a bad signature, 400 for a body
    that is not a JSON object."""

    def __init__(self, host: str, port: int, secret: str | None, on_alert) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.secret = secret
        self.on_alert = on_alert
        self.seen: set[str] = set()
        self.received = 0  # new alerts answered and handed on (what ``serve(count=)`` counts)
        self.refused = 0
        self._lock = threading.Lock()  # requests are handled in threads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, alert = receiver.take(body, self.headers)
                self.send_response(status)
                self.end_headers()
                self.wfile.flush()
                if alert is not None:  # answered first: a sender never waits on our printing
                    receiver.on_alert(alert)
                    with receiver._lock:
                        receiver.received += 1

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = False  # closing waits for requests in flight to be answered
        self.server.timeout = 0.5

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the receiver listens on (the port is the real one when 0 was asked for)."""
        return self.server.server_address[:2]

    def take(self, body: bytes, headers) -> tuple[int, dict | None]:
        """The HTTP status for this POST, and the alert when it is a new one."""
        if self.secret and not verify(self.secret, body, headers.get("X-Finops-Timestamp"),
                                      headers.get("X-Finops-Signature")):
            log.warning("refused a webhook with a bad or missing signature")
            with self._lock:
                self.refused += 1
            return 401, None
        try:
            alert = json.loads(body)
        except ValueError:
            alert = None
        if not isinstance(alert, dict):
            with self._lock:
                self.refused += 1
            return 400, None
        key = headers.get("Idempotency-Key") or alert.get("id") or ""
        with self._lock:
            if key in self.seen:
                return 204, None
            self.seen.add(key)
        return 204, alert

    def serve(self, *, count: int | None = None, timeout: float | None = None) -> None:
        """Handle requests until ``count`` alerts arrived or ``timeout`` seconds passed (or forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while (count is None or self.received < count) and (deadline is None or time.monotonic() < deadline):
                self.server.handle_request()
        finally:
            self.server.server_close()
