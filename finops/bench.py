"""Benchmarks, each writing one JSON document. Speed lives here, never in timed tests.

``fold``: usage events per second through the pure ledger with a 4-level cascade
(user -> team -> org -> tenant: only the tenant pool has credits, so every usage climbs
all four levels), decode from bytes included. In the same run it measures decode alone
and the ledger alone on decoded messages, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import msgspec

from .processors.fold import FoldResult
from .processors.ledger import Book
from .schemas import wire


def cascade_workload(events: int) -> list[bytes]:
    """One tenant, a 4-level tree with credits only at the root, then ``events`` usage lines."""
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    encode = msgspec.json.encode
    lines = [encode({"type": "purchase", "id": "buy", "tenant_id": "bench", "ts": t0.isoformat(),
                     "credits": 10**9})]
    for n, (account, parent) in enumerate((("org", "bench"), ("team", "org"), ("user", "team"))):
        lines.append(encode({"type": "open_account", "id": f"open-{n}", "tenant_id": "bench", "ts": t0.isoformat(),
                             "account_id": account, "kind": account, "parent_id": parent}))
    for n in range(events):
        ts = (t0 + timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines.append(encode({
            "type": "usage", "id": f"req-{n}", "tenant_id": "bench", "ts": ts, "account_id": "user",
            "api_key_id": "key-1", "model_name": "gpt-4o", "operation_type": "chat", "units_consumed": 1200,
            "credits_consumed": "0.0125", "usage_labels": {"team": "search", "env": "prod"}}))
    return lines


def _rate(run: Callable[[], None], count: int, repeats: int) -> dict:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - started))
    return {"events_per_s": round(statistics.median(rates)), "runs": [round(r) for r in rates]}


def fold(events: int = 200_000, repeats: int = 3) -> dict:
    lines = cascade_workload(events)

    def full() -> None:
        result = FoldResult()
        for line in lines:
            result.feed(line)

    decoded = [(wire.decode(line), line) for line in lines]

    def ledger_only() -> None:
        book = Book()
        for message, raw in decoded:
            book.handle(message, raw)

    def decode_only() -> None:
        for line in lines:
            wire.decode(line)

    check = FoldResult()
    for line in lines:
        check.feed(line)
    user = check.book.tenants["bench"].accounts["user"]
    assert user.consumed == events * 12_500 and not check.rejected, "the benchmark folded wrongly"

    result = {
        "benchmark": "fold",
        "what": "usage events/s through the pure ledger, 4-level cascade, decode from bytes included",
        "events": events,
        "fold": _rate(full, len(lines), repeats),
        "ledger_only": _rate(ledger_only, len(lines), repeats),
        "decode_only": _rate(decode_only, len(lines), repeats),
        "target_events_per_s": 300_000,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result["fold_vs_decode_ratio"] = round(result["fold"]["events_per_s"] / result["decode_only"]["events_per_s"], 3)
    return result


def _consume_rate(settings, group: str, expected: int, timeout: float = 300.0) -> float:
    """Raw confluent-kafka floor: read_committed consume + decode of both input topics."""
    from . import clients
    from .schemas import topics

    consumer = clients.consumer(settings, group, **{"fetch.max.bytes": 52_428_800})
    consumer.subscribe(list(topics.INPUTS))
    decode = wire.decode
    seen = 0
    started = None
    deadline = time.monotonic() + timeout
    try:
        while seen < expected and time.monotonic() < deadline:
            batch = consumer.consume(50_000, 0.5)
            if batch and started is None:
                started = time.perf_counter()
            for m in batch:
                if m.error() is None:
                    decode(m.value())
                    seen += 1
        if seen < expected:
            raise RuntimeError(f"raw consumer saw {seen} of {expected} messages")
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


def _bench_broker(cleanup):
    """A dedicated local broker with fresh topics (stopped by ``cleanup``), unless
    FINOPS_KAFKA_BOOTSTRAP names a cluster; settings with a fresh group prefix."""
    import tempfile
    import uuid

    from . import stack
    from .settings import load

    base = load()
    if base.external_kafka:
        settings = base
    else:
        data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="finops-bench-")))
        settings = base.model_copy(update={"data_dir": data_dir, "kafka_port": stack.free_port_pair()})
        stack.up(settings, log=lambda _m: None)
        cleanup.callback(stack.down, settings, log=lambda _m: None)
    return settings.model_copy(update={"group_prefix": f"bench-{uuid.uuid4().hex[:8]}"})


def ledger(events: int = 200_000, repeats: int = 1, tenants: int = 50) -> dict:
    """The exactly-once ledger processor against a raw consumer, on the same broker and topics.

    Starts a dedicated local broker (fresh topics) unless FINOPS_KAFKA_BOOTSTRAP is set,
    publishes ``tenants`` tenants' commands and ``events`` usage events, then measures:
    raw confluent-kafka consume+decode of the input topics, and the ledger processor from
    its first applied batch until every input offset is committed with its outputs.
    """
    import uuid
    from contextlib import ExitStack

    from . import clients
    from .processors.runner import LedgerProcessor
    from .producers.publish import publish_lines
    from .producers.workload import generate

    with ExitStack() as cleanup:
        settings = _bench_broker(cleanup)
        workload = generate(tenants=tenants, usage=events, suffix=f"-{uuid.uuid4().hex[:4]}")
        report = publish_lines(settings, workload.lines, validate=False)
        total = sum(end for end in clients.input_ends(settings).values())
        raw_rate = _consume_rate(settings, f"{settings.group_prefix}-raw", total)

        processor = LedgerProcessor(settings)
        ends = clients.input_ends(settings)
        first = None
        started = time.perf_counter()
        try:
            while not processor.caught_up(ends):
                if processor.step() and first is None:
                    first = time.perf_counter()
                if time.perf_counter() - started > 600:
                    raise RuntimeError("the ledger processor did not catch up in 10 minutes")
            finished = time.perf_counter()
        finally:
            processor.close()
        stats = processor.stats
        ledger_rate = stats.applied / (finished - (first or started))
        return {
            "benchmark": "ledger",
            "what": "exactly-once ledger processor (input topics to committed outputs) vs raw "
                    "confluent-kafka consume+decode of the same topics on the same broker",
            "broker": settings.bootstrap,
            "tenants": tenants,
            "input_messages": total,
            "published": report.sent,
            "ledger_events_per_s": round(ledger_rate),
            "raw_consume_decode_events_per_s": round(raw_rate),
            "ratio": round(ledger_rate / raw_rate, 3),
            "transactions": stats.transactions,
            "mean_batch": round(stats.applied / max(stats.transactions, 1)),
            "rejected": stats.rejected,
            "seconds_by_phase": {"consume_wait": round(stats.consume_s, 2), "decode_merge": round(stats.decode_s, 2),
                                 "apply_produce": round(stats.apply_s, 2), "commit": round(stats.commit_s, 2)},
            "target_events_per_s": 100_000,
            "target_ratio": 0.25,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def sdk(events: int = 200_000, repeats: int = 3, tenants: int = 50) -> dict:
    """The SDK's ``UsageProducer.send`` (fill id and ts, check against wire v1, produce) vs raw
    confluent-kafka ``produce`` of the same events already encoded, on the same broker and
    producer settings, each until every event is acknowledged."""
    from contextlib import ExitStack

    import msgspec

    from . import clients
    from .producers.usage import UsageProducer
    from .schemas import topics

    with ExitStack() as cleanup:
        settings = _bench_broker(cleanup)
        batch = [{"tenant_id": f"tenant-{i % tenants}", "account_id": f"user-{i % 997}", "api_key_id": "key-1",
                  "model_name": "gpt-4o", "operation_type": "chat", "units_consumed": 1200,
                  "credits_consumed": "0.0125", "usage_labels": {"team": "search", "env": "prod"},
                  "response_latency_ms": 850} for i in range(events)]
        encoded = [(msgspec.json.encode({"type": "usage", "id": f"raw-{i}", "ts": "2026-11-23T10:00:00Z", **e}),
                    e["tenant_id"].encode()) for i, e in enumerate(batch)]

        def raw() -> None:
            producer = clients.producer(settings, **{"message.timeout.ms": 60_000})
            for value, key in encoded:
                clients.produce(producer, topics.USAGE, value, key)
            if producer.flush(120):
                raise RuntimeError("raw producer: events not delivered in 120 s")

        def with_sdk() -> None:
            with UsageProducer(settings) as usage:
                for event in batch:
                    usage.send(event)
            if usage.sent != events:
                raise RuntimeError(f"UsageProducer delivered {usage.sent} of {events}")

        raw_rate, sdk_rate = _rate(raw, events, repeats), _rate(with_sdk, events, repeats)
        return {
            "benchmark": "sdk",
            "what": "UsageProducer.send (complete, check, produce, delivered) vs raw confluent-kafka produce of "
                    "pre-encoded events (delivered), same broker and producer settings",
            "broker": settings.bootstrap,
            "events": events,
            "sdk": sdk_rate,
            "raw_produce": raw_rate,
            "ratio": round(sdk_rate["events_per_s"] / raw_rate["events_per_s"], 3),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


# ----------------------------------------------------------------------------- reports and sink


def _machine(client=None) -> dict:
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}  # other work on the machine skews the runs
    if client is not None:
        machine["clickhouse"] = client.query("SELECT version()").result_rows[0][0]
    return machine


def _ms(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds) * 1000, 1), "runs": [round(s * 1000, 1) for s in seconds]}


def _timed(run: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def _bench_client(tmp: str):
    """A fresh embedded ClickHouse (chdb) in ``tmp`` with every migration applied."""
    from .projections import clickhouse
    from .settings import Settings

    return clickhouse.connect(Settings(clickhouse_url=f"chdb://{tmp}/clickhouse", clickhouse_database="bench"))


# The reports workload: every usage is one `consume` entry (its #0) charged to a user
# account and funded by the user (80 %), its team (15 %) or the org (5 %). Tenants are
# skewed (a few big ones), models weighted, a user mostly calls through one of its
# tenant's 4 API keys (a key is a project and an env), weekends spend less, spend grows
# over the 90 days, and about 1 user-day in 150 spends 8x (for the anomaly report).
REPORT_TENANTS = 50
REPORT_DAYS = 90
_MODELS = ("gpt-4o-mini", "gpt-4o", "claude-sonnet", "claude-haiku", "text-embedding-3-small", "o1")
_MODEL_PRICE = (0.6, 5.0, 3.0, 0.8, 0.02, 15.0)  # micro-credits per unit
_TEAMS = ("search", "support", "platform", "research")
_PROJECTS = ("web", "api", "batch", "eval")
_ENVS = ("prod", "prod", "staging", "dev")

_USAGE_DIMS = """
SELECT n, h, h2, tenant, user, team_account, team, cost_center, key_n, model, op, units, ts, day, funder,
       toInt64(units * [$PRICES][model_n + 1] * if(toDayOfWeek(day) >= 6, 0.6, 1.0)
               * (1 + (day - toDate('$FIRST')) / 180.0)
               * if(cityHash64(tenant, user, day) % 150 = 0, 8, 1)) + 1 AS amount
FROM (
    SELECT number AS n, cityHash64(number) AS h, cityHash64(number, 7) AS h2,
           concat('tenant-', leftPad(toString(toUInt32(floor($TENANTS * pow(bitAnd(h, 1048575) / 1048576, 1.5)))),
                                     2, '0')) AS tenant,
           bitAnd(bitShiftRight(h, 20), 15) AS u,
           concat('user-', leftPad(toString(u), 2, '0')) AS user,
           concat('team-', toString(intDiv(u, 4))) AS team_account,
           [$TEAMS][intDiv(u, 4) + 1] AS team,
           concat('cc-', toString(100 + (cityHash64(tenant) + intDiv(u, 4)) % 40)) AS cost_center,
           if(bitShiftRight(h, 56) % 10 < 9, u % 4, bitShiftRight(h2, 56) % 4) AS key_n,
           multiIf(bitShiftRight(h, 40) % 100 < 35, 0, bitShiftRight(h, 40) % 100 < 55, 1,
                   bitShiftRight(h, 40) % 100 < 75, 2, bitShiftRight(h, 40) % 100 < 85, 3,
                   bitShiftRight(h, 40) % 100 < 95, 4, 5) AS model_n,
           [$MODELS][model_n + 1] AS model,
           if(model_n = 4, 'embedding', if(bitShiftRight(h2, 32) % 100 < 80, 'chat', 'completion')) AS op,
           h2 % 4000 + 50 AS units,
           addMicroseconds(toDateTime64('$FIRST 00:00:00', 6, 'UTC'), toInt64(n * $STEP_US)) AS ts,
           toDate(ts) AS day,
           multiIf(bitShiftRight(h, 24) % 100 < 80, user, bitShiftRight(h, 24) % 100 < 95, team_account, 'org')
               AS funder
    FROM numbers($START, $COUNT)
)
"""

_LEDGER_INSERT = """
INSERT INTO ledger_entries (entry_id, kind, tenant_id, account_id, cause_id, cause_type, ts, amount_micros,
    balance_micros, charged_to, grant_id, late, kafka_partition, kafka_offset, hold_id, model_name, operation_type,
    api_key_id, usage_labels, team, cost_center, project, env)
SELECT concat('req-', toString(n), '#0'), 'consume', tenant, funder, concat('req-', toString(n)), 'usage', ts,
       amount, toInt64(bitShiftRight(h2, 8) % 1000000000000), user, concat(tenant, ':alloc-', funder), false,
       cityHash64(tenant) % 6, n, '', model, op, concat(tenant, '-key-', toString(key_n)),
       map('team', team, 'cost_center', cost_center, 'project', [$PROJECTS][key_n + 1], 'env', [$ENVS][key_n + 1]),
       team, cost_center, [$PROJECTS][key_n + 1], [$ENVS][key_n + 1]
FROM ($DIMS)
"""

_USAGE_INSERT = """
INSERT INTO usage_events (tenant_id, id, ts, account_id, api_key_id, model_name, operation_type, units_consumed,
    credits_micros, team, cost_center, project, env, labels, response_latency_ms, error_code, raw, kafka_partition,
    kafka_offset)
SELECT tenant, concat('req-', toString(n)), ts, user, key, model, op, units, amount, team, cost_center, project, env,
       map('team', team, 'cost_center', cost_center, 'project', project, 'env', env), latency, error,
       concat('{"type":"usage","id":"req-', toString(n), '","tenant_id":"', tenant, '","ts":"',
              formatDateTime(ts, '%Y-%m-%dT%H:%i:%S.%fZ'), '","account_id":"', user, '","api_key_id":"', key,
              '","model_name":"', model, '","operation_type":"', op, '","units_consumed":', toString(units),
              ',"credits_consumed":"', toString(toDecimal64(amount, 6) / 1000000), '","usage_labels":',
              toJSONString(map('team', team, 'cost_center', cost_center, 'project', project, 'env', env)),
              ',"response_latency_ms":', toString(latency), '}'),
       cityHash64(tenant) % 6, n
FROM (SELECT *, concat(tenant, '-key-', toString(key_n)) AS key, [$PROJECTS][key_n + 1] AS project,
             [$ENVS][key_n + 1] AS env, toFloat64(80 + bitShiftRight(h2, 16) % 3000) AS latency,
             if(bitShiftRight(h2, 48) % 200 = 0, 'rate_limited', '') AS error
      FROM ($DIMS))
"""


def _sql_list(values) -> str:
    return ", ".join(f"'{v}'" if isinstance(v, str) else repr(v) for v in values)


def _fill(template: str, **values) -> str:
    for key, value in sorted(values.items(), key=lambda kv: -len(kv[0])):  # longest name first
        template = template.replace(f"${key}", str(value))
    return template


def _history_rows(first_day, last_day) -> tuple[list, list, list[str], list]:
    """Per tenant: a purchase, allocations down the tree (applied: each has its ledger
    entries), and a balance snapshot per account per day; columns of each table."""
    t0 = datetime.combine(first_day, datetime.min.time(), timezone.utc)
    allocations, entries = [], []
    offset = 0
    for t in range(REPORT_TENANTS):
        tenant = f"tenant-{t:02d}"
        tree = [(tenant, "org")] + [("org", f"team-{k}") for k in range(4)]
        tree += [(f"team-{u // 4}", f"user-{u:02d}") for u in range(16)]
        allocations.append([f"{tenant}:buy", tenant, "purchase", t0, "", tenant, 10**15, None, None, "", 0])
        for n, (parent, child) in enumerate(tree):
            ident = f"{tenant}:alloc-{child}"
            ts = t0 + timedelta(seconds=n + 1)
            monthly = child.startswith("user-") and n % 2 == 0
            ends = None if monthly or child == "org" else datetime.combine(
                last_day + timedelta(days=5 + (t * 7 + n) % 40), datetime.min.time(), timezone.utc)
            allocations.append([ident, tenant, "allocate", ts, parent, child, 10**12, ends, None,
                                "month" if monthly else "", 50 if monthly else 0])
            for k, (kind, account) in enumerate((("allocation_out", parent), ("allocation_in", child))):
                offset += 1
                entries.append([f"{ident}#{k}", kind, tenant, account, ident, "allocate", ts, 10**12, 10**12,
                                "", ident if k else "", t % 6, offset])
    allocation_columns = ["id", "tenant_id", "type", "ts", "from_account", "to_account", "credits_micros", "ends_at",
                          "expires_at", "recurrence_every", "rollover_pct"]
    entry_columns = ["entry_id", "kind", "tenant_id", "account_id", "cause_id", "cause_type", "ts", "amount_micros",
                     "balance_micros", "charged_to", "grant_id", "kafka_partition", "kafka_offset"]
    return allocations, allocation_columns, entries, entry_columns


# Balance history: one snapshot per account per day; the last day's available credits are
# its 14-day draw times 2..121 days (so runway spreads), earlier days hold more.
_SNAPSHOTS_INSERT = """
INSERT INTO balance_snapshots (tenant_id, account_id, kind, parent_id, available_micros, consumed_micros,
    reserved_micros, overage_micros, ts, kafka_partition, kafka_offset)
SELECT tenant_id, account_id,
       multiIf(startsWith(account_id, 'user-'), 'user', startsWith(account_id, 'team-'), 'team', 'org'),
       multiIf(startsWith(account_id, 'user-'), concat('team-', toString(intDiv(toUInt8(substring(account_id, 6)), 4))),
               startsWith(account_id, 'team-'), 'org', tenant_id),
       toInt64(daily * (cityHash64(tenant_id, account_id) % 120 + 2 + ($DAYS - 1 - d))), toInt64(daily * d), 0, 0,
       toDateTime64(toDate('$FIRST') + d, 6, 'UTC') + toIntervalSecond(86399), cityHash64(tenant_id) % 6,
       rowNumberInAllBlocks()
FROM (SELECT tenant_id, funded_by AS account_id, sum(credits_micros) / 14 AS daily
      FROM forecast_inputs_daily WHERE day > toDate('$LAST') - 14 GROUP BY tenant_id, funded_by)
ARRAY JOIN range($DAYS) AS d
"""


def _settle(client, timeout: float = 180.0) -> float:
    """Wait until background merges stop, so they do not run under the timed reports."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if not client.query("SELECT count() FROM system.merges WHERE database = currentDatabase()").result_rows[0][0]:
            break
        time.sleep(0.5)
    return time.perf_counter() - started


def _forecast_breakdown(reader, reports_mod, params, repeats: int) -> dict:
    """The forecast's parts: its SQL, the daily-spend SQL for Holt, and Holt itself (Python)."""
    history = reports_mod.Params(**{**params.__dict__,
                                    "start": params.end - timedelta(days=reports_mod.HOLT_HISTORY_DAYS - 1)})
    columns, rows = reader.query(reports_mod.sql_text("forecast"), params.sql_parameters())
    series = reports_mod.daily_series(reader, params, history.start)
    ix = {c: i for i, c in enumerate(columns)}

    def holt() -> None:
        for row in rows:
            history_ = [float(v) for _, v in series.get((row[ix["tenant_id"]], row[ix["account_id"]]), [])]
            reports_mod.holt_month_end(history_, float(row[ix["month_to_date"]]), int(row[ix["days_left"]]))

    return {
        "sql_only_ms": _ms([_timed(lambda: reader.query(reports_mod.sql_text("forecast"), params.sql_parameters()))[0]
                            for _ in range(repeats)]),
        "daily_spend_sql_ms": _ms([_timed(lambda: reader.query(reports_mod.sql_text("daily-spend"),
                                                               history.sql_parameters()))[0] for _ in range(repeats)]),
        "holt_python_ms": _ms([_timed(holt)[0] for _ in range(repeats)]),
        "series_fitted": len(rows),
    }


def reports(events: int = 10_000_000, repeats: int = 3, chunk: int = 2_000_000, tenant: str = "tenant-07") -> dict:
    """Every report on ``events`` usage-caused ledger rows (and as many usage_events rows)
    spread over 50 tenants and 90 days ending yesterday, generated inside ClickHouse."""
    import tempfile

    from .projections import reports as reports_mod
    from .projections.query import LocalReader

    today = datetime.now(timezone.utc).date()
    last_day = today - timedelta(days=1)
    first_day = today - timedelta(days=REPORT_DAYS)
    values = {"TENANTS": REPORT_TENANTS, "PRICES": _sql_list(_MODEL_PRICE), "MODELS": _sql_list(_MODELS),
              "TEAMS": _sql_list(_TEAMS), "PROJECTS": _sql_list(_PROJECTS), "ENVS": _sql_list(_ENVS),
              "FIRST": first_day.isoformat(), "LAST": last_day.isoformat(), "DAYS": REPORT_DAYS,
              "STEP_US": repr(REPORT_DAYS * 86_400_000_000 / events)}
    with tempfile.TemporaryDirectory(prefix="finops-bench-") as tmp:
        client = _bench_client(tmp)
        reader = LocalReader(client)
        generate_s: dict[str, float] = {}

        def insert_chunks(template: str) -> float:
            started = time.perf_counter()
            for start in range(0, events, chunk):
                dims = _fill(_USAGE_DIMS, **values, START=start, COUNT=min(chunk, events - start))
                client.command(_fill(template, **values, DIMS=dims))
            return time.perf_counter() - started

        generate_s["ledger_entries"] = insert_chunks(_LEDGER_INSERT)
        generate_s["usage_events"] = insert_chunks(_USAGE_INSERT)
        started = time.perf_counter()
        allocations, allocation_columns, entries, entry_columns = _history_rows(first_day, last_day)
        client.insert("allocations", allocations, column_names=allocation_columns)
        client.insert("ledger_entries", entries, column_names=entry_columns)
        client.command(_fill(_SNAPSHOTS_INSERT, **values))
        generate_s["history"] = time.perf_counter() - started
        generate_s["settle_merges"] = _settle(client)
        generate_s = {k: round(v, 2) for k, v in generate_s.items()}
        generate_s["total"] = round(sum(generate_s.values()), 2)

        tables = ("ledger_entries", "usage_events", "balance_snapshots", "allocations", "forecast_inputs_daily",
                  "credits_by_team_daily", "model_costs_daily", "request_summary_daily")
        _, counted = reader.query(
            "SELECT table, sum(rows), count() FROM system.parts WHERE database = currentDatabase() AND active "
            "AND table IN {tables:Array(String)} GROUP BY table", {"tables": list(tables)})
        rows = {t: 0 for t in tables} | {t: int(n) for t, n, _ in counted}
        parts = {t: int(p) for t, _, p in counted}

        mapping = {f"cc-{100 + i}": f"gl-{6000 + i % 8}" for i in range(32)}  # cc-132..cc-139 stay unmapped
        timings: dict[str, dict] = {}
        forecast: dict[str, dict] = {}
        for scope, who in (("all_tenants", ""), ("one_tenant", tenant)):
            params = reports_mod.Params(tenant=who, mapping=mapping)
            resolved = params.resolved(today)
            timings[scope] = {}
            for name in reports_mod.REPORTS:
                runs, engine = [], []
                sql, sql_parameters = reports_mod.sql_text(name), resolved.sql_parameters()
                for _ in range(repeats):
                    seconds, report = _timed(functools.partial(reports_mod.run, reader, name, params, today))
                    runs.append(seconds)
                    engine.append(_timed(functools.partial(reader.raw, sql, sql_parameters, fmt="Native"))[0])
                timings[scope][name] = {**_ms(runs), "rows": len(report.rows), "engine_ms": _ms(engine)["median"]}
            forecast[scope] = _forecast_breakdown(reader, reports_mod, resolved, repeats)
            forecast[scope]["total_ms"] = timings[scope]["forecast"]["median"]
        machine = _machine(client)
        client.close()

    target = 300
    return {
        "benchmark": "reports",
        "what": "every report (projections/sql) through reports.run on a fresh embedded ClickHouse, median of "
                "the runs in ms; engine_ms: the same SQL fetched as Native bytes (ClickHouse alone, no Python "
                "rows, no Holt); data generated inside ClickHouse (INSERT ... SELECT FROM numbers)",
        "events": events,
        "workload": {"tenants": REPORT_TENANTS, "accounts_per_tenant": 21, "charged_accounts_per_tenant": 16,
                     "days": REPORT_DAYS, "first_day": first_day.isoformat(), "last_day": last_day.isoformat(),
                     "report_as_of": today.isoformat(), "models": len(_MODELS), "operations": 3,
                     "api_keys": REPORT_TENANTS * 4, "one_tenant": tenant,
                     "balance_snapshots": "one per account per day", "allocations": "21 applied per tenant"},
        "generate_s": generate_s,
        "generate_rows_per_s": round(2 * events / (generate_s["ledger_entries"] + generate_s["usage_events"])),
        "rows": rows,
        "parts": parts,
        "reports_ms": timings,
        "forecast_breakdown": forecast,
        "target_ms": target,
        "over_target": {scope: [n for n, r in by_name.items() if r["median"] > target]
                        for scope, by_name in timings.items()},
        "machine": machine,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _sink_messages(events: int) -> tuple[list[bytes], list[bytes]]:
    """``events`` ledger entries and ``events`` usage messages as they arrive from Kafka:
    a generated 50-tenant workload, its usage lines as published and the entries its fold
    makes, encoded as the ledger processor encodes them."""
    from .processors.fold import FoldResult
    from .producers.workload import generate
    from .schemas import outputs

    workload = generate(tenants=50, usage=events, start=datetime(2026, 11, 2, tzinfo=timezone.utc))
    usage = workload.lines[workload.command_count:]
    folded = FoldResult(keep_outputs=True)
    for line in workload.lines:
        folded.feed(line)
    encode = msgspec.json.Encoder(enc_hook=wire.enc_hook).encode
    entries = [encode(o) for o in folded.outputs if type(o) is outputs.LedgerEntry]
    while len(entries) < events:  # (a fold makes at least one entry per usage; this is a guard)
        entries += entries[: events - len(entries)]
    return entries[:events], usage


def sink(events: int = 500_000, repeats: int = 3, slice_rows: int = 50_000) -> dict:
    """The sink's ClickHouse write path without Kafka: build rows (ledger_line / usage_row)
    and ``Sink._write_once`` (batch log + JSONEachRow insert per slice, views included), in
    slices of ``slice_rows``; against ``client.raw_insert`` of the same bytes in the same run."""
    import tempfile
    import threading

    from .projections import sink as sink_mod
    from .schemas import topics

    from .service import tune_gc

    ledger_msgs, usage_msgs = _sink_messages(events)
    tune_gc()  # as `finops run` does
    tables = sink_mod.TABLES
    offsets = {topics.LEDGER: 0, topics.USAGE: 0}

    def batches(kinds: tuple[tuple[str, list[bytes]], ...], per_batch: int) -> list[list[tuple[str, int, int, bytes]]]:
        """Consumed batches of ``per_batch`` messages of each kind, at fresh offsets (fresh dedup tokens)."""
        out = []
        for start in range(0, events, per_batch):
            batch = []
            for topic, messages in kinds:
                first = offsets[topic]
                chunk = messages[start:start + per_batch]
                batch += [(topic, 0, first + i, value) for i, value in enumerate(chunk)]
                offsets[topic] = first + len(chunk)
            out.append(batch)
        return out

    def slices_of(batch) -> list:
        slices: dict[tuple[str, int], sink_mod.Slice] = {}
        for topic, partition, offset, value in batch:  # as Sink.step does
            s = slices.get((topic, partition))
            if s is None:
                s = slices[(topic, partition)] = sink_mod.Slice(topic, partition, offset, offset)
            s.last = offset
            row = tables[topic].build(value, partition, offset)
            if row is not None:
                s.rows.append(row)
        return list(slices.values())

    def through_sink(writer, consumed) -> tuple[float, float, int]:
        build_s = write_s = 0.0
        rows = 0
        for batch in consumed:
            started = time.perf_counter()
            slices = slices_of(batch)
            built = time.perf_counter()
            writer._write_once(slices)
            write_s += time.perf_counter() - built
            build_s += built - started
            rows += sum(len(s.rows) for s in slices)
        return build_s, write_s, rows

    def raw_only(client, consumed) -> tuple[float, int]:
        prepared = [(tables[s.topic].name, sink_mod.encode_rows(s.rows), s.token, len(s.rows))
                    for batch in consumed for s in slices_of(batch)]
        started = time.perf_counter()
        for table, data, token, _ in prepared:
            client.raw_insert(table, None, data, fmt="JSONEachRow",
                              settings={**sink_mod.INSERT_SETTINGS, "insert_deduplication_token": f"raw:{token}"})
        return time.perf_counter() - started, sum(n for *_, n in prepared)

    phases = {  # name -> (kinds, messages of each kind per batch)
        "ledger": (((topics.LEDGER, ledger_msgs),), slice_rows),
        "usage": (((topics.USAGE, usage_msgs),), slice_rows),
        "combined": (((topics.LEDGER, ledger_msgs), (topics.USAGE, usage_msgs)), slice_rows // 2),
    }
    sink_rates: dict[str, list[float]] = {name: [] for name in phases}
    raw_rates: dict[str, list[float]] = {name: [] for name in phases}
    split: dict[str, list[tuple[float, float]]] = {name: [] for name in phases}
    with tempfile.TemporaryDirectory(prefix="finops-bench-") as tmp:
        client = _bench_client(tmp)
        writer = sink_mod.Sink.__new__(sink_mod.Sink)  # no Kafka: only what _write_once uses
        writer.client, writer.lock, writer.progress = client, threading.RLock(), sink_mod.SinkProgress()
        for _ in range(repeats):
            for name, (kinds, per_batch) in phases.items():
                build_s, write_s, rows = through_sink(writer, batches(kinds, per_batch))
                sink_rates[name].append(rows / (build_s + write_s))
                split[name].append((build_s, write_s))
                raw_s, raw_rows = raw_only(client, batches(kinds, per_batch))
                raw_rates[name].append(raw_rows / raw_s)
        stored = dict(client.query("SELECT table, sum(rows) FROM system.parts WHERE database = currentDatabase() "
                                   "AND active AND table IN ('ledger_entries', 'usage_events') GROUP BY table")
                      .result_rows)
        machine = _machine(client)
        client.close()

    def rate(values: list[float]) -> dict:
        return {"median": round(statistics.median(values)), "runs": [round(v) for v in values]}

    result = {
        "benchmark": "sink",
        "what": "rows/s through the sink's ClickHouse write path (row building + Sink._write_once: batch log and "
                "JSONEachRow insert with views, in slices), no Kafka, embedded ClickHouse; vs client.raw_insert "
                "of the same JSONEachRow bytes",
        "events": events,
        "slice_rows": slice_rows,
        "phases": {"ledger": f"{events} ledger entries, one slice of {slice_rows} rows per write",
                   "usage": f"{events} usage messages, one slice of {slice_rows} rows per write",
                   "combined": f"both, {slice_rows} messages per write (as one consume of the sink): a ledger "
                               f"and a usage slice of {slice_rows // 2} rows each"},
        "message_bytes_avg": {"ledger": round(sum(map(len, ledger_msgs)) / len(ledger_msgs)),
                              "usage": round(sum(map(len, usage_msgs)) / len(usage_msgs))},
        "rows_per_s": {name: rate(values) for name, values in sink_rates.items()},
        "raw_insert_rows_per_s": {name: rate(values) for name, values in raw_rates.items()},
        "seconds_build_rows_vs_write": {name: {"build": round(statistics.median(b for b, _ in runs), 2),
                                               "write": round(statistics.median(w for _, w in runs), 2)}
                                        for name, runs in split.items()},
        "target_rows_per_s": 200_000,
        "stored_rows": stored,
        "machine": machine,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result["ratio_vs_raw_insert"] = {name: round(result["rows_per_s"][name]["median"]
                                                 / result["raw_insert_rows_per_s"][name]["median"], 3)
                                     for name in phases}
    return result


# ----------------------------------------------------------------------------- alert latency


def alerts(events: int = 10_000, repeats: int = 1, seconds: float = 30.0, accounts: int = 200,
           spikes: int = 40) -> dict:
    """Latency from a usage event's publish to its alert, under a steady ``events``/s load.

    On a dedicated broker: ``accounts`` accounts (10 tenants) get 30 hours of steady hourly
    spend as history (backfilled in event time), then live usage at ``events`` per second
    with event time now, for ``seconds``. During the live phase ``spikes`` accounts, one at
    a time, get one usage worth ten hours of their spend: each must raise one
    ``zscore_spike``; its latency is the time from that usage's publish to the alert's
    arrival at a consumer of finops.alerts.v1. The ledger processor (in this process) and
    the faust alert processor (a child process) do the work in between.
    """
    import json
    import signal
    import subprocess
    import sys
    import threading
    from contextlib import ExitStack

    from . import clients
    from .demo import wait_for
    from .pipeline import Pipeline
    from .producers.publish import publish_lines
    from .schemas import topics

    tenants = 10
    per_tenant = max(accounts // tenants, 1)
    hourly_credits = events / (tenants * per_tenant) * 3600 * 0.01  # live usage is 0.01 credits per event
    now = datetime.now(timezone.utc)
    hour0 = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=30)
    iso = "%Y-%m-%dT%H:%M:%S.%fZ"

    def names():
        for t in range(tenants):
            for a in range(per_tenant):
                yield f"bench-t{t}", f"u{a}"

    setup = []
    for t in range(tenants):
        tenant = f"bench-t{t}"
        setup.append({"type": "purchase", "id": "buy", "tenant_id": tenant, "ts": hour0.strftime(iso),
                      "credits": 10 ** 9})
        for a in range(per_tenant):
            setup.append({"type": "open_account", "id": f"open-u{a}", "tenant_id": tenant, "ts": hour0.strftime(iso),
                          "account_id": f"u{a}", "kind": "user", "parent_id": tenant})
    history = []
    for h in range(30):  # the hours before now's hour: 6 requests an hour, steady spend with 10 % noise
        for tenant, account in names():
            for n in range(6):
                ts = hour0 + timedelta(hours=h, minutes=n * 10 + 1)
                credits = hourly_credits / 6 * (1 + 0.1 * ((h * 7 + n * 3 + len(account)) % 5 - 2) / 2)
                history.append({"type": "usage", "id": f"h-{account}-{h}-{n}", "tenant_id": tenant,
                                "ts": ts.strftime(iso), "account_id": account, "api_key_id": "k", "model_name": "m",
                                "operation_type": "chat", "units_consumed": 1, "credits_consumed": f"{credits:.6f}"})
    encode = msgspec.json.encode
    with ExitStack() as cleanup:
        settings = _bench_broker(cleanup)
        publish_lines(settings, [encode(m) for m in setup + history], validate=False)
        pipeline = cleanup.enter_context(Pipeline(settings, ("ledger",)))
        ends = clients.input_ends(settings)
        wait_for(lambda: pipeline.ledger.caught_up(ends), timeout=300, what="the ledger to fold the history",
                 pipeline=pipeline)
        env = {**os.environ, "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap, "FINOPS_GROUP_PREFIX": settings.group_prefix}
        faust_log = Path(settings.data_dir) / f"{settings.group_prefix}-alerts.log"
        faust_proc = subprocess.Popen([sys.executable, "-m", "finops.cli", "run", "alerts", "--no-supervise"],
                                      env=env, stdout=faust_log.open("w"), stderr=subprocess.STDOUT)
        cleanup.callback(lambda: (faust_proc.send_signal(signal.SIGTERM), faust_proc.wait(60)))
        wait_for(lambda: _group_caught_up(settings, f"{settings.group_prefix}-alerts", topics.SPEND), timeout=300,
                 what="the alert processor to fold the history")

        arrived: dict[str, float] = {}
        stop = threading.Event()

        def listen() -> None:
            # from the beginning: a fresh broker holds only this run's alerts; spikes are told by account
            consumer = clients.consumer(settings, f"{settings.group_prefix}-latency")
            consumer.subscribe([topics.ALERTS])
            try:
                while not stop.is_set():
                    for m in consumer.consume(100, 0.1):
                        if m.error():
                            continue
                        alert = json.loads(m.value())
                        if alert.get("type") == "zscore_spike" and alert.get("status", "firing") == "firing":
                            arrived.setdefault(f"{alert['tenant_id']}/{alert['account_id']}", time.time())
            finally:
                consumer.close()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        producer = clients.producer(settings, **{"linger.ms": 5})
        all_accounts = list(names())
        spike_every = seconds / (spikes + 1)
        spike_accounts = all_accounts[:spikes]
        published: dict[str, float] = {}
        sent = 0
        started = time.time()
        next_spike = started + spike_every
        while time.time() - started < seconds:
            second_start = time.time()
            for n in range(events // 10):  # a tenth of a second's worth
                tenant, account = all_accounts[(sent + n) % len(all_accounts)]
                producer.produce(topics.USAGE, encode({
                    "type": "usage", "id": f"live-{sent + n}", "tenant_id": tenant,
                    "ts": datetime.now(timezone.utc).strftime(iso), "account_id": account, "api_key_id": "k",
                    "model_name": "m", "operation_type": "chat", "units_consumed": 1, "credits_consumed": "0.01"}),
                    tenant.encode())
            sent += events // 10
            producer.poll(0)
            if time.time() >= next_spike and len(published) < len(spike_accounts):
                tenant, account = spike_accounts[len(published)]
                producer.produce(topics.USAGE, encode({
                    "type": "usage", "id": f"spike-{account}", "tenant_id": tenant,
                    "ts": datetime.now(timezone.utc).strftime(iso), "account_id": account, "api_key_id": "k",
                    "model_name": "m", "operation_type": "chat", "units_consumed": 1,
                    "credits_consumed": f"{hourly_credits * 10:.6f}"}), tenant.encode())
                producer.flush(5)
                published[f"{tenant}/{account}"] = time.time()
                next_spike += spike_every
            time.sleep(max(0.0, 0.1 - (time.time() - second_start)))
        producer.flush(30)
        rate = sent / (time.time() - started)
        deadline = time.monotonic() + 120
        while len(arrived.keys() & published.keys()) < len(published) and time.monotonic() < deadline:
            time.sleep(0.2)  # a missing alert is reported below, not waited for forever
        stop.set()
        listener.join(10)
        latencies = sorted(arrived[k] - t for k, t in published.items() if k in arrived)
        ledger_stats = pipeline.ledger.stats
        if not latencies:
            said = [line for line in faust_log.read_text().splitlines() if "buffer full" not in line]
            raise RuntimeError("no spike alert arrived; the alert processor said: " + "\n".join(said[-60:]))
    return {
        "benchmark": "alerts",
        "what": "latency from a usage event's publish to its zscore_spike alert on finops.alerts.v1, through "
                "the ledger processor, finops.spend.v1 and the faust alert processor, under steady usage load",
        "target_events_per_s": events,
        "achieved_events_per_s": round(rate),
        "seconds": seconds,
        "accounts": len(all_accounts),
        "spikes": len(published),
        "alerts_received": len(latencies),
        "ledger_lag_at_end": pipeline.ledger.stats.lag,
        "latency_ms": {"p50": round(_quantile(latencies, 0.5) * 1000), "p99": round(_quantile(latencies, 0.99) * 1000),
                       "max": round(latencies[-1] * 1000) if latencies else None},
        "target_p99_ms": 1000,
        "ledger_transactions": ledger_stats.transactions,
        "machine": _machine(),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(int(q * len(values)), len(values) - 1)]


def _group_caught_up(settings, group: str, topic: str) -> bool:
    """Has consumer group ``group`` committed every message of ``topic``?"""
    from confluent_kafka import TopicPartition

    from . import clients

    probe = clients.consumer(settings, group)
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        committed = {tp.partition: tp.offset for tp in clients.committed_offsets(probe, parts, timeout=10)}
        for p in range(settings.topic_partitions):
            _low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > 0 and committed.get(p, -1) < high - 1:  # the last offset may be a transaction marker
                return False
        return True
    finally:
        probe.close()


# ----------------------------------------------------------------------------- busy tenant
#
# Issue 13's acceptance: one busy tenant published into a running ledger (a `finops run
# ledger` child process), killed with -9 at about half-way and restarted, against 50 small
# tenants of the same shape measured in the same run. The helpers below are shared with
# tests/test_busy_tenant.py (the short version).

_BUSY_COSTS = ("0.0125", "0.0031", "0.2", "0.05")  # credits per usage, in turn
_BUSY_MODELS = (("gpt-4o", "chat"), ("gpt-4o-mini", "chat"), ("text-embedding-3-small", "embedding"))


def tenants_workload(tenants: int, events: int, *, prefix: str, users: int = 4, end: datetime | None = None):
    """``tenants`` tenants (``<prefix>-<n>``) of one shape and ``events`` usage events in all, over
    the 24 h of event time that end at ``end`` (default: now, so no ``ts_in_future``), commands first.

    Each tenant buys credits, opens an org, a team and ``users`` users, and allocates down
    the tree; a user's own allocation covers about 60 % of its usage, after which its usage
    draws from the team (the cascade). Usage goes round-robin over tenants, then users, in
    event-time order, so one tenant (``tenants=1``) and many small ones do the same work
    per event.
    """
    from decimal import Decimal

    from .producers.workload import Workload

    end = end or datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(days=1)
    encode = msgspec.json.encode
    names = [f"{prefix}-{t}" for t in range(tenants)]
    per_user = Decimal(events) / max(tenants * users, 1)
    mean_cost = sum(Decimal(c) for c in _BUSY_COSTS) / len(_BUSY_COSTS)
    user_credits = int(per_user * mean_cost * Decimal("0.6")) + 1
    spend = int(per_user * users * mean_cost) + 1
    purchase = 2 * spend + 100 + users * user_credits
    lines: list[bytes] = []
    for tenant in names:
        t = start - timedelta(minutes=5)

        def cmd(type_: str, ident: str, **fields) -> None:
            nonlocal t
            t += timedelta(milliseconds=10)
            lines.append(encode({"type": type_, "id": f"{tenant}:{ident}", "tenant_id": tenant,
                                 "ts": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **fields}))

        cmd("purchase", "buy", credits=purchase)
        cmd("open_account", "open-org", account_id="org", kind="org", parent_id=tenant)
        cmd("allocate", "alloc-org", from_account=tenant, to_account="org", credits=purchase - 50)
        cmd("open_account", "open-team", account_id="team", kind="team", parent_id="org")
        cmd("allocate", "alloc-team", from_account="org", to_account="team", credits=purchase - 100)
        for u in range(users):
            cmd("open_account", f"open-user{u}", account_id=f"user{u}", kind="user", parent_id="team")
            cmd("allocate", f"alloc-user{u}", from_account="team", to_account=f"user{u}", credits=user_credits)
    command_count = len(lines)
    step_us = 86_400_000_000 // max(events, 1)
    start_us = int(start.timestamp()) * 1_000_000
    for n in range(events):
        tenant = names[n % tenants]
        user = (n // tenants) % users
        model, operation = _BUSY_MODELS[n % len(_BUSY_MODELS)]
        ts = datetime.fromtimestamp((start_us + (n + 1) * step_us) / 1_000_000, timezone.utc)
        lines.append(encode({
            "type": "usage", "id": f"{prefix}-u{n}", "tenant_id": tenant, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "account_id": f"user{user}", "api_key_id": f"key-{user}", "model_name": model,
            "operation_type": operation, "units_consumed": 100 + n % 900,
            "credits_consumed": _BUSY_COSTS[n // (tenants * users) % len(_BUSY_COSTS)],
            "usage_labels": {"team": "search", "env": "prod"}}))
    return Workload(lines=lines, tenants=names, usage_count=events, command_count=command_count)


def _status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB ({} once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f)
                    if k in ("VmRSS", "VmHWM")}
    except (OSError, ValueError):
        return {}


class LedgerRun:
    """One ``finops run ledger --no-supervise --metrics-every 1`` child process.

    Reads its stderr as it comes (each metrics line parsed: ``metrics`` is the last
    ``ledger`` object, ``aborted`` the most any line said) and samples its RSS from /proc
    every 0.25 s (``max_rss_kb``; ``peak_rss_kb`` is the kernel's VmHWM, which misses no
    peak between samples). ``data_dir`` holds its state stores (FINOPS_DATA_DIR).
    """

    def __init__(self, settings, instance: str, data_dir: Path, *, batch_max: int | None = None) -> None:
        import collections
        import subprocess
        import sys
        import threading

        self.settings, self.instance, self.data_dir, self.batch_max = settings, instance, data_dir, batch_max
        env = {**os.environ, "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap,
               "FINOPS_GROUP_PREFIX": settings.group_prefix, "FINOPS_DATA_DIR": str(data_dir)}
        args = [sys.executable, "-m", "finops.cli", "run", "ledger", "--no-supervise", "--instance", instance,
                "--metrics-every", "1"]
        if batch_max is not None:
            args += ["--batch-max", str(batch_max)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.metrics: dict = {}
        self.metrics_at = 0.0  # monotonic time the last metrics line arrived
        self.aborted = 0
        self.max_rss_kb = 0
        self.peak_rss_kb = 0
        self.said: collections.deque[str] = collections.deque(maxlen=40)  # its other stderr lines
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for thread in self._threads:
            thread.start()

    def again(self) -> LedgerRun:
        """The same instance started anew (same instance id and state directory)."""
        return LedgerRun(self.settings, self.instance, self.data_dir, batch_max=self.batch_max)

    def _read(self) -> None:
        import json

        for line in self.proc.stderr:
            if line.startswith("{"):
                try:
                    ledger = json.loads(line).get("ledger")
                except ValueError:
                    ledger = None
                if ledger is not None:
                    with self._lock:
                        self.metrics, self.metrics_at = ledger, time.monotonic()
                        self.aborted = max(self.aborted, ledger.get("aborted", 0))
                    continue
            self.said.append(line.rstrip())

    def _sample(self) -> None:
        pid = self.proc.pid
        while self.proc.poll() is None:
            kb = _status_kb(pid)
            self.max_rss_kb = max(self.max_rss_kb, kb.get("VmRSS", 0))
            self.peak_rss_kb = max(self.peak_rss_kb, kb.get("VmHWM", 0))
            time.sleep(0.25)  # a sampling period, not a wait for a condition

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics_after(self, moment: float, timeout: float = 30.0) -> dict:
        """The first metrics line that arrives after monotonic time ``moment``."""
        deadline = time.monotonic() + timeout
        while self.metrics_at <= moment:
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"no metrics line from the ledger after {timeout:g} s: {self.tail()}")
            time.sleep(0.05)
        with self._lock:
            return dict(self.metrics)

    def kill(self) -> None:
        """kill -9: its open transaction is left for the broker (and its successor) to abort."""
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._join()

    def stop(self, timeout: float = 60.0) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self._join()
        return self.proc.returncode

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(10)

    def tail(self) -> str:
        return "\n".join(self.said)


class CommittedProbe:
    """Input messages committed by the ledger's consumer group so far (sum over every input partition)."""

    def __init__(self, settings) -> None:
        from confluent_kafka import TopicPartition

        from . import clients
        from .schemas import topics

        self.consumer = clients.consumer(settings, f"{settings.group_prefix}-ledger")
        self.partitions = [TopicPartition(t, p) for t, p in clients.partitions(settings, topics.INPUTS)]

    def __call__(self) -> int:
        from . import clients

        return sum(max(tp.offset, 0) for tp in clients.committed_offsets(self.consumer, self.partitions, timeout=60))

    def close(self) -> None:
        self.consumer.close()


def _wait(condition: Callable[[], bool], timeout: float, what: str, ledger: LedgerRun | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if ledger is not None and not ledger.alive():
            raise RuntimeError(f"the ledger exited ({ledger.proc.returncode}) while waiting for {what}: "
                               f"{ledger.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def feed_running_ledger(settings, workload, ledgers: list[LedgerRun], committed: CommittedProbe, *,
                        kill_at: float | None = None, timeout: float = 1800.0,
                        log: Callable[[str], None] = lambda _m: None) -> dict:
    """Publish ``workload`` while the ledger ``ledgers[-1]`` runs; follow the ledger group's
    committed offsets until every line is committed.

    First waits until the ledger has committed what the input topics already hold. With
    ``kill_at`` (a fraction): once that share of the workload is committed, kill -9 the
    ledger and start it again at once (same instance id and state dir; appended to
    ``ledgers``); ``restart_to_applying_s`` is the time from that start until the committed
    offsets move again. ``events_per_s`` is the workload's messages over the time the
    ledger was applying (from the first commit of the workload, less the restart gap).
    ``changelog_bytes``: the keys and values of the changelog records committed for the
    workload (read back from the topic), ``changelog_disk_bytes`` what its logs grew by.
    """
    import threading

    from . import clients
    from .producers.publish import publish_lines
    from .schemas import topics

    changelog = topics.changelog_name(f"{settings.group_prefix}-ledger")
    _wait(lambda: changelog in clients.admin(settings).list_topics(timeout=10).topics, 60,
          "the ledger to create its changelog topic", ledgers[-1])
    ends = sum(clients.input_ends(settings).values())
    _wait(lambda: committed() >= ends, timeout, "the ledger to commit what the input topics hold", ledgers[-1])
    base = committed()
    changelog_start = {p: end for (_t, p), end in clients.end_offsets(settings, [changelog]).items()}
    disk_before = changelog_disk_bytes(settings)
    total = len(workload.lines)
    target = base + total
    published: dict = {}

    def publish() -> None:
        try:
            published["report"] = publish_lines(settings, workload.lines, validate=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            published["error"] = exc
        published["at"] = time.monotonic()

    started = time.monotonic()
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    first = None  # monotonic time the workload's first commit was seen
    restart: dict | None = None
    killed_at = 0.0
    gap = 0.0  # seconds from the kill until applying again
    at_publish_end: tuple[float, int] | None = None
    last_log = started
    done = base
    deadline = started + timeout
    while done < target:
        ledger = ledgers[-1]
        if "error" in published:
            raise RuntimeError(f"publishing failed: {published['error']}")
        if not ledger.alive():
            raise RuntimeError(f"the ledger exited ({ledger.proc.returncode}): {ledger.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ledger committed {done - base} of {total} messages in {timeout:g} s")
        time.sleep(0.1)
        done = committed()
        now = time.monotonic()
        if first is None and done > base:
            first = now
        if at_publish_end is None and "at" in published:
            at_publish_end = (published["at"], done)
        if now - last_log >= 5:
            last_log = now
            log(f"  {done - base:,} of {total:,} committed, {now - started:.0f} s, "
                f"ledger RSS {ledger.max_rss_kb // 1024} MiB, published: {'yes' if 'at' in published else 'not yet'}")
        if kill_at is not None and restart is None and done - base >= total * kill_at:
            killed_at = time.monotonic()
            ledger.kill()
            ledgers.append(ledger.again())  # at once: its init_transactions also aborts the killed one's
            restarted = ledgers[-1].started
            # Read after the restart: offsets the killed transaction had sent stay pending (and
            # this read waits) until that transaction is aborted. The new instance cannot commit
            # before the group has dropped the killed member (session timeout, seconds away).
            after_kill = committed()
            changelog_end = sum(clients.end_offsets(settings, [changelog]).values())
            log(f"  kill -9 of the ledger at {after_kill - base:,} of {total:,} committed; restarted it")
            _wait(lambda: committed() > after_kill, 120, "the restarted ledger to commit", ledgers[-1])
            moving = time.monotonic()
            metrics = ledgers[-1].metrics_after(moving)
            restart = {"committed_share_at_kill": round((after_kill - base) / total, 3),
                       "restart_to_applying_s": round(moving - restarted, 2),
                       "restore_s": metrics.get("restore_s"), "restored_records": metrics.get("restored_records"),
                       # the changelog's end offsets at the restart (all of the group's records, with
                       # transaction markers): what a restore from offset 0 would read
                       "changelog_end_offsets_at_restart": changelog_end}
            gap = moving - killed_at
            log(f"  applying again {restart['restart_to_applying_s']} s after the restart "
                f"(restore {restart['restore_s']} s, {restart['restored_records']} changelog records)")
    finished = time.monotonic()
    publisher.join(120)
    report = published.get("report")
    if report is None or report.failed or report.sent != total:
        raise RuntimeError(f"publishing: {published.get('error') or report}")
    applying = finished - (first or started) - gap
    written = changelog_since(settings, changelog_start)
    disk_after = changelog_disk_bytes(settings)
    usage = max(workload.usage_count, 1)
    result = {
        "messages": total,
        "usage_events": workload.usage_count,
        "publish_s": round(published["at"] - started, 2),
        "wall_s": round(finished - started, 2),
        "applying_s": round(applying, 2),
        "events_per_s": round(total / applying),
        "changelog_records": written["records"],
        "changelog_bytes": written["bytes"],
        "changelog_bytes_per_usage_event": round(written["bytes"] / usage, 1),
        "changelog_disk_bytes_per_usage_event": (None if disk_after is None
                                                 else round((disk_after - disk_before) / usage, 1)),
    }
    if at_publish_end is not None and finished - at_publish_end[0] > 2:
        # the ledger alone on the machine (no publisher): the backlog left when publishing ended
        alone = finished - at_publish_end[0] - (gap if restart is not None and killed_at > at_publish_end[0] else 0)
        result["events_per_s_after_publish"] = round((target - at_publish_end[1]) / alone)
    if restart is not None:
        result["restart"] = restart
    return result


class _Typed(msgspec.Struct):
    type: str | None = None
    id: str | None = None


def check_against_fold(settings, workload, *, timeout: float = 900.0) -> dict:
    """What the ledger published for ``workload``'s tenants against ``finops fold`` of the same lines.

    Balances (finops.balances.v1, latest per account) against the folded accounts, and the
    ledger topic (read_committed) against the fold's ledger entries as a multiset of (tenant,
    entry_id, kind, account, amount, balance): ``exactly_once`` when they are equal, every
    usage id of the input has its entries (``<id>#0`` ...) and none is there twice.
    """
    from collections import Counter

    from . import clients
    from .processors.fold import fold_lines
    from .projections.balances import read_balances
    from .schemas import outputs, topics

    wanted = set(workload.tenants)
    fold = fold_lines(workload.lines, keep_outputs=True)
    expected = Counter((e.tenant_id, e.entry_id, e.kind, e.account_id, e.amount_micros, e.balance_micros)
                       for e in fold.outputs if type(e) is outputs.LedgerEntry)
    folded = {(t, a.id): (a.available, a.consumed, a.reserved, a.overage)
              for t in workload.tenants for a in fold.book.tenants[t].accounts.values()}
    fold_rejected = len(fold.rejected)
    del fold
    published = {key: (b.available_micros, b.consumed_micros, b.reserved_micros, b.overage_micros)
                 for key, b in read_balances(settings, timeout=timeout).items() if key[0] in wanted}
    differ = sorted(k for k in published.keys() | folded.keys() if published.get(k) != folded.get(k))

    got: Counter = Counter()
    by_entry: Counter = Counter()
    decode = outputs.entry_decoder.decode
    for m in clients.read_to_end(settings, topics.LEDGER, range(settings.topic_partitions), timeout=timeout):
        e = decode(m.value())
        if e.tenant_id in wanted:
            got[(e.tenant_id, e.entry_id, e.kind, e.account_id, e.amount_micros, e.balance_micros)] += 1
            by_entry[e.entry_id] += 1
    typed = msgspec.json.Decoder(_Typed).decode
    usage_ids = [m.id for m in map(typed, workload.lines) if m.type == "usage"]
    missing_usage = sum(1 for ident in usage_ids if not by_entry.get(f"{ident}#0"))
    rejected = 0
    for m in clients.read_to_end(settings, topics.REJECTED, range(settings.topic_partitions), timeout=timeout):
        record = msgspec.json.decode(m.value())
        if record.get("tenant_id") in wanted:
            rejected += 1
    return {
        "balances_equal_fold": not differ and bool(folded),
        "accounts": len(folded),
        "accounts_differing": len(differ),
        "accounts_differing_first": [list(k) for k in differ[:5]],
        "exactly_once": got == expected and missing_usage == 0 and bool(expected),
        "ledger_entries": sum(got.values()),
        "fold_ledger_entries": sum(expected.values()),
        "entries_missing": sum((expected - got).values()),
        "entries_unexpected_or_repeated": sum((got - expected).values()),
        "entry_ids_repeated": sum(n - 1 for n in by_entry.values() if n > 1),
        "usage_ids": len(usage_ids),
        "usage_ids_without_entries": missing_usage,
        "rejected_in_kafka": rejected,
        "rejected_by_fold": fold_rejected,
    }


def changelog_since(settings, start: dict[int, int], timeout: float = 900.0) -> dict:
    """Committed records of the ledger group's changelog from offsets ``start`` on: how many, and
    their keys and values in bytes (uncompressed, as the ledger's changelog_bytes metric counts)."""
    from . import clients
    from .schemas import topics

    name = topics.changelog_name(f"{settings.group_prefix}-ledger")
    partitions = [p for t, p in clients.partitions(settings, [name])]
    records = size = 0
    for m in clients.read_to_end(settings, name, partitions, start=start, timeout=timeout):
        records += 1
        size += len(m.key() or b"") + len(m.value() or b"")
    return {"records": records, "bytes": size}


def changelog_disk_bytes(settings) -> int | None:
    """Bytes of the changelog's partition logs in the local broker's storage (None: not a local broker)."""
    from . import stack
    from .schemas import topics

    if settings.external_kafka:
        return None
    name = topics.changelog_name(f"{settings.group_prefix}-ledger")
    storage = stack._BrokerFiles.of(settings).storage
    return sum(f.stat().st_size for f in storage.glob(f"{name}-*/*.log"))


def _code_version() -> dict | None:
    """The git commit of the code measured, and a digest of the uncommitted changes to the
    ledger's code (None when not a git work tree): a benchmark's child processes import the
    code as it is on disk when they start."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "processors", "schemas", "finops/clients.py",
                               "finops/settings.py"], cwd=root, capture_output=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "uncommitted_ledger_changes": hashlib.sha1(diff).hexdigest()[:12] if diff else None}


def busy_tenant(events: int = 3_000_000, repeats: int = 1, small_tenants: int = 50,
                small_events: int | None = None) -> dict:
    """Issue 13's busy tenant, against a running ``finops run ledger`` child process, on a dedicated broker.

    Phase A (the reference): ``small_tenants`` tenants, ``small_events`` usage events in all
    (default min(events, 1,000,000)), published into the running ledger. Phase B: one
    tenant of the same shape (:func:`tenants_workload`) with ``events`` usage events over
    the 24 h of event time that end now, published into the same running ledger; once half
    of it is committed the ledger is killed with -9 and started again at once (same
    instance id and state dir). Both rates are the ledger's: committed input messages over
    the time it was applying, with the publisher running beside it (it publishes faster
    than the ledger applies, so the ledger is the bottleneck). The ledger's RSS is sampled
    every 0.25 s throughout (and its kernel peak, VmHWM, read). Then the balances and the
    ledger topic of both phases are checked against ``finops fold`` of the same lines.
    ``repeats`` is ignored (one run takes minutes).
    """
    import sys
    import tempfile
    import uuid
    from contextlib import ExitStack

    def log(message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    small_events = min(events, 1_000_000) if small_events is None else small_events
    load_at_start = os.getloadavg()
    code_at_start = _code_version()
    run = uuid.uuid4().hex[:6]
    with ExitStack() as cleanup:
        settings = _bench_broker(cleanup)
        if settings.external_kafka:
            state_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="finops-bench-")))
        else:
            state_dir = Path(settings.data_dir) / "ledger-run"
        committed = CommittedProbe(settings)
        cleanup.callback(committed.close)
        ledgers = [LedgerRun(settings, "busy", state_dir)]
        cleanup.callback(lambda: [ledger.stop() for ledger in ledgers if ledger.alive()])

        log(f"phase A: {small_tenants} small tenants, {small_events:,} usage events in all, published into the "
            f"running ledger")
        small = tenants_workload(small_tenants, small_events, prefix=f"small-{run}")
        phase_a = feed_running_ledger(settings, small, ledgers, committed, log=log)
        log(f"  {phase_a['events_per_s']:,} events/s")
        log(f"phase B: one tenant, {events:,} usage events over the 24 h ending now, published into the running "
            f"ledger, kill -9 at half")
        busy = tenants_workload(1, events, prefix=f"busy-{run}")
        phase_b = feed_running_ledger(settings, busy, ledgers, committed, kill_at=0.5, log=log)
        log(f"  {phase_b['events_per_s']:,} events/s")
        rc = ledgers[-1].stop()
        if rc != 0:
            raise RuntimeError(f"the ledger exited {rc} when stopped: {ledgers[-1].tail()}")
        log("checking balances and the ledger topic against finops fold of the same lines")
        check_b = check_against_fold(settings, busy)
        check_a = check_against_fold(settings, small)
    restart = phase_b.get("restart", {})
    max_rss_kb = max(max(r.max_rss_kb, r.peak_rss_kb) for r in ledgers)
    return {
        "benchmark": "busy-tenant",
        "what": "issue 13: one busy tenant published into a running `finops run ledger` (a child process), kill -9 "
                "at half and restart, vs 50 small tenants of the same shape published into it in the same run; RSS "
                "of the ledger process sampled every 0.25 s; balances and ledger topic checked against finops fold",
        "events": events,
        "small_tenants": small_tenants,
        "small_tenants_events": small_events,
        "busy_tenant_events_per_s": phase_b["events_per_s"],
        "small_tenants_events_per_s": phase_a["events_per_s"],
        "ratio": round(phase_b["events_per_s"] / phase_a["events_per_s"], 3),
        "target_ratio": 0.8,
        "max_rss_mb": round(max_rss_kb / 1024),
        "target_max_rss_mb": 1024,
        "changelog_bytes_per_usage_event": phase_b["changelog_bytes_per_usage_event"],
        "target_changelog_bytes_per_usage_event": 100,
        "changelog_disk_bytes_per_usage_event": phase_b["changelog_disk_bytes_per_usage_event"],
        "restart_to_applying_s": restart.get("restart_to_applying_s"),
        "target_restart_to_applying_s": 30,
        "restore_s": restart.get("restore_s"),
        "restored_records": restart.get("restored_records"),
        "killed_at_committed_share": restart.get("committed_share_at_kill"),
        "aborted": sum(r.aborted for r in ledgers),  # per run, as its last metrics line said
        "rejected": check_a["rejected_in_kafka"] + check_b["rejected_in_kafka"],  # on finops.rejected.v1
        "balances_equal_fold": check_b["balances_equal_fold"] and check_a["balances_equal_fold"],
        "exactly_once": check_b["exactly_once"] and check_a["exactly_once"],
        "phases": {"small_tenants": phase_a, "busy_tenant": phase_b},
        "checks": {"busy_tenant": check_b, "small_tenants": check_a},
        "ledger_runs": [{"instance": r.instance, "exit": r.proc.returncode, "max_rss_mb": round(r.max_rss_kb / 1024),
                         "peak_rss_mb": round(r.peak_rss_kb / 1024), "last_metrics": r.metrics,
                         "stderr_tail": list(r.said)[-8:]} for r in ledgers],
        "code": code_at_start,
        "code_changed_during_run": _code_version() != code_at_start,
        "load_avg_at_start": [round(x, 2) for x in load_at_start],
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": _machine(),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
