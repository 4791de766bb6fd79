"""``fold``: usage events per second through the pure ledger with a 4-level cascade
(user -> team -> org -> tenant: only the tenant pool has credits, so every usage climbs
all four levels), decode from bytes included. In the same run it measures decode alone
and the ledger alone on decoded messages, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec

from finops.processors.fold import FoldResult
from finops.processors.ledger import Ledger
from finops.schemas import wire
from finops.schemas.wire import format_time

from .common import machine, now_iso, rate
from .steps import fast_path_steps


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
        ts = format_time(t0 + timedelta(milliseconds=n))
        lines.append(encode({
            "type": "usage", "id": f"req-{n}", "tenant_id": "bench", "ts": ts, "account_id": "user",
            "api_key_id": "key-1", "model_name": "gpt-4o", "operation_type": "chat", "units_consumed": 1200,
            "credits_consumed": "0.0125", "usage_labels": {"team": "search", "env": "prod"}}))
    return lines


def fold(events: int = 200_000, repeats: int = 3) -> dict:
    """Usage events per second through the pure ledger (``finops fold``'s code, no Kafka) over a
    4-level cascade, decoding included, and apart: the ledger alone and the decode alone (the
    median of ``repeats`` runs each). Raises RuntimeError when the fold's result is wrong."""
    lines = cascade_workload(events)

    def full() -> None:
        result = FoldResult()
        for line in lines:
            result.feed(line)

    decoded = [(wire.decode(line), line) for line in lines]

    def ledger_only() -> None:
        ledger = Ledger()
        for message, raw in decoded:
            ledger.handle(message, raw)

    def decode_only() -> None:
        for line in lines:
            wire.decode(line)

    check = FoldResult()
    for line in lines:
        check.feed(line)
    user = check.ledger.tenants["bench"].accounts["user"]
    if user.consumed != events * 12_500 or check.rejected:
        raise RuntimeError("the benchmark folded wrongly")

    result = {
        "benchmark": "fold",
        "what": "usage events/s through the pure ledger, 4-level cascade, decode from bytes included",
        "events": events,
        "fold": rate(full, len(lines), repeats),
        "ledger_only": rate(ledger_only, len(lines), repeats),
        "decode_only": rate(decode_only, len(lines), repeats),
        "steps": fast_path_steps(lines),
        "target_events_per_s": 300_000,
        "target_fold_vs_decode_ratio": 0.45,
        "machine": machine(),
        "at": now_iso(),
    }
    result["fold_vs_decode_ratio"] = round(result["fold"]["events_per_s"] / result["decode_only"]["events_per_s"], 3)
    return result
