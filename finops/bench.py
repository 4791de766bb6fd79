"""Benchmarks, each writing one JSON document. Speed lives here, never in timed tests.

``fold``: usage events per second through the pure ledger with a 4-level cascade
(user -> team -> org -> tenant: only the tenant pool has credits, so every usage climbs
all four levels), decode from bytes included. In the same run it measures decode alone
and the ledger alone on decoded messages, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

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


def ledger(events: int = 200_000, repeats: int = 1, tenants: int = 50) -> dict:
    """The exactly-once ledger processor against a raw consumer, on the same broker and topics.

    Starts a dedicated local broker (fresh topics) unless FINOPS_KAFKA_BOOTSTRAP is set,
    publishes ``tenants`` tenants' commands and ``events`` usage events, then measures:
    raw confluent-kafka consume+decode of the input topics, and the ledger processor from
    its first applied batch until every input offset is committed with its outputs.
    """
    import tempfile
    import uuid
    from contextlib import ExitStack

    from . import clients, stack
    from .processors.runner import LedgerProcessor
    from .producers.publish import publish_lines
    from .producers.workload import generate
    from .settings import load

    base = load()
    with ExitStack() as cleanup:
        if base.external_kafka:
            settings = base
        else:
            data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="finops-bench-")))
            settings = base.model_copy(update={"data_dir": data_dir, "kafka_port": stack.free_port_pair()})
            stack.up(settings, log=lambda _m: None)
            cleanup.callback(stack.down, settings, log=lambda _m: None)
        settings = settings.model_copy(update={"group_prefix": f"bench-{uuid.uuid4().hex[:8]}"})
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
