"""The faust alert processor through the real broker: ledger -> finops.spend.v1 -> faust -> alerts."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from finops import clients
from finops.pipeline import Pipeline
from finops.producers.publish import publish_lines
from finops.schemas import topics
from support import wait_until

pytestmark = pytest.mark.integration

START = datetime(2026, 9, 1, tzinfo=timezone.utc)


def hours_of_usage(tenant: str, first_hour: int, hours: int, rng: random.Random, spike_at: set[int]) -> list[bytes]:
    """Six requests an hour of about 2 credits each on account 'a'; ten times that in the spike hours."""
    lines = []
    for h in range(first_hour, first_hour + hours):
        for n in range(6):
            ts = START + timedelta(hours=h, minutes=n * 9 + 1)
            credits = round(2 * (10 if h in spike_at else 1) * (1 + rng.gauss(0, 0.1)), 6)
            lines.append(msgspec.json.encode({
                "type": "usage", "id": f"r-{h}-{n}", "tenant_id": tenant, "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "account_id": "a", "api_key_id": "k", "model_name": "m", "operation_type": "chat",
                "units_consumed": 1, "credits_consumed": str(abs(credits))}))
    return lines


def setup(tenant: str) -> list[bytes]:
    ts = START.strftime("%Y-%m-%dT%H:%M:%SZ")
    return [msgspec.json.encode(m) for m in (
        {"type": "purchase", "id": "buy", "tenant_id": tenant, "ts": ts, "credits": 1_000_000},
        {"type": "open_account", "id": "open-a", "tenant_id": tenant, "ts": ts, "account_id": "a", "kind": "user",
         "parent_id": tenant},
        {"type": "allocate", "id": "alloc-a", "tenant_id": tenant, "ts": ts, "from_account": tenant, "to_account": "a",
         "credits": 100_000})]


def spike_alerts(settings, tenant: str) -> list[dict]:
    found = []
    for m in clients.read_to_end(settings, topics.ALERTS, range(settings.topic_partitions)):
        alert = json.loads(m.value())
        if alert["tenant_id"] == tenant and alert["type"] == "zscore_spike":
            found.append(alert)
    return found


def ledger_through(settings) -> None:
    with Pipeline(settings, ("ledger",)) as pipeline:
        ends = clients.input_ends(settings)
        wait_until(lambda: pipeline.ledger.caught_up(ends), 120, "the ledger", pipeline)


def start_alerts(settings, log_path):
    env = {**os.environ, "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap, "FINOPS_GROUP_PREFIX": settings.group_prefix}
    return subprocess.Popen([sys.executable, "-m", "finops.cli", "run", "alerts", "--no-supervise"], env=env,
                            stdout=log_path.open("a"), stderr=subprocess.STDOUT)


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class TestAlertProcessor:
    def test_one_spike_alert_per_spiking_hour_across_a_restart(self, settings, tmp_path):
        tenant = f"spiky-{uuid.uuid4().hex[:6]}"
        rng = random.Random(5)
        spikes = {40, 70}
        first = setup(tenant) + hours_of_usage(tenant, 0, 43, rng, spikes)  # the first spike closes at hour 41
        publish_lines(settings, first)
        ledger_through(settings)
        log = tmp_path / "alerts.log"
        proc = start_alerts(settings, log)
        try:
            wait_until(lambda: any(a.get("status", "firing") == "firing" for a in spike_alerts(settings, tenant)), 180,
                       "the first spike alert")
        finally:
            stop(proc)
        # more traffic while the alert processor is down, then it comes back with its tables
        publish_lines(settings, hours_of_usage(tenant, 43, 30, rng, spikes))
        ledger_through(settings)
        proc = start_alerts(settings, log)
        try:
            wait_until(lambda: sum(a.get("status", "firing") == "firing" for a in spike_alerts(settings, tenant)) >= 2,
                       180, "the second spike alert (it needs the history from before the restart)")
        finally:
            stop(proc)
        alerts = spike_alerts(settings, tenant)
        ids = [a["id"] for a in alerts]
        assert len(ids) == len(set(ids)), f"repeated alerts: {ids}"
        fired = sorted(a["period"] for a in alerts if a.get("status", "firing") == "firing")
        assert fired == [(START + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ") for h in sorted(spikes)], \
            log.read_text()[-3000:]

        # and a person (or a program) follows them with `finops alerts tail`
        env = {**os.environ, "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap, "FINOPS_GROUP_PREFIX": settings.group_prefix}
        tail = subprocess.run([sys.executable, "-m", "finops.cli", "alerts", "tail", "--tenant", tenant, "--severity",
                               "warning", "--from-beginning", "--json", "--count", "2", "--timeout", "60"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert tail.returncode == 0, tail.stderr
        shown = [json.loads(line) for line in tail.stdout.splitlines()]
        assert [(a["type"], a["period"]) for a in shown] == [("zscore_spike", p) for p in fired]
