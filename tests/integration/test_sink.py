"""The ClickHouse sink through the real broker: once and only once, through replays, kills and refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from finops import clients
from finops.pipeline import Pipeline
from finops.processors.fold import fold_lines
from finops.producers.publish import publish_lines
from finops.producers.workload import generate
from finops.projections import clickhouse, sink as sink_mod
from finops.projections.query import RemoteReader, endpoint_file
from finops.projections.sink import Sink, SinkCheckpoint
from finops.schemas import topics
from support import wait_until

pytestmark = pytest.mark.integration

POSITIONED = {"ledger_entries": topics.LEDGER, "balance_snapshots": topics.BALANCES, "alerts": topics.ALERTS}


def processed_workload(settings, usage: int = 2000, tenants: int = 2):
    """A workload published and folded by the ledger processor (no sink yet)."""
    workload = generate(tenants=tenants, usage=usage, suffix=f"-{uuid.uuid4().hex[:6]}")
    publish_lines(settings, workload.lines)
    with Pipeline(settings, ("ledger",)) as pipeline:
        ends = clients.input_ends(settings)
        wait_until(lambda: pipeline.ledger.caught_up(ends), 120, "the ledger", pipeline)
    return workload


def kafka_count(settings, topic: str) -> int:
    return sum(1 for m in clients.read_to_end(settings, topic, range(settings.topic_partitions))
               if m.value() is not None)


def totals(query) -> dict:
    """Counts, distinct Kafka positions and sums of every table and view the sink fills."""
    sql = {
        "ledger_entries": "SELECT count(), uniqExact(kafka_partition, kafka_offset), sum(amount_micros) "
                          "FROM ledger_entries",
        "usage_events": "SELECT count(), uniqExact(kafka_partition, kafka_offset), sum(ifNull(credits_micros, 0)) "
                        "FROM usage_events",
        "balance_snapshots": "SELECT count(), uniqExact(kafka_partition, kafka_offset), sum(available_micros) "
                             "FROM balance_snapshots",
        "alerts": "SELECT count(), uniqExact(kafka_partition, kafka_offset), 0 FROM alerts",
        "allocations": "SELECT count(), uniqExact(kafka_partition, kafka_offset), sum(ifNull(credits_micros, 0)) "
                       "FROM allocations",
        "mv_forecast_inputs": "SELECT sum(requests), 0, sum(credits_micros) FROM mv_forecast_inputs",
        "mv_credits_by_team": "SELECT sum(requests), 0, sum(credits_micros) FROM mv_credits_by_team",
        "mv_model_costs": "SELECT sum(requests), 0, sum(credits_micros) FROM mv_model_costs",
        "mv_request_summary": "SELECT sum(requests), 0, sum(errors) FROM mv_request_summary",
    }
    return {name: tuple(int(v) for v in query(text)[1][0]) for name, text in sql.items()}


def assert_once_and_complete(settings, got: dict) -> None:
    """No Kafka message twice in any table, none missing, and the views agree with the ledger."""
    for table, (count, positions, _sum) in got.items():
        if not table.startswith("mv_"):
            assert count == positions, f"{table}: {count - positions} rows stored twice"
    for table, topic in POSITIONED.items():
        assert got[table][0] == kafka_count(settings, topic), f"{table} misses messages of {topic}"
    spend = got["mv_forecast_inputs"][2]
    assert got["mv_credits_by_team"][2] == got["mv_model_costs"][2] == spend


def ledger_rows_match_kafka(settings, query) -> bool:
    return int(query("SELECT count() FROM ledger_entries")[1][0][0]) >= kafka_count(settings, topics.LEDGER)


def drain(sink: Sink, settings, what: str) -> None:
    """Step ``sink`` until ClickHouse holds every ledger and balance message of the topics."""
    want = {t: kafka_count(settings, topic) for t, topic in POSITIONED.items() if t != "alerts"}

    def done() -> bool:
        sink.step()
        return all(int(sink.query(f"SELECT count() FROM {t}")[1][0][0]) >= n for t, n in want.items())

    wait_until(done, 180, what)


def drained_totals(settings) -> dict:
    """Run a sink until ClickHouse holds the topics, then close it; the totals it wrote."""
    sink = Sink(settings)
    try:
        drain(sink, settings, "the first sink")
        return totals(sink.query)
    finally:
        sink.close()


class TestExactlyOnce:
    def test_a_new_consumer_group_replays_nothing_twice(self, settings):
        processed_workload(settings)
        before = drained_totals(settings)
        assert_once_and_complete(settings, before)
        # a fresh group starts at offset 0 as far as Kafka knows; ClickHouse holds the position
        second = Sink(settings, group_id=f"{settings.group_prefix}-sink-again")
        try:
            wait_until(lambda: second.step() is not None and bool(second.consumer.assignment())
                       and not second.replay and second.progress.batches > 0,
                       120, "the second sink to replay its last logged checkpoints")
            assert totals(second.query) == before
        finally:
            second.close()

    def test_a_new_database_under_the_same_group_is_a_complete_rebuild(self, settings):
        """ClickHouse, not the group's committed offsets, is the position: an empty database
        gets every message again, even though the group has committed the topics' ends."""
        processed_workload(settings, usage=500, tenants=1)
        before = drained_totals(settings)
        rebuilt = settings.model_copy(update={"clickhouse_database": f"{settings.clickhouse_database}_rebuilt"})
        second = Sink(rebuilt)  # the same consumer group as the first
        try:
            drain(second, rebuilt, "the rebuild into a new database")
            after = totals(second.query)
        finally:
            second.close()
        assert_once_and_complete(settings, after)
        assert after == before

    def test_the_same_slice_inserted_twice_lands_once(self, settings):
        processed_workload(settings, usage=300, tenants=1)
        by_partition: dict[int, list] = {}
        for m in clients.read_to_end(settings, topics.LEDGER, range(settings.topic_partitions)):
            by_partition.setdefault(m.partition(), []).append(m)
        partition, messages = max(by_partition.items(), key=lambda kv: len(kv[1]))
        messages = messages[:400]
        rows = [sink_mod.ledger_line(m.value(), partition, m.offset()) for m in messages]
        piece = SinkCheckpoint(topics.LEDGER, partition, messages[0].offset(), messages[-1].offset(), rows)
        sink = Sink(settings)
        try:
            sink.write([piece])
            once = totals(sink.query)
            sink.write([piece])  # a retry after a lost acknowledgement, or a replay
            assert totals(sink.query) == once
            assert once["ledger_entries"][0] == len(rows)
        finally:
            sink.close()

    def test_a_sink_killed_mid_batch_resumes_with_no_gap_and_no_duplicate(self, settings, tmp_path):
        processed_workload(settings, usage=6000, tenants=3)
        env = {**os.environ, "FINOPS_DATA_DIR": str(tmp_path), "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap,
               "FINOPS_GROUP_PREFIX": settings.group_prefix, "FINOPS_CLICKHOUSE_DATABASE": "killed",
               "FINOPS_CLICKHOUSE_URL": ""}
        own = settings.model_copy(update={"data_dir": tmp_path, "clickhouse_url": None,
                                          "clickhouse_database": "killed"})
        cmd = [sys.executable, "-m", "finops.cli", "run", "sink", "--no-supervise"]

        def served_by(proc):
            """A reader on the sink process's own query endpoint (never this process opening its chdb)."""
            path = endpoint_file(own)
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return RemoteReader(info["url"], info["token"]) if info.get("pid") == proc.pid else None

        def ledger_rows() -> int:
            reader = served_by(proc)
            try:
                return -1 if reader is None else int(reader.query("SELECT count() FROM ledger_entries")[1][0][0])
            except clickhouse.ClickHouseError:
                return -1  # not serving yet
        log = tmp_path / "sink.log"

        def started() -> bool:
            assert proc.poll() is None, f"the sink exited: {log.read_text()[-2000:]}"
            return ledger_rows() > 0
        proc = subprocess.Popen(cmd, env=env, stderr=log.open("w"), text=True)
        try:
            wait_until(started, 120, "the sink's first rows")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        proc = subprocess.Popen(cmd, env=env, stderr=log.open("a"), text=True)
        try:
            wait_until(lambda: served_by(proc) is not None, 120, "the restarted sink to serve queries")
            reader = served_by(proc)
            wait_until(lambda: ledger_rows_match_kafka(settings, reader.query), 240, "the restarted sink")
            assert_once_and_complete(settings, totals(reader.query))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


class _Refusing:
    """A real ClickHouse client whose first ``refusals`` inserts fail, as when the server is down."""

    def __init__(self, client, refusals: int) -> None:
        self.client, self.refusals = client, refusals

    def raw_insert(self, *args, **kwargs):
        if self.refusals > 0:
            self.refusals -= 1
            raise ConnectionRefusedError("connection refused (fault injected by the test)")
        return self.client.raw_insert(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


class TestClickHouseDown:
    def test_the_sink_pauses_retries_and_catches_up(self, settings):
        processed_workload(settings)
        sink = Sink(settings, client=_Refusing(clickhouse.connect(settings), refusals=3))
        try:
            drain(sink, settings, "the sink to catch up after the refusals")
            assert sink.progress.refused == 3 and sink.progress.paused_s > 0
            assert_once_and_complete(settings, totals(sink.query))
        finally:
            sink.close()


class TestReportWhileRunning:
    def test_report_in_a_second_terminal_answers_while_the_pipeline_runs(self, settings, tmp_path):
        workload = generate(tenants=1, usage=1500, suffix=f"-{uuid.uuid4().hex[:6]}")
        tenant = workload.tenants[0]
        spent = Decimal(fold_lines(workload.lines).summary()["totals"]["consumed"])
        env = {**os.environ, "FINOPS_DATA_DIR": str(tmp_path), "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap,
               "FINOPS_GROUP_PREFIX": settings.group_prefix, "FINOPS_CLICKHOUSE_DATABASE": "live",
               "FINOPS_CLICKHOUSE_URL": ""}
        pipeline = subprocess.Popen([sys.executable, "-m", "finops.cli", "run", "ledger", "sink", "--no-supervise"],
                                    env=env, stderr=(tmp_path / "run.log").open("w"), text=True)
        try:
            publish_lines(settings, workload.lines)
            today = datetime.now(timezone.utc).date()  # the workload's usage spans the day from now
            since, until = (today - timedelta(days=1)).isoformat(), (today + timedelta(days=2)).isoformat()
            answers = []

            def answered() -> bool:
                got = subprocess.run([sys.executable, "-m", "finops.cli", "report", "burn-rate", "--tenant", tenant,
                                      "--from", since, "--to", until, "--format", "json"],
                                     capture_output=True, text=True, env=env, timeout=120)
                answers.append(got)
                if got.returncode != 0:
                    return False
                rows = [r for r in json.loads(got.stdout) if r["scope"] == "tenant"]
                return bool(rows) and Decimal(rows[0]["total"]) == spent

            own = settings.model_copy(update={"data_dir": tmp_path, "clickhouse_url": None})
            wait_until(lambda: endpoint_file(own).exists() or pipeline.poll() is not None, 120,
                       "the pipeline to serve queries")
            try:
                wait_until(answered, 240, f"burn-rate to show {spent} credits for {tenant}")
            except AssertionError as exc:
                last = answers[-1] if answers else None
                raise AssertionError(f"{exc}; last answer: {last and (last.stdout[-800:], last.stderr[-800:])}; "
                                     f"pipeline: {pipeline.poll()}") from exc
            assert pipeline.poll() is None  # the pipeline kept running and owns chdb all along
        finally:
            pipeline.send_signal(signal.SIGTERM)
            pipeline.wait(60)
