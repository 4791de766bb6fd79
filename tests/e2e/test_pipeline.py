"""End to end through the real broker and real ClickHouse (chdb): publish, ledger, sink."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from finops import clients
from finops.demo import fold_differences
from finops.pipeline import Pipeline
from finops.producers.publish import publish_lines
from finops.producers.workload import generate
from support import check_thin_slice, wait_until
from finops.projections.balances import read_balances

pytestmark = pytest.mark.integration


class TestThinSlice:
    def test_published_usage_reaches_balances_and_clickhouse(self, settings):
        check_thin_slice(settings)

    def test_a_restarted_ledger_resumes_from_its_snapshots(self, settings):
        workload = generate(tenants=2, usage=1000, suffix=f"-{uuid.uuid4().hex[:6]}")
        half = len(workload.lines) // 2
        publish_lines(settings, workload.lines[:half])
        with Pipeline(settings, ("ledger",)) as pipeline:
            ends = clients.input_ends(settings)
            wait_until(lambda: pipeline.ledger.caught_up(ends), 60, "the first half", pipeline)
        publish_lines(settings, workload.lines[half:] + workload.lines[:10])  # with a resend of ten
        with Pipeline(settings, ("ledger",)) as pipeline:
            ends = clients.input_ends(settings)
            wait_until(lambda: pipeline.ledger.caught_up(ends), 60, "the second half", pipeline)
            assert pipeline.ledger.stats.rejected == 0
        latest = {}
        for tenant in workload.tenants:
            latest.update(read_balances(settings, tenant_id=tenant))
        assert fold_differences(latest, workload) == {}

    def test_unreadable_bytes_are_rejected_and_the_ledger_goes_on(self, settings):
        from finops import clients
        from finops.schemas import topics

        tenant = f"t-{uuid.uuid4().hex[:6]}"
        good = [
            f'{{"type":"purchase","id":"p1","tenant_id":"{tenant}","ts":"2026-11-01T00:00:00Z","credits":5}}',
            f'{{"type":"usage","id":"r1","tenant_id":"{tenant}","ts":"2026-11-01T00:00:01Z","account_id":"{tenant}",'
            f'"api_key_id":"k","model_name":"m","operation_type":"chat","units_consumed":1,"credits_consumed":2}}',
        ]
        publish_lines(settings, [line.encode() for line in good[:1]])
        producer = clients.producer(settings)
        marker = f"not json {uuid.uuid4().hex}".encode()
        producer.produce(topics.USAGE, marker, tenant.encode())
        producer.flush(10)
        publish_lines(settings, [good[1].encode()])
        with Pipeline(settings, ("ledger",)) as pipeline:
            ends = clients.input_ends(settings)
            wait_until(lambda: pipeline.ledger.caught_up(ends), 60, "the ledger", pipeline)
        rejected = []
        for m in clients.read_to_end(settings, topics.REJECTED, range(settings.topic_partitions)):
            record = json.loads(m.value())
            if record["input"] == marker.decode():
                rejected.append(record)
        assert [r["reason"] for r in rejected] == ["not_json"]
        balances = read_balances(settings, tenant_id=tenant)
        assert balances[(tenant, tenant)].available == "3"


class TestScheduler:
    def test_ticks_let_a_window_expire_with_no_traffic(self, settings):
        from finops.producers.scheduler import Scheduler

        tenant = f"t-{uuid.uuid4().hex[:6]}"
        lines = [
            f'{{"type":"purchase","id":"p","tenant_id":"{tenant}","ts":"2026-11-01T00:00:00Z","credits":10,'
            f'"expires_at":"2026-11-02T00:00:00Z"}}'.encode(),
        ]
        publish_lines(settings, lines)
        with Pipeline(settings, ("ledger",)) as pipeline:
            ends = clients.input_ends(settings)
            wait_until(lambda: pipeline.ledger.caught_up(ends), 60, "the purchase", pipeline)
            scheduler = Scheduler(settings, every=60, tenants=lambda: {t for t, _a in read_balances(settings)})
            assert scheduler.tick(now=datetime(2026, 11, 3, tzinfo=timezone.utc).timestamp()) >= 1
            ends = clients.input_ends(settings)
            wait_until(lambda: pipeline.ledger.caught_up(ends), 60, "the tick", pipeline)
        assert read_balances(settings, tenant_id=tenant)[(tenant, tenant)].available == "0"
