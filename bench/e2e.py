"""``e2e``: usage events per second from publish to ClickHouse rows, every stage committed.

A ``finops run ledger`` and a ``finops run sink`` child process (the sink owns a fresh
embedded ClickHouse in a temporary directory) run against a dedicated broker (or the one
``bench all`` shares); this process publishes a generated workload (50 tenants' commands,
then ``events`` usage events) into them.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from .common import load_avg, log, machine, now_iso
from .kafka import ProcessorRun, bench_broker, publish_in_background


def _wait(condition, timeout: float, what: str, runs: list[ProcessorRun]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for run in runs:
            if not run.alive():
                raise RuntimeError(f"`finops run {' '.join(run.parts)}` exited ({run.proc.returncode}) while "
                                   f"waiting for {what}: {run.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def e2e(events: int = 1_000_000, repeats: int = 1, tenants: int = 50, timeout: float = 1800.0) -> dict:
    """From the first publish until the ledger has committed every input and the sink has
    inserted every record of the topics it reads (usage, ledger, balances, alerts,
    commands: ``finops wait``), then checks that ClickHouse holds each usage event once.

    ``events_per_s`` is the usage events over that time (the commands, a few hundred, ride
    along). ``repeats`` is ignored.
    """
    import tempfile
    import uuid

    from finops import clients
    from finops.producers.workload import generate
    from finops.projections.query import open_reader
    from finops.schemas import topics
    from finops.waiting import group_active, wait_processed

    load_at_start = load_avg()
    with ExitStack() as cleanup:
        settings = bench_broker(cleanup)
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="finops-bench-")))
        clickhouse_url = f"chdb://{tmp / 'clickhouse'}"
        ch_settings = settings.model_copy(update={"clickhouse_url": clickhouse_url,
                                                  "clickhouse_database": "bench", "data_dir": tmp / "sink"})
        workload = generate(tenants=tenants, usage=events, suffix=f"-{uuid.uuid4().hex[:4]}")
        runs: list[ProcessorRun] = []
        cleanup.callback(lambda: [run.stop() for run in runs if run.alive()])
        runs.append(ProcessorRun(settings, ("ledger",), data_dir=tmp / "ledger", instance="e2e"))
        runs.append(ProcessorRun(ch_settings, ("sink",), data_dir=tmp / "sink",
                                 env={"FINOPS_CLICKHOUSE_URL": clickhouse_url, "FINOPS_CLICKHOUSE_DATABASE": "bench"}))
        ledger, sink = runs
        changelog = topics.changelog_name(f"{settings.group_prefix}-ledger")
        _wait(lambda: group_active(settings, f"{settings.group_prefix}-ledger") and group_active(
            settings, f"{settings.group_prefix}-sink"), 120, "the ledger and the sink to join their groups", runs)
        _wait(lambda: changelog in clients.admin(settings).list_topics(timeout=10).topics, 60,
              "the ledger to create its changelog topic", runs)

        log(f"  publishing {len(workload.lines):,} messages ({events:,} usage events) into a running ledger and sink")
        started = time.monotonic()
        _publisher, published = publish_in_background(settings, workload.lines)
        _wait(lambda: "at" in published, timeout, "the publisher", runs)
        if "error" in published:
            raise RuntimeError(f"publishing failed: {published['error']}")
        report = published["report"]
        if report.failed or report.sent != len(workload.lines):
            raise RuntimeError(f"publishing: {report.failed} failed, {report.errors[:1]}")
        waited = wait_processed(settings, timeout=max(timeout - (time.monotonic() - started), 10), sink=True)
        finished = time.monotonic()
        for run in runs:
            if not run.alive():
                raise RuntimeError(f"`finops run {' '.join(run.parts)}` exited ({run.proc.returncode}): {run.tail()}")

        _wait(lambda: all(run.metrics_at > finished for run in runs), 30, "a metrics line after the end", runs)
        reader = open_reader(ch_settings)  # the sink serves queries on its embedded ClickHouse
        try:
            tenant_list = {"tenants": workload.tenants}
            _, [(usage_rows, usage_ids)] = reader.query(
                "SELECT count(), uniqExact(id) FROM usage_events WHERE tenant_id IN {tenants:Array(String)}",
                tenant_list)
            _, [(entry_rows,)] = reader.query(
                "SELECT count() FROM ledger_entries WHERE tenant_id IN {tenants:Array(String)}", tenant_list)
        finally:
            reader.close()
        last = {part: dict(run.last.get(part, {})) for run in runs for part in run.parts}
        rss = {run.parts[0]: round(max(run.peak_rss_kb, run.max_rss_kb) / 1024) for run in runs}
        for run in runs:
            rc = run.stop()
            if rc != 0:
                raise RuntimeError(f"`finops run {' '.join(run.parts)}` exited {rc} when stopped: {run.tail()}")
    if usage_rows != events or usage_ids != events:
        raise RuntimeError(f"ClickHouse holds {usage_rows} usage rows ({usage_ids} ids) of {events} published")
    seconds = finished - started
    return {
        "benchmark": "e2e",
        "what": "usage events/s from the first publish until the ledger (a `finops run ledger` child) has committed "
                "every input and the sink (a `finops run sink` child, embedded ClickHouse) has inserted every record "
                "of its topics; then ClickHouse is checked to hold each usage event once",
        "broker": settings.bootstrap,
        "tenants": tenants,
        "usage_events": events,
        "commands": workload.command_count,
        "publish_s": round(published["at"] - started, 2),
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "waited": waited,
        "usage_rows": usage_rows,
        "ledger_entry_rows": entry_rows,
        "metrics_after_the_end": last,
        "peak_rss_mb": rss,
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": load_avg(),
        "machine": machine(),
        "at": now_iso(),
    }
