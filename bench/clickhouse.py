"""ClickHouse benchmarks: ``reports`` (every report on generated ledger rows) and ``sink``
(the sink's write path, no Kafka), each on a fresh embedded ClickHouse (chdb)."""

from __future__ import annotations

import functools
import statistics
import time
from datetime import datetime, timedelta, timezone

import msgspec

from finops.schemas import wire

from .common import machine, ms, now_iso, timed


def _bench_client(tmp: str):
    """A fresh embedded ClickHouse (chdb) in ``tmp`` with every migration applied."""
    from finops.projections import clickhouse
    from finops.settings import Settings

    return clickhouse.connect(Settings(clickhouse_url=f"chdb://{tmp}/clickhouse", clickhouse_database="bench"))


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
        "sql_only_ms": ms([timed(lambda: reader.query(reports_mod.sql_text("forecast"), params.sql_parameters()))[0]
                            for _ in range(repeats)]),
        "daily_spend_sql_ms": ms([timed(lambda: reader.query(reports_mod.sql_text("daily-spend"),
                                                               history.sql_parameters()))[0] for _ in range(repeats)]),
        "holt_python_ms": ms([timed(holt)[0] for _ in range(repeats)]),
        "series_fitted": len(rows),
    }


def reports(events: int = 10_000_000, repeats: int = 3, chunk: int = 2_000_000, tenant: str = "tenant-07") -> dict:
    """Every report on ``events`` usage-caused ledger rows (and as many usage_events rows)
    spread over 50 tenants and 90 days ending yesterday, generated inside ClickHouse."""
    import tempfile

    from finops.projections import reports as reports_mod
    from finops.projections.query import LocalReader

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
                    seconds, report = timed(functools.partial(reports_mod.run, reader, name, params, today))
                    runs.append(seconds)
                    engine.append(timed(functools.partial(reader.raw, sql, sql_parameters, fmt="Native"))[0])
                timings[scope][name] = {**ms(runs), "rows": len(report.rows), "engine_ms": ms(engine)["median"]}
            forecast[scope] = _forecast_breakdown(reader, reports_mod, resolved, repeats)
            forecast[scope]["total_ms"] = timings[scope]["forecast"]["median"]
        machine_info = machine(client)
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
        "machine": machine_info,
        "at": now_iso(),
    }


def _sink_messages(events: int) -> tuple[list[bytes], list[bytes]]:
    """``events`` ledger entries and ``events`` usage messages as they arrive from Kafka:
    a generated 50-tenant workload, its usage lines as published and the entries its fold
    makes, encoded as the ledger processor encodes them."""
    from finops.processors.fold import FoldResult
    from finops.producers.workload import generate
    from finops.schemas import outputs

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

    from finops.projections import sink as sink_mod
    from finops.schemas import topics
    from finops.service import tune_gc

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

    def checkpoints_of(batch) -> list:
        checkpoints: dict[tuple[str, int], sink_mod.SinkCheckpoint] = {}
        for topic, partition, offset, value in batch:  # as Sink.step does
            s = checkpoints.get((topic, partition))
            if s is None:
                s = checkpoints[(topic, partition)] = sink_mod.SinkCheckpoint(topic, partition, offset, offset)
            s.last = offset
            row = tables[topic].build(value, partition, offset)
            if row is not None:
                s.rows.append(row)
        return list(checkpoints.values())

    def through_sink(writer, consumed) -> tuple[float, float, int]:
        build_s = write_s = 0.0
        rows = 0
        for batch in consumed:
            started = time.perf_counter()
            checkpoints = checkpoints_of(batch)
            built = time.perf_counter()
            writer._write_once(checkpoints)
            write_s += time.perf_counter() - built
            build_s += built - started
            rows += sum(len(s.rows) for s in checkpoints)
        return build_s, write_s, rows

    def raw_only(client, consumed) -> tuple[float, int]:
        prepared = [(tables[s.topic].name, sink_mod.encode_rows(s.rows), s.token, len(s.rows))
                    for batch in consumed for s in checkpoints_of(batch)]
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
        machine_info = machine(client)
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
        "machine": machine_info,
        "at": now_iso(),
    }
    result["ratio_vs_raw_insert"] = {name: round(result["rows_per_s"][name]["median"]
                                                 / result["raw_insert_rows_per_s"][name]["median"], 3)
                                     for name in phases}
    return result
