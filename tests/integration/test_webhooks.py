"""Webhooks: signed, retried through a receiver outage, dead-lettered, never lost."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from pydantic import SecretStr

from finops import clients
from finops.errors import FinopsError
from finops.pipeline import Pipeline
from finops.producers.publish import publish_lines
from finops.producers.webhooks import WebhookForwarder, sign, slack_text, verify
from finops.producers.workload import generate
from finops.schemas import topics
from support import PostReceiver, free_port, wait_until

SECRET = "s3cret-for-tests"


class TestSignature:
    def test_a_signed_body_verifies_and_a_changed_one_does_not(self):
        body, now = b'{"id":"a"}', 1_800_000_000
        signature = sign(SECRET, now, body)
        assert signature.startswith("sha256=")
        assert verify(SECRET, body, str(now), signature, now=now)
        assert not verify(SECRET, body + b" ", str(now), signature, now=now)
        assert not verify("other", body, str(now), signature, now=now)
        assert not verify(SECRET, body, str(now), signature, now=now + 301)  # too old: a replayed request
        assert not verify(SECRET, body, "yesterday", signature, now=now)

    def test_slack_text_says_who_what_and_how_much(self):
        text = slack_text({"severity": "critical", "status": "firing", "tenant_id": "acme", "account_id": "search",
                           "type": "threshold", "threshold": 90, "current_usage": "450", "monthly_allocation": "500",
                           "period": "2026-11"})
        assert text == ":rotating_light: [critical] acme/search: threshold 90 %; used 450 of 500 credits (2026-11)"


class Receiver(PostReceiver):
    """A real HTTP receiver that checks every signature; ``status`` is what it answers."""

    def __init__(self, port: int, status: int = 200) -> None:
        super().__init__(port)
        self.status = status
        self.received: list[tuple[str, dict]] = []
        self.bad_signatures = 0

    def answer(self, headers, body: bytes) -> int:
        if not verify(SECRET, body, headers["X-Finops-Timestamp"], headers["X-Finops-Signature"]):
            self.bad_signatures += 1
            return 401
        if self.status == 200:
            self.received.append((headers["Idempotency-Key"], json.loads(body)))
        return self.status


@pytest.fixture
def hook_settings(settings):
    return settings.model_copy(update={"webhook_secret": SecretStr(SECRET)})


def alerts_of(settings, tenant: str) -> dict[str, dict]:
    found = {}
    for m in clients.read_to_end(settings, topics.ALERTS, range(settings.topic_partitions)):
        alert = json.loads(m.value())
        if alert["tenant_id"] == tenant:
            found[alert["id"]] = alert
    return found


def alerting_tenant(settings) -> tuple[str, dict[str, dict]]:
    workload = generate(tenants=1, usage=1500, suffix=f"-{uuid.uuid4().hex[:6]}")
    publish_lines(settings, workload.lines)
    with Pipeline(settings, ("ledger",)) as pipeline:
        ends = clients.input_ends(settings)
        wait_until(lambda: pipeline.ledger.caught_up(ends), 120, "the ledger", pipeline)
    tenant = workload.tenants[0]
    expected = alerts_of(settings, tenant)
    assert expected, "the workload should raise threshold alerts"
    return tenant, expected


def run_forwarder(forwarder: WebhookForwarder) -> threading.Thread:
    thread = threading.Thread(target=forwarder.run, daemon=True)
    thread.start()
    return thread


@pytest.mark.integration
class TestDelivery:
    def test_a_receiver_down_for_30_s_gets_every_alert_afterwards_signed(self, hook_settings):
        tenant, expected = alerting_tenant(hook_settings)
        port = free_port()
        forwarder = WebhookForwarder(hook_settings, f"http://127.0.0.1:{port}/hook", tenant=tenant)
        thread = run_forwarder(forwarder)
        receiver = Receiver(port)
        try:
            wait_until(lambda: forwarder.progress.failed_attempts >= 3, 60, "the first refused attempts")
            time.sleep(30)  # the fault itself: the receiver stays down for 30 s
            receiver.start()
            wait_until(lambda: {k for k, _ in receiver.received} >= set(expected), 180, "every alert")
        finally:
            forwarder.stop()
            thread.join(60)
            receiver.stop()
        assert receiver.bad_signatures == 0
        by_key: dict[str, set] = {}
        for key, body in receiver.received:
            assert body["id"] == key and body["text"]  # repeats, if any, carry the same id
            by_key.setdefault(key, set()).add(json.dumps({k: v for k, v in body.items() if k != "text"}))
        assert set(by_key) == set(expected)
        assert all(len(bodies) == 1 for bodies in by_key.values())
        assert forwarder.progress.dead_lettered == 0

    def test_a_receiver_that_keeps_failing_sends_alerts_to_the_dead_letter_topic(self, hook_settings):
        tenant, expected = alerting_tenant(hook_settings)
        receiver = Receiver(free_port(), status=500).start()
        forwarder = WebhookForwarder(hook_settings, f"http://127.0.0.1:{receiver.port}/hook", tenant=tenant,
                                     min_severity="critical", max_attempts=2)
        critical = {i for i, a in expected.items() if a["severity"] == "critical"}
        thread = run_forwarder(forwarder)
        try:
            wait_until(lambda: forwarder.progress.dead_lettered >= len(critical), 120, "the dead letters")
        finally:
            forwarder.stop()
            thread.join(60)
            receiver.stop()
        dead = [json.loads(m.value()) for m in
                clients.read_to_end(hook_settings, topics.ALERTS_DEADLETTER, range(hook_settings.topic_partitions))]
        ours = {json.loads(d["alert"])["id"] for d in dead if json.loads(d["alert"])["tenant_id"] == tenant}
        assert ours == critical
        assert all(d["error"] == "HTTP 500" and d["attempts"] == 2 for d in dead
                   if json.loads(d["alert"])["tenant_id"] == tenant)


class TestConfiguration:
    def test_no_secret_is_one_clear_error(self, settings):
        with pytest.raises(FinopsError, match="FINOPS_WEBHOOK_SECRET"):
            WebhookForwarder(settings.model_copy(update={"webhook_secret": None}), "http://127.0.0.1:1/")

    def test_a_bad_url_is_one_clear_error(self, hook_settings):
        with pytest.raises(FinopsError, match="must start with http"):
            WebhookForwarder(hook_settings, "ftp://example.com/")
