"""Alert routing: ``finops.alerts.v1`` -> Slack, signed webhooks, email and PagerDuty, by route.

A routes file (YAML, see docs/notify.md) names **channels** and **routes**. Each alert is
matched against the routes in file order; the first route that matches decides, unless it
says ``continue: true``, in which case the following routes are tried too (Alertmanager's
semantics) and the alert goes to every channel of every route that matched, each once.

Delivery is at least once per channel, never lost: the consumer offset of an alert is
committed only when each of its channels took it (2xx, SMTP accepted) or dead-lettered it
(to ``finops.alerts.deadletter.v1``, after ``max_attempts`` failures). Every channel has
its own queue and worker thread, so a channel that is down holds up only itself: the
others keep delivering while it retries with backoff (0.5 s doubling to 30 s by default).
After a crash or restart the alerts from the first uncommitted one are read again, so a
channel may see an alert twice: with the same id (``Idempotency-Key``, email
``Message-ID``, PagerDuty ``dedup_key``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import yaml
from confluent_kafka import KafkaError, TopicPartition
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator,
                      model_validator)

from .. import clients
from ..errors import FinopsError
from ..schemas import topics
from ..schemas.wire import format_time
from ..service import Service
from ..settings import Settings
from .webhooks import SEVERITIES, alert_body, backoff_delay, post_json, post_signed, severity_rank, slack_text

log = logging.getLogger("finops.notify")

Severity = Literal["info", "warning", "critical"]
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
# What a subject template may name: the alert's fields plus ``text`` (the one-line summary).
TEMPLATE_FIELDS = ("id", "event", "tenant_id", "account_id", "type", "severity", "threshold", "current_usage",
                   "monthly_allocation", "ts", "status", "period", "text")


class RoutesError(FinopsError):
    """A routes file that cannot be used: one line naming the file, the line and the field."""


# ----------------------------------------------------------------------------- the routes file


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Retry(_Model):
    """How a channel retries (docs/notify.md): ``max_attempts`` before the alert is dead-lettered, backoff
    from ``backoff_initial_s`` doubling to ``backoff_max_s`` and ``timeout_s`` per attempt (wall seconds)."""

    max_attempts: int = Field(10, ge=1)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)


class _Channel(_Model):
    retry: Retry | None = None  # default: the file's top-level ``retry``


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


class SlackChannel(_Channel):
    """A Slack incoming webhook; its ``url`` is a secret and never printed."""

    type: Literal["slack"]
    url: SecretStr  # a Slack incoming-webhook URL is itself a secret

    @field_validator("url")
    @classmethod
    def check_url(cls, value: SecretStr) -> SecretStr:
        """Refuses a URL that is not http(s) (pydantic reports the ValueError with its field)."""
        _http_url(value.get_secret_value())
        return value


class WebhookChannel(_Channel):
    """A signed HTTP webhook (docs/webhooks.md), signed with ``secret`` or else FINOPS_WEBHOOK_SECRET."""

    type: Literal["webhook"]
    url: str
    secret: SecretStr | None = None  # default: FINOPS_WEBHOOK_SECRET

    @field_validator("url")
    @classmethod
    def check_url(cls, value: str) -> str:
        """Refuses a URL that is not http(s)."""
        return _http_url(value)


class EmailChannel(_Channel):
    """Email over SMTP to ``to`` (one address or a list); ``subject`` is a template over
    ``TEMPLATE_FIELDS``. ``starttls`` upgrades a plain connection, ``ssl`` is implicit TLS: not both."""

    type: Literal["email"]
    host: str
    port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    ssl: bool = False  # implicit TLS (port 465)
    username: str | None = None
    password: SecretStr | None = None
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    subject: str = "[finops {severity}] {tenant_id}/{account_id}: {type} {status}"

    @field_validator("to", mode="before")
    @classmethod
    def one_or_many(cls, value):
        """One address written as a string is a list of one."""
        return [value] if isinstance(value, str) else value

    @field_validator("subject")
    @classmethod
    def check_template(cls, value: str) -> str:
        """Refuses a subject that names a field outside ``TEMPLATE_FIELDS`` or is no format string."""
        try:
            value.format_map({f: "" for f in TEMPLATE_FIELDS})
        except KeyError as exc:
            raise ValueError(f"unknown field {{{exc.args[0]}}}; use {', '.join(TEMPLATE_FIELDS)}") from None
        except (ValueError, IndexError) as exc:
            raise ValueError(f"not a template: {exc}") from None
        return value

    @model_validator(mode="after")
    def check_tls(self) -> EmailChannel:
        """Refuses ``starttls`` with ``ssl``, and a password without a username."""
        if self.starttls and self.ssl:
            raise ValueError("choose starttls or ssl, not both")
        if self.password is not None and not self.username:
            raise ValueError("a password needs a username")
        return self


class PagerDutyChannel(_Channel):
    """PagerDuty Events API v2; firing alerts trigger and resolved ones resolve the incident of one
    ``dedup_key`` (:func:`incident_key`)."""

    type: Literal["pagerduty"]
    url: str = PAGERDUTY_URL
    routing_key: SecretStr

    @field_validator("url")
    @classmethod
    def check_url(cls, value: str) -> str:
        """Refuses a URL that is not http(s)."""
        return _http_url(value)


CHANNEL_TYPES = ("slack", "webhook", "email", "pagerduty")
Channel = Annotated[Union[SlackChannel, WebhookChannel, EmailChannel, PagerDutyChannel], Field(discriminator="type")]
OneOrMany = Union[str, list[str]]


class Match(_Model):
    """Every field given must match (and); a list matches any of its values (or)."""

    severity: Union[Severity, list[Severity], None] = None
    min_severity: Severity | None = None
    type: OneOrMany | None = None
    tenant: OneOrMany | None = None
    account: OneOrMany | None = None
    status: Union[Literal["firing", "resolved"], list[Literal["firing", "resolved"]], None] = None
    labels: dict[str, OneOrMany] = Field(default_factory=dict)

    def matches(self, alert: Mapping[str, Any]) -> bool:
        """Does ``alert`` (a decoded ``finops.alerts.v1`` record) meet every condition given?"""
        def one_of(wanted, value) -> bool:
            return wanted is None or value in ([wanted] if isinstance(wanted, str) else wanted)

        if self.min_severity and severity_rank(alert.get("severity")) < SEVERITIES.index(self.min_severity):
            return False
        labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
        return (one_of(self.severity, alert.get("severity")) and one_of(self.type, alert.get("type"))
                and one_of(self.tenant, alert.get("tenant_id")) and one_of(self.account, alert.get("account_id"))
                and one_of(self.status, alert.get("status"))
                and all(k in labels and one_of(v, labels[k]) for k, v in self.labels.items()))


class Route(_Model):
    """Alerts that ``match`` go to ``channels``; with ``continue`` the routes after it are tried too
    (Alertmanager's semantics)."""

    match: Match = Field(default_factory=Match)  # no match: every alert (a catch-all)
    channels: list[str] = Field(min_length=1)
    continue_: bool = Field(False, alias="continue")


class Routes(_Model):
    """A validated routes file (:func:`parse_routes`): ``channels`` by name, ``routes`` in file order, and
    the default ``retry``."""

    retry: Retry = Field(default_factory=Retry)
    channels: dict[str, Channel] = Field(min_length=1)
    routes: list[Route] = Field(min_length=1)
    _source: str = PrivateAttr("routes")  # the file it came from, for messages

    @property
    def source(self) -> str:
        """The file (or name) it was read from, for messages."""
        return self._source

    def channels_for(self, alert: Mapping[str, Any]) -> list[str]:
        """The channels this alert goes to: first matching route, and the next ones while ``continue``."""
        chosen: list[str] = []
        for route in self.routes:
            if route.match.matches(alert):
                chosen += [c for c in route.channels if c not in chosen]
                if not route.continue_:
                    break
        return chosen

    def retry_of(self, name: str) -> Retry:
        """The retry settings of channel ``name``: its own, else the file's top-level ``retry``."""
        return self.channels[name].retry or self.retry


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, path: tuple, environ: Mapping[str, str], missing: list[tuple]) -> Any:
    """``${NAME}`` in any string value becomes the environment variable NAME; ``$$`` is a ``$``."""
    if isinstance(value, dict):
        return {k: _expand(v, (*path, k), environ, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*path, i), environ, missing) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def one(m: re.Match) -> str:
        if m.group(1) not in environ:
            missing.append((path, m.group(1)))
            return ""
        return environ[m.group(1)]
    return "$".join(_ENV.sub(one, part) for part in value.split("$$"))


def _line_of(node: yaml.Node | None, path: tuple) -> int | None:
    """The 1-based line of ``path`` in the composed YAML (or of the deepest part of it that exists)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if found is None:
                break
            node = found[1]
            line = found[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _in_file(data: Any, loc: tuple, keep_last: bool) -> tuple:
    """The part of pydantic's error location that names keys of the file (not union members)."""
    path: tuple = ()
    for key in loc:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        elif isinstance(data, dict) and keep_last and isinstance(key, str) and "[" not in key \
                and key not in CHANNEL_TYPES:
            return (*path, key)
        else:
            continue  # a union member's name: skip it, the rest may still be keys
        path = (*path, key)
    return path


def _dotted(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "(top level)"


def parse_routes(text: str, source: str = "routes", environ: Mapping[str, str] | None = None) -> Routes:
    """Validate a routes file's text; :class:`RoutesError` (one line: source:line: field: problem) if bad."""
    environ = os.environ if environ is None else environ

    def fail(path: tuple, problem: str, root: yaml.Node | None) -> RoutesError:
        line = _line_of(root, path)
        return RoutesError(f"{source}{f':{line}' if line else ''}: {_dotted(path)}: {problem}")

    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RoutesError(f"{source}{where}: not YAML: {problem}") from None
    if not isinstance(data, dict):
        raise RoutesError(f"{source}: expected a mapping with `channels` and `routes`")
    missing: list[tuple] = []
    data = _expand(data, (), environ, missing)
    if missing:
        path, name = missing[0]
        raise fail(path, f"environment variable {name} is not set (named as ${{{name}}})", root)
    try:
        routes = Routes.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _in_file(data, tuple(first["loc"]), keep_last=first["type"] == "missing")
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = "required"
        elif first["type"] == "extra_forbidden":
            message = "unknown field"
        elif first["type"] == "union_tag_invalid":
            loc, message = (*loc, "type"), f"unknown channel type; choose {', '.join(CHANNEL_TYPES)}"
        elif first["type"] == "union_tag_not_found":
            loc, message = (*loc, "type"), f"required ({', '.join(CHANNEL_TYPES)})"
        raise fail(loc, message, root) from None
    for i, route in enumerate(routes.routes):
        for j, name in enumerate(route.channels):
            if name not in routes.channels:
                raise fail(("routes", i, "channels", j),
                           f"no channel named {name!r} (channels: {', '.join(routes.channels)})", root)
    routes._source = source
    return routes


def load_routes(path: str | Path, environ: Mapping[str, str] | None = None) -> Routes:
    """Read and validate a routes file; ``${NAME}`` in values comes from ``environ`` (default:
    the process's). Raises :class:`RoutesError` (one line: file, line, field, problem)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RoutesError(f"cannot read routes file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutesError(f"cannot read routes file {path}: {exc}") from None
    return parse_routes(text, str(path), environ)


def check_secrets(routes: Routes, settings: Settings) -> None:
    """A webhook channel with no ``secret`` signs with FINOPS_WEBHOOK_SECRET: one of them must be set."""
    for name, channel in routes.channels.items():
        if isinstance(channel, WebhookChannel) and not channel.secret and not settings.webhook_secret:
            raise RoutesError(f"{routes.source}: channels.{name}.secret: webhooks are signed: give a secret "
                              "(or ${ENV}) here, or set FINOPS_WEBHOOK_SECRET")


# ----------------------------------------------------------------------------- what each channel sends


def incident_key(alert: Mapping[str, Any]) -> str:
    """The same for an alert, its repeats and its resolve: PagerDuty's ``dedup_key``.

    Alert ids end with the status, and a threshold alert's id starts with the usage that
    crossed it, so the key is ``tenant/account/type/period``, with the threshold after the
    type for threshold alerts."""
    parts = [alert.get("tenant_id", ""), alert.get("account_id", ""), alert.get("type", "")]
    if alert.get("type") == "threshold":
        parts.append(str(alert.get("threshold", "")))
    return "/".join(map(str, [*parts, alert.get("period", "")]))


def slack_payload(alert: Mapping[str, Any]) -> dict:
    """A Slack incoming-webhook message: ``text`` (notifications, plain clients) and ``blocks``."""
    text = slack_text(dict(alert))
    context = (f"alert `{alert.get('id', '')}` · {alert.get('status', '')} · {alert.get('ts', '')}")
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}]}


def pagerduty_payload(alert: Mapping[str, Any], routing_key: str) -> dict:
    """An Events API v2 event: trigger for a firing alert, resolve for a resolved one."""
    event = {"routing_key": routing_key, "dedup_key": incident_key(alert), "client": "finops"}
    if alert.get("status") == "resolved":
        return {**event, "event_action": "resolve"}
    severity = alert.get("severity") if alert.get("severity") in SEVERITIES else "info"
    return {**event, "event_action": "trigger", "payload": {
        "summary": slack_text(dict(alert))[:1024], "source": f"finops/{alert.get('tenant_id')}",
        "severity": severity, "timestamp": alert.get("ts"), "component": alert.get("account_id"),
        "group": alert.get("tenant_id"), "class": alert.get("type"), "custom_details": dict(alert)}}


def email_message(alert: Mapping[str, Any], channel: EmailChannel) -> EmailMessage:
    """The email for ``alert`` on ``channel``: the subject from its template, the summary and the alert
    as JSON in the body, and a ``Message-ID`` derived from the alert id (the same on every repeat)."""
    fields = {f: alert.get(f, "") for f in TEMPLATE_FIELDS}
    fields["text"] = slack_text(dict(alert))
    msg = EmailMessage()
    msg["From"] = channel.from_
    msg["To"] = ", ".join(channel.to)
    msg["Subject"] = channel.subject.format_map(fields).replace("\n", " ")
    msg["Date"] = formatdate(usegmt=True)
    # The same on every repeat: mail clients and filters can drop duplicates.
    msg["Message-ID"] = f"<{hashlib.sha256(str(alert.get('id', '')).encode()).hexdigest()[:32]}@finops.alerts>"
    msg["X-Finops-Alert-Id"] = str(alert.get("id", ""))
    msg.set_content(f"{fields['text']}\n\n{json.dumps(dict(alert), indent=2, sort_keys=True)}\n")
    return msg


def send_email(msg: EmailMessage, channel: EmailChannel, timeout_s: float) -> str:
    """Hand one message to the SMTP server; '' when it accepted it for every recipient, else the error."""
    try:
        if channel.ssl:
            smtp = smtplib.SMTP_SSL(channel.host, channel.port, timeout=timeout_s,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(channel.host, channel.port, timeout=timeout_s)
        with smtp:
            if channel.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if channel.username:
                smtp.login(channel.username, channel.password.get_secret_value() if channel.password else "")
            refused = smtp.send_message(msg)
        return f"refused recipients: {', '.join(sorted(refused))}" if refused else ""
    except smtplib.SMTPResponseException as exc:
        return f"SMTP {exc.smtp_code}"
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        return f"SMTP: {exc}" if str(exc) else f"SMTP: {type(exc).__name__}"


def deliver(name: str, channel: Any, alert: Mapping[str, Any], attempt: int, settings_secret: str,
            timeout_s: float) -> str:
    """One attempt to hand ``alert`` to ``channel``; '' on success, else the error in a few words."""
    alert_id = str(alert.get("id", ""))
    if isinstance(channel, SlackChannel):
        body = json.dumps(slack_payload(alert), separators=(",", ":")).encode()
        return post_json(channel.url.get_secret_value(), body,
                         {"User-Agent": "finops-notify/1", "Idempotency-Key": alert_id}, timeout_s)
    if isinstance(channel, WebhookChannel):
        secret = channel.secret.get_secret_value() if channel.secret else settings_secret
        return post_signed(channel.url, alert_body(dict(alert)), secret, alert_id, attempt, timeout_s)
    if isinstance(channel, PagerDutyChannel):
        body = json.dumps(pagerduty_payload(alert, channel.routing_key.get_secret_value()),
                          separators=(",", ":")).encode()
        return post_json(channel.url, body, {"User-Agent": "finops-notify/1"}, timeout_s)
    if isinstance(channel, EmailChannel):
        return send_email(email_message(alert, channel), channel, timeout_s)
    raise FinopsError(f"channel {name}: unknown type")


# ----------------------------------------------------------------------------- the processor


@dataclass
class NotifyProgress:
    """Counters of ``finops run notify``: alerts consumed and matching no route, and per channel the
    alerts delivered, dead-lettered, and the failed attempts."""

    consumed: int = 0
    unrouted: int = 0  # matched no route
    delivered: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    failed_attempts: dict[str, int] = field(default_factory=dict)

    def add(self, counter: str, channel: str, n: int = 1) -> None:
        """Add ``n`` to ``counter`` (``delivered``, ``dead_lettered`` or ``failed_attempts``) of ``channel``."""
        counts = getattr(self, counter)
        counts[channel] = counts.get(channel, 0) + n


@dataclass
class _Job:
    topic: str
    partition: int
    epoch: int
    offset: int
    value: bytes
    alert: dict


class _Offsets:
    """Which alerts of each partition are still owed to a channel; the commit position is the
    first one still owed (or the next to read when none is). Thread-safe: workers mark jobs done."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch: dict[tuple[str, int], int] = {}
        self.owed: dict[tuple[str, int], dict[int, set[str]]] = {}
        self.next: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}

    def assign(self, tps: list[tuple[str, int]]) -> None:
        with self.lock:
            for tp in tps:  # a new epoch: completions of jobs read before (re)assignment are ignored
                self.epoch[tp] = self.epoch.get(tp, 0) + 1
                self.owed[tp] = {}
                self.next.pop(tp, None)
                self.committed.pop(tp, None)

    def revoke(self, tps: list[tuple[str, int]]) -> None:
        with self.lock:
            for tp in tps:
                self.epoch[tp] = self.epoch.get(tp, 0) + 1
                self.owed.pop(tp, None)
                self.next.pop(tp, None)
                self.committed.pop(tp, None)

    def add(self, topic: str, partition: int, offset: int, channels: list[str]) -> int | None:
        """Record a consumed alert; its epoch (None when the partition is no longer ours)."""
        tp = (topic, partition)
        with self.lock:
            if tp not in self.owed:
                return None
            if channels:
                self.owed[tp][offset] = set(channels)
            self.next[tp] = offset + 1
            return self.epoch[tp]

    def current(self, job: _Job) -> bool:
        """Is the job's partition still ours since it was read? (Else whoever owns it reads it again.)"""
        with self.lock:
            return self.epoch.get((job.topic, job.partition)) == job.epoch and (job.topic, job.partition) in self.owed

    def done(self, job: _Job, channel: str) -> None:
        tp = (job.topic, job.partition)
        with self.lock:
            if self.epoch.get(tp) != job.epoch:
                return
            left = self.owed[tp].get(job.offset)
            if left is not None:
                left.discard(channel)
                if not left:
                    del self.owed[tp][job.offset]

    def in_flight(self) -> int:
        with self.lock:
            return sum(len(o) for o in self.owed.values())

    def to_commit(self, tps: list[tuple[str, int]] | None = None) -> list[TopicPartition]:
        """Positions that moved since the last commit (offsets are consumed in order per partition)."""
        out = []
        with self.lock:
            for tp, nxt in self.next.items():
                if tps is not None and tp not in tps:
                    continue
                owed = self.owed.get(tp)
                position = min(owed) if owed else nxt
                if position > self.committed.get(tp, -1):
                    out.append(TopicPartition(tp[0], tp[1], position))
        return out

    def committed_to(self, positions: list[TopicPartition]) -> None:
        with self.lock:
            for p in positions:
                self.committed[(p.topic, p.partition)] = p.offset


class Notifier(Service):
    """Consumes alerts (read_committed), routes each to its channels' queues, commits what every
    channel has delivered or dead-lettered; see the module docstring."""

    def __init__(self, settings: Settings, routes: Routes | str | Path, *, group_id: str | None = None,
                 max_in_flight: int = 10_000) -> None:
        super().__init__()
        self.routes = routes if isinstance(routes, Routes) else load_routes(routes)
        self.settings = settings
        self.settings_secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        check_secrets(self.routes, settings)
        self.max_in_flight = max_in_flight
        self.progress = NotifyProgress()
        self.offsets = _Offsets()
        self.queues: dict[str, queue.Queue[_Job]] = {name: queue.Queue() for name in self.routes.channels}
        self._failure: BaseException | None = None
        self._paused = False
        self.consumer = clients.consumer(settings, group_id or settings.group("notify"))
        self.consumer.subscribe([topics.ALERTS], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.producer = clients.producer(settings)
        self._dead_letter_lock = threading.Lock()
        self.workers = [threading.Thread(target=self._work, args=(name,), name=f"finops-notify-{name}", daemon=True)
                        for name in self.routes.channels]
        for worker in self.workers:
            worker.start()

    # -- the consumer side (the service's thread) --

    def _on_assign(self, consumer, partitions) -> None:
        self.offsets.assign([(p.topic, p.partition) for p in partitions])
        if self._paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer, partitions) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self._commit(self.offsets.to_commit(tps))
        self.offsets.revoke(tps)

    def _on_lost(self, _consumer, partitions) -> None:
        self.offsets.revoke([(p.topic, p.partition) for p in partitions])

    def step(self) -> int:
        """Read up to 500 alerts (waiting at most 0.2 s), queue each to its channels, and commit the
        positions every channel is done with; the number of records read. Re-raises the error of a
        channel worker that stopped."""
        if self._failure is not None:
            raise self._failure
        self._pause_if_full()
        messages = self.consumer.consume(500, 0.2)
        for m in messages:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", m.error())
                continue
            self.progress.consumed += 1
            value = m.value() or b""
            try:
                alert = json.loads(value)
            except ValueError:
                alert = None
            if not isinstance(alert, dict):
                self._dead_letter(None, value, "not a JSON object", 0)
                self.offsets.add(m.topic(), m.partition(), m.offset(), [])
                continue
            channels = self.routes.channels_for(alert)
            if not channels:
                self.progress.unrouted += 1
            epoch = self.offsets.add(m.topic(), m.partition(), m.offset(), channels)
            if epoch is None:
                continue
            job = _Job(m.topic(), m.partition(), epoch, m.offset(), value, alert)
            for name in channels:
                self.queues[name].put(job)
        self._commit(self.offsets.to_commit())
        return len(messages)

    def _pause_if_full(self) -> None:
        in_flight = self.offsets.in_flight()
        if not self._paused and in_flight >= self.max_in_flight:
            self._paused = True
            self.consumer.pause(self.consumer.assignment())
            log.warning("%d alerts waiting for a channel: pausing the consumer", in_flight)
        elif self._paused and in_flight < self.max_in_flight // 2:
            self._paused = False
            self.consumer.resume(self.consumer.assignment())

    def _commit(self, positions: list[TopicPartition]) -> None:
        if not positions:
            return
        try:
            self.consumer.commit(offsets=positions, asynchronous=False)
        except Exception as exc:  # noqa: BLE001 - a rebalance in between: the next commit carries it
            log.warning("commit failed (%s); retried with the next one", exc)
            return
        self.offsets.committed_to(positions)

    def close(self) -> None:
        """Stop the channel workers (waiting up to 60 s each), commit what they finished, close the
        consumer and flush the dead-letter producer."""
        self._stop.set()
        for worker in self.workers:
            worker.join(60)
        try:
            self._commit(self.offsets.to_commit())
        finally:
            self.consumer.close()
            self.producer.flush(10)

    def metrics(self) -> dict:
        """The counters plus each channel's queue length, as plain dicts (``channel -> count``)."""
        p = self.progress
        return {"consumed": p.consumed, "unrouted": p.unrouted, "delivered": dict(p.delivered),
                "dead_lettered": dict(p.dead_lettered), "failed_attempts": dict(p.failed_attempts),
                "queued": {n: q.qsize() for n, q in self.queues.items()}}

    # -- one worker per channel --

    def _work(self, name: str) -> None:
        try:
            while not self._stop.is_set():
                try:
                    job = self.queues[name].get(timeout=0.2)
                except queue.Empty:
                    continue
                if not self.offsets.current(job):
                    continue  # read before a rebalance: it is read again from the committed offset
                if self._send(name, job):
                    self.offsets.done(job, name)
        except BaseException as exc:  # noqa: BLE001 - handed to the service's thread, which stops
            log.error("channel %s stopped: %s", name, exc)
            self._failure = exc

    def _send(self, name: str, job: _Job) -> bool:
        """Deliver with retries, or dead-letter; False when asked to stop first (the alert stays owed)."""
        channel, retry = self.routes.channels[name], self.routes.retry_of(name)
        error = ""
        for attempt in range(1, retry.max_attempts + 1):
            try:
                error = deliver(name, channel, job.alert, attempt, self.settings_secret, retry.timeout_s)
            except Exception as exc:  # noqa: BLE001 - an alert this channel cannot render: retried, then dead-lettered
                error = f"{type(exc).__name__}: {exc}"
            if not error:
                self.progress.add("delivered", name)
                return True
            self.progress.add("failed_attempts", name)
            if attempt < retry.max_attempts:
                delay = backoff_delay(attempt, retry.backoff_initial_s, retry.backoff_max_s)
                log.warning("channel %s: alert %s failed (%s); attempt %d of %d in %.1f s", name,
                            job.alert.get("id"), error, attempt + 1, retry.max_attempts, delay)
                if self._stop.wait(delay):
                    return False
        self._dead_letter(name, job.value, error, retry.max_attempts)
        return True

    def _dead_letter(self, name: str | None, value: bytes, error: str, attempts: int) -> None:
        channel = self.routes.channels.get(name) if name else None
        record = json.dumps({"channel": name, "type": getattr(channel, "type", None), "attempts": attempts,
                             "error": error, "ts": format_time(time.time(), "seconds"),
                             "alert": value.decode("utf-8", errors="replace")}).encode()
        with self._dead_letter_lock:
            self.producer.produce(topics.ALERTS_DEADLETTER, record)
            if self.producer.flush(30):
                raise FinopsError("could not write to the dead-letter topic; the alert stays uncommitted")
        self.progress.add("dead_lettered", name or "-")
        log.error("alert dead-lettered (channel %s) after %d attempts: %s", name, attempts, error)
