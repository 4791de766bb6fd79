"""What each step of the usage fast path costs, in microseconds of one core per usage event.

The steps of a usage through the ledger (decode -> dedup -> cascade draw -> ledger entry ->
encode -> produce), each timed alone on the ``fold`` benchmark's workload (4-level
cascade, credits only at the root) in one run, so they can be compared with each other
and with ``ledger_only`` (the whole fold step, decoded messages in):

* ``decode``: ``wire.decode`` of the bytes;
* ``dedup``: the content fingerprint (canonical encoding + BLAKE2b) and the id memory's
  lookup and insert;
* ``cascade_draw``: planning which grants pay, up the fallback chain (``_cascade``);
* ``entry``: building the ``consume`` ledger entry;
* ``encode``: encoding it to JSON (what the processor produces);
* ``produce``: handing the bytes to librdkafka (``Producer.produce`` into its local queue;
  no broker: the call's own cost);
* ``apply_rest``: the rest of the fold step (charge, budget periods, spend, touched
  accounts, clock): ``ledger_only`` less dedup, cascade draw and entry.
"""

from __future__ import annotations

import time
from typing import Callable

from finops.processors import ledger
from finops.processors.ledger import Ledger
from finops.processors.plan import _encoder
from finops.processors.state import MemoryIds
from finops.schemas import outputs, wire
from finops.schemas.money import Micros


def _us(run: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / count * 1e6


def fast_path_steps(lines: list[bytes]) -> dict:
    """Per-step µs per usage event over ``lines`` (a ``cascade_workload``: 4 setup lines, then usage)."""
    setup, usage_lines = lines[:4], lines[4:]
    count = len(usage_lines)
    messages = [wire.decode(line) for line in usage_lines]

    setup_ledger = Ledger()
    for line in setup:
        setup_ledger.handle(wire.decode(line), line)
    state = setup_ledger.tenants["bench"]
    charged = state.accounts["user"]

    def decode() -> None:
        for line in usage_lines:
            wire.decode(line)

    def dedup() -> None:
        ids = MemoryIds()
        fingerprint = ledger.fingerprint
        for m in messages:
            if ids.get(m.id) is None:
                ids[m.id] = (fingerprint(m), 0.0)

    def cascade_draw() -> None:
        cascade = ledger._cascade
        for m in messages:
            cascade(state, charged, int(m.credits_consumed), m.ts)

    entries: list[outputs.LedgerEntry] = []

    def entry() -> None:
        entries.clear()
        for n, m in enumerate(messages):
            entries.append(outputs.LedgerEntry(
                entry_id=f"{m.id}#0", kind=outputs.CONSUME, tenant_id=m.tenant_id, account_id="bench",
                cause_id=m.id, cause_type="usage", ts=m.ts, amount_micros=12_500, balance_micros=n,
                amount=Micros(12_500), balance=Micros(n), charged_to="user", grant_id="buy",
                model_name=m.model_name, operation_type=m.operation_type, api_key_id=m.api_key_id,
                usage_labels=m.usage_labels or None))

    encoded: list[bytes] = []

    def encode() -> None:
        encoded.clear()
        for e in entries:
            encoded.append(_encoder.encode(e))

    def produce() -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": "127.0.0.1:9", "linger.ms": 60_000, "log_level": 0,
                             "queue.buffering.max.messages": 2 * count + 10, "compression.type": "lz4"})
        send = producer.produce
        started = time.perf_counter()
        for value in encoded:
            send("finops.ledger.v1", value, b"bench", partition=0)
        elapsed = time.perf_counter() - started
        producer.purge()
        produce.elapsed = elapsed  # type: ignore[attr-defined]

    def whole_fold_step() -> None:
        fresh = Ledger()
        for line in setup:
            fresh.handle(wire.decode(line), line)
        for m, line in zip(messages, usage_lines):
            fresh.handle(m, line)

    steps = {"decode": _us(decode, count), "dedup": _us(dedup, count), "cascade_draw": _us(cascade_draw, count),
             "entry": _us(entry, count), "encode": _us(encode, count)}
    produce()
    steps["produce"] = produce.elapsed / count * 1e6  # type: ignore[attr-defined]
    ledger_only = _us(whole_fold_step, count)
    steps["apply_rest"] = max(ledger_only - steps["dedup"] - steps["cascade_draw"] - steps["entry"], 0.0)
    return {
        "what": "µs of one core per usage event, each step timed alone in one run (bench/steps.py)",
        "us_per_event": {name: round(value, 3) for name, value in steps.items()},
        "ledger_only_us": round(ledger_only, 3),
        "decode_plus_ledger_us": round(steps["decode"] + ledger_only, 3),
    }
