"""Alert routing (`finops run notify --routes FILE`): the routes file, matching, each channel's
payload, and delivery against the real broker to local HTTP receivers and a local SMTP server
(aiosmtpd): exactly the channels a route names, nothing lost through an outage and a restart,
repeats with the same id."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from email import message_from_bytes, policy

import msgspec
import pytest
from aiosmtpd.controller import Controller

from finops import clients
from finops.pipeline import Pipeline
from finops.producers.notify import (Notifier, RoutesError, email_message, incident_key, pagerduty_payload,
                                     parse_routes, slack_payload)
from finops.producers.webhooks import verify
from finops.schemas import outputs, topics
from support import PostReceiver, free_port, wait_until

SECRET = "hook-secret-for-tests"
PD_KEY = "pd-routing-key-for-tests"
ENV = {"TEST_HOOK_SECRET": SECRET, "TEST_PD_KEY": PD_KEY}

ROUTES = """\
retry: {{max_attempts: 10, backoff_initial_s: {initial}, backoff_max_s: {cap}, timeout_s: 5}}
channels:
  pager:
    type: pagerduty
    url: http://127.0.0.1:{pager}/v2/enqueue
    routing_key: ${{TEST_PD_KEY}}
  chat:
    type: slack
    url: http://127.0.0.1:{chat}/services/T000/B000/XXXX
  hook:
    type: webhook
    url: http://127.0.0.1:{hook}/finops
    secret: ${{TEST_HOOK_SECRET}}
  mail:
    type: email
    host: 127.0.0.1
    port: {mail}
    from: finops@example.com
    to: [oncall@example.com, billing@example.com]
    subject: "[{{severity}}] {{tenant_id}}/{{account_id}} {{type}} ({{id}})"
routes:
  - match: {{tenant: {tenant}, severity: critical}}
    channels: [pager, chat]
    continue: true
  - match: {{tenant: {tenant}, severity: [critical, warning]}}
    channels: [hook]
  - match: {{tenant: {tenant}, severity: info}}
    channels: [mail]
"""
# critical -> pager, chat, hook; warning -> hook; info -> mail
EXPECTED = {"critical": {"pager", "chat", "hook"}, "warning": {"hook"}, "info": {"mail"}}


def alert(tenant: str, account: str, severity: str, threshold: int, status: str = "firing", **extra) -> dict:
    alert_id = f"req-{uuid.uuid4().hex[:8]}/{account}/threshold/{threshold}/{status}"
    a = outputs.Alert(event=outputs.ALERT_EVENT, id=alert_id,
                      tenant_id=tenant, account_id=account, type="threshold", severity=severity, threshold=threshold,
                      current_usage="450", monthly_allocation="500", ts=datetime(2026, 11, 23, 10, 4, 11,
                                                                                  tzinfo=timezone.utc),
                      status=status, period="2026-11")
    return {**json.loads(msgspec.json.encode(a)), **extra}


# ----------------------------------------------------------------------------- the routes file and matching


def routes(text: str, env: dict | None = None):
    return parse_routes(text, "routes.yaml", ENV if env is None else env)


BASE = """\
channels:
  pager: {type: pagerduty, url: "http://127.0.0.1:1/", routing_key: k}
  chat: {type: slack, url: "http://127.0.0.1:1/s"}
  mail: {type: email, host: localhost, from: a@example.com, to: b@example.com}
routes:
"""


class TestMatching:
    def test_first_match_wins_unless_it_says_continue(self):
        r = routes(BASE + """\
  - match: {severity: critical}
    channels: [pager]
    continue: true
  - match: {tenant: acme}
    channels: [chat]
  - channels: [mail, chat]
""")
        assert r.channels_for({"severity": "critical", "tenant_id": "acme"}) == ["pager", "chat"]
        assert r.channels_for({"severity": "critical", "tenant_id": "other"}) == ["pager", "mail", "chat"]
        assert r.channels_for({"severity": "info", "tenant_id": "acme"}) == ["chat"]
        assert r.channels_for({"severity": "warning", "tenant_id": "other"}) == ["mail", "chat"]

    def test_every_field_must_match_and_a_list_is_any_of(self):
        r = routes(BASE + """\
  - match: {severity: [warning, critical], type: threshold, tenant: [a, b], account: search, status: firing,
            labels: {env: [prod, staging], team: ml}}
    channels: [pager]
""")
        hit = {"severity": "warning", "type": "threshold", "tenant_id": "b", "account_id": "search",
               "status": "firing", "labels": {"env": "staging", "team": "ml", "extra": "x"}}
        assert r.channels_for(hit) == ["pager"]
        for key, value in [("severity", "info"), ("type", "runway"), ("tenant_id", "c"), ("account_id", "x"),
                           ("status", "resolved"), ("labels", {"env": "dev", "team": "ml"}),
                           ("labels", {"env": "prod"}), ("labels", None)]:
            assert r.channels_for({**hit, key: value}) == [], key

    def test_min_severity_and_no_route_matched(self):
        r = routes(BASE + """\
  - match: {min_severity: warning, status: firing}
    channels: [chat]
""")
        assert r.channels_for({"severity": "critical", "status": "firing"}) == ["chat"]
        assert r.channels_for({"severity": "warning", "status": "firing"}) == ["chat"]
        assert r.channels_for({"severity": "info", "status": "firing"}) == []
        assert r.channels_for({"severity": "critical", "status": "resolved"}) == []

    def test_environment_variables_fill_secrets(self):
        r = routes(BASE.replace("routing_key: k", "routing_key: '${TEST_PD_KEY}'") + "  - channels: [pager]\n")
        assert r.channels["pager"].routing_key.get_secret_value() == PD_KEY
        assert "pd-routing" not in repr(r)  # secrets never show in logs or reprs
        r = routes(BASE.replace("routing_key: k", "routing_key: 'a$$b${TEST_PD_KEY}'") + "  - channels: [pager]\n")
        assert r.channels["pager"].routing_key.get_secret_value() == "a$b" + PD_KEY


class TestValidation:
    @pytest.mark.parametrize("edit, message", [
        (("  - channels: [pager]", "  - match: {severity: urgent}\n    channels: [pager]"),
         "routes.yaml:6: routes[0].match.severity: Input should be 'info', 'warning' or 'critical'"),
        (("  - channels: [pager]", "  - channels: [pagr]"),
         "routes.yaml:6: routes[0].channels[0]: no channel named 'pagr' (channels: pager, chat, mail)"),
        (("type: slack", "type: teams"),
         "routes.yaml:3: channels.chat.type: unknown channel type; choose slack, webhook, email, pagerduty"),
        ((", routing_key: k", ""), "routes.yaml:2: channels.pager.routing_key: required"),
        (("to: b@example.com", "to: b@example.com, prt: 25"), "routes.yaml:4: channels.mail.prt: unknown field"),
        (("url: \"http://127.0.0.1:1/s\"", "url: ftp://x"),
         "routes.yaml:3: channels.chat.url: must start with http:// or https://"),
        (("routing_key: k", "routing_key: '${NOT_SET_ANYWHERE}'"),
         "routes.yaml:2: channels.pager.routing_key: environment variable NOT_SET_ANYWHERE is not set"),
        (("to: b@example.com", "to: b@example.com, subject: '{sevrity}'"),
         "routes.yaml:4: channels.mail.subject: unknown field {sevrity}"),
        (("  - channels: [pager]", "  - channels: [pager]\n    continue: perhaps"),
         "routes.yaml:7: routes[0].continue: Input should be a valid boolean"),
        (("routes:", "routes: ["), "routes.yaml:6: not YAML"),
    ])
    def test_a_bad_file_is_one_line_naming_file_line_and_field(self, edit, message):
        text = (BASE + "  - channels: [pager]\n").replace(*edit)
        with pytest.raises(RoutesError) as caught:
            routes(text, env={})
        assert str(caught.value).startswith(message), str(caught.value)
        assert "\n" not in str(caught.value)

    def test_no_routes_or_no_channels(self):
        with pytest.raises(RoutesError, match=r"^routes.yaml:\d+: routes: List should have at least 1 item"):
            routes(BASE + "  []\n")
        with pytest.raises(RoutesError, match="expected a mapping"):
            routes("- just a list\n")

    def test_the_cli_exits_2_with_one_line(self, tmp_path):
        bad = tmp_path / "routes.yaml"
        bad.write_text((BASE + "  - channels: [pagr]\n"))
        out = subprocess.run([sys.executable, "-m", "finops.cli", "run", "notify", "--routes", str(bad),
                              "--no-supervise"], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "FINOPS_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [
            f"error: {bad}:6: routes[0].channels[0]: no channel named 'pagr' (channels: pager, chat, mail)"]
        out = subprocess.run([sys.executable, "-m", "finops.cli", "run", "notify", "--no-supervise"],
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 2 and "--routes" in out.stderr and len(out.stderr.strip().splitlines()) == 1


class TestPayloads:
    def test_pagerduty_trigger_and_resolve_share_the_dedup_key(self):
        firing = alert("acme", "search", "critical", 90)
        resolved = alert("acme", "search", "info", 90, status="resolved")
        trigger, resolve = pagerduty_payload(firing, "rk"), pagerduty_payload(resolved, "rk")
        assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
        assert trigger["dedup_key"] == resolve["dedup_key"] == "acme/search/threshold/90/2026-11"
        assert trigger["routing_key"] == "rk"
        assert trigger["payload"]["severity"] == "critical"
        assert trigger["payload"]["custom_details"]["id"] == firing["id"]
        severities = {pagerduty_payload(alert("a", "b", s, 50), "rk")["payload"]["severity"] for s in EXPECTED}
        assert severities == set(EXPECTED)
        assert incident_key(alert("a", "b", "critical", 70)) != incident_key(alert("a", "b", "critical", 90))

    def test_slack_has_text_blocks_and_the_id(self):
        a = alert("acme", "search", "warning", 70)
        body = slack_payload(a)
        assert body["text"].startswith(":warning: [warning] acme/search: threshold 70 %")
        assert body["blocks"][0]["text"]["text"] == body["text"]
        assert a["id"] in body["blocks"][1]["elements"][0]["text"]

    def test_email_subject_template_and_a_stable_message_id(self):
        r = routes(BASE.replace("to: b@example.com", "to: [b@example.com, c@example.com], subject: '{severity}: {id}'")
                   + "  - channels: [mail]\n")
        a = alert("acme", "search", "info", 50)
        first, again = email_message(a, r.channels["mail"]), email_message(a, r.channels["mail"])
        assert first["Subject"] == f"info: {a['id']}" and first["To"] == "b@example.com, c@example.com"
        assert first["Message-ID"] == again["Message-ID"] and first["X-Finops-Alert-Id"] == a["id"]
        other = email_message(alert("acme", "search", "info", 50), r.channels["mail"])
        assert first["Message-ID"] != other["Message-ID"]


# ----------------------------------------------------------------------------- against the broker


class HttpReceiver(PostReceiver):
    """One channel's endpoint: records every accepted POST; ``status`` is what it answers; not
    started (or stopped) it refuses connections."""

    def __init__(self, port: int | None = None, status: int = 200) -> None:
        super().__init__(port)
        self.status = status
        self.posts: list[tuple[dict, dict]] = []  # (headers, body) of answered-2xx POSTs
        self.refused = 0

    def answer(self, headers, body: bytes) -> int:
        if self.status < 300:
            self.posts.append((dict(headers), json.loads(body)))
        else:
            self.refused += 1
        return self.status


class SmtpReceiver:
    """aiosmtpd on a free port; ``reply`` other than 250 makes it refuse each message."""

    def __init__(self) -> None:
        self.messages: list = []
        self.rcpts: list[list[str]] = []
        self.reply = "250 OK"
        self.refused = 0
        receiver = self

        class Handler:
            async def handle_DATA(self, _server, _session, envelope):  # noqa: N802 - aiosmtpd's name
                if not receiver.reply.startswith("250"):
                    receiver.refused += 1
                    return receiver.reply
                receiver.messages.append(message_from_bytes(envelope.original_content, policy=policy.default))
                receiver.rcpts.append(list(envelope.rcpt_tos))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def publish(settings, alerts: list[dict]) -> None:
    producer = clients.producer(settings)
    for a in alerts:
        producer.produce(topics.ALERTS, json.dumps(a).encode(), key=f"{a['tenant_id']}/{a['account_id']}".encode())
    assert producer.flush(30) == 0


def received_ids(pager: HttpReceiver, chat: HttpReceiver, hook: HttpReceiver, mail: SmtpReceiver) -> dict[str, list]:
    """Every delivery so far, per channel, as the alert id it carries (repeats included)."""
    return {"pager": [b["payload"]["custom_details"]["id"] for _h, b in pager.posts],
            "chat": [b["blocks"][1]["elements"][0]["text"].split("`")[1] for _h, b in chat.posts],
            "hook": [h["Idempotency-Key"] for h, _b in hook.posts],
            "mail": [m["X-Finops-Alert-Id"] for m in mail.messages]}


def expected_ids(alerts: list[dict]) -> dict[str, set]:
    want: dict[str, set] = {c: set() for c in ("pager", "chat", "hook", "mail")}
    for a in alerts:
        for channel in EXPECTED[a["severity"]]:
            want[channel].add(a["id"])
    return want


@pytest.fixture
def receivers():
    pager, chat, hook = HttpReceiver(), HttpReceiver().start(), HttpReceiver().start()
    mail = SmtpReceiver().start()
    yield pager, chat, hook, mail
    for r in (pager, chat, hook, mail):
        r.stop()


def routes_for(tenant: str, pager, chat, hook, mail, initial: float = 0.05, cap: float = 3.0):
    text = ROUTES.format(initial=initial, cap=cap, pager=pager.port, chat=chat.port, hook=hook.port,
                         mail=mail.port, tenant=tenant)
    return parse_routes(text, "routes.yaml", ENV)


@pytest.mark.integration
class TestDelivery:
    def test_each_severity_reaches_exactly_the_channels_of_its_route(self, settings, receivers):
        pager, chat, hook, mail = receivers
        pager.start()
        tenant = f"notify-{uuid.uuid4().hex[:6]}"
        alerts = [alert(tenant, "search", s, t) for s, t in (("info", 50), ("warning", 70), ("critical", 90))]
        publish(settings, [alert(f"{tenant}-other", "search", "critical", 90), *alerts])  # another tenant: no route
        with Pipeline(settings, ("notify",), notify={"routes": routes_for(tenant, *receivers)}) as pipeline:
            notifier = pipeline.notify
            want = expected_ids(alerts)
            wait_until(lambda: {c: set(v) for c, v in received_ids(*receivers).items()} == want, 60,
                       "each channel's alerts", pipeline)
            # and nothing more arrives once every offset is committed
            wait_until(lambda: notifier.offsets.in_flight() == 0 and not notifier.offsets.to_commit(), 30,
                       "the commits", pipeline)
        got = received_ids(*receivers)
        assert {c: sorted(v) for c, v in got.items()} == {c: sorted(v) for c, v in want.items()}  # once each
        assert notifier.progress.dead_lettered == {}

        # what each channel got
        (_h, pd_body), = pager.posts
        assert pd_body["routing_key"] == PD_KEY and pd_body["event_action"] == "trigger"
        assert pd_body["dedup_key"] == f"{tenant}/search/threshold/90/2026-11"
        assert pd_body["payload"]["severity"] == "critical"
        (_h, slack), = chat.posts
        assert slack["text"].startswith(f":rotating_light: [critical] {tenant}/search") and slack["blocks"]
        for headers, body in hook.posts:
            raw = json.dumps(body, separators=(",", ":")).encode()
            assert verify(SECRET, raw, headers["X-Finops-Timestamp"], headers["X-Finops-Signature"])
            assert body["text"] and headers["Idempotency-Key"] == body["id"]
        (message,) = mail.messages
        assert message["Subject"] == f"[info] {tenant}/search threshold ({alerts[0]['id']})"
        assert mail.rcpts == [["oncall@example.com", "billing@example.com"]]
        assert "used 450 of 500 credits" in message.get_content()

    def test_channels_down_through_30_s_of_retries_and_a_restart_lose_nothing(self, settings, receivers):
        """The pager refuses connections and the mail server answers 451 while the other channels
        deliver; the notifier is restarted during the outage; then both come back.

        The outage is 30 s of the default retry schedule (0.5 s doubling to 30 s: 6 failed
        attempts in the first 30 s) run ten times faster: backoff 0.05 s doubling to 3 s, and the
        receivers stay down for 3 s and until they have failed at least 7 attempts in all."""
        pager, chat, hook, mail = receivers
        mail.reply = "451 4.3.0 try again later"
        tenant = f"notify-{uuid.uuid4().hex[:6]}"
        alerts = [alert(tenant, f"acct-{i}", s, t) for i in range(3)
                  for s, t in (("info", 50), ("warning", 70), ("critical", 90))]
        publish(settings, alerts)
        want = expected_ids(alerts)
        group = f"{settings.group_prefix}-notify-outage"
        table = routes_for(tenant, *receivers)

        down_since = time.monotonic()
        first = Notifier(settings, table, group_id=group)
        thread = threading.Thread(target=first.run, daemon=True)
        thread.start()
        try:
            # the channels that are up deliver everything meanwhile: a channel down blocks only itself
            wait_until(lambda: set(received_ids(*receivers)["chat"]) == want["chat"]
                       and set(received_ids(*receivers)["hook"]) == want["hook"], 60, "chat and hook")
            wait_until(lambda: first.progress.failed_attempts.get("pager", 0) >= 4
                       and first.progress.failed_attempts.get("mail", 0) >= 4, 60, "the first failed attempts")
        finally:
            first.stop()  # a restart in the middle of the outage
            thread.join(60)
        assert not thread.is_alive()
        failed_before = dict(first.progress.failed_attempts)
        assert pager.posts == [] and mail.messages == []

        second = Notifier(settings, table, group_id=group)
        thread = threading.Thread(target=second.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: time.monotonic() - down_since >= 3.0  # the fault itself: 30 s at 10x speed
                       and failed_before["pager"] + second.progress.failed_attempts.get("pager", 0) >= 7
                       and failed_before["mail"] + second.progress.failed_attempts.get("mail", 0) >= 7, 60,
                       "30 s of the retry schedule")
            pager.start()
            mail.reply = "250 OK"
            wait_until(lambda: {c: set(v) for c, v in received_ids(*receivers).items()} == want, 60,
                       "every alert on every channel")
            wait_until(lambda: second.offsets.in_flight() == 0 and not second.offsets.to_commit(), 30, "the commits")
        finally:
            second.stop()
            thread.join(60)
        assert first.progress.dead_lettered == {} and second.progress.dead_lettered == {}
        got = received_ids(*receivers)
        assert {c: set(v) for c, v in got.items()} == want  # nothing lost, nothing extra
        # the restarted notifier read again from the first alert the pager or mail still owed: the
        # hook (up all along) got repeats, each with the id of an alert it had (and a valid signature)
        assert len(got["hook"]) > len(want["hook"])
        # a repeat carries the same id, and the same dedup key / Message-ID
        by_id: dict[str, set] = {}
        for _h, body in pager.posts:
            by_id.setdefault(body["payload"]["custom_details"]["id"], set()).add(body["dedup_key"])
        assert all(len(keys) == 1 for keys in by_id.values())
        assert len({m["Message-ID"] for m in mail.messages}) == len(want["mail"])
        assert all(verify(SECRET, json.dumps(b, separators=(",", ":")).encode(), h["X-Finops-Timestamp"],
                          h["X-Finops-Signature"]) for h, b in hook.posts)
        assert mail.refused >= 7  # the 451s were real refusals (the pager refused connections)

    def test_a_channel_that_keeps_failing_dead_letters_and_the_others_deliver(self, settings, receivers):
        pager, chat, hook, mail = receivers
        pager.status = 500
        pager.start()
        tenant = f"notify-{uuid.uuid4().hex[:6]}"
        alerts = [alert(tenant, f"acct-{i}", s, t) for i in range(2) for s, t in (("warning", 70), ("critical", 90))]
        publish(settings, alerts)
        want = expected_ids(alerts)
        text = ROUTES.format(initial=0.05, cap=3.0, pager=pager.port, chat=chat.port, hook=hook.port, mail=mail.port,
                             tenant=tenant).replace("    routing_key: ${TEST_PD_KEY}\n",
                                                    "    routing_key: ${TEST_PD_KEY}\n    retry: {max_attempts: 2}\n")
        table = parse_routes(text, "routes.yaml", ENV)
        with Pipeline(settings, ("notify",), notify={"routes": table}) as pipeline:
            notifier = pipeline.notify
            wait_until(lambda: notifier.progress.dead_lettered.get("pager", 0) == len(want["pager"]), 60,
                       "the pager's dead letters", pipeline)
            wait_until(lambda: set(received_ids(*receivers)["chat"]) == want["chat"]
                       and set(received_ids(*receivers)["hook"]) == want["hook"], 60, "chat and hook", pipeline)
            wait_until(lambda: notifier.offsets.in_flight() == 0 and not notifier.offsets.to_commit(), 30,
                       "the commits", pipeline)
        assert pager.refused == 2 * len(want["pager"])  # its own max_attempts, not the file's 10
        dead = [json.loads(m.value()) for m in
                clients.read_to_end(settings, topics.ALERTS_DEADLETTER, range(settings.topic_partitions))]
        ours = [d for d in dead if d.get("channel") and json.loads(d["alert"])["tenant_id"] == tenant]
        assert {json.loads(d["alert"])["id"] for d in ours} == want["pager"]
        assert all(d["channel"] == "pager" and d["type"] == "pagerduty" and d["error"] == "HTTP 500"
                   and d["attempts"] == 2 for d in ours)
