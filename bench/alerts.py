"""``alert-rate``: spend records per second through the faust alert processor.

The alert processor's input is ``finops.spend.v1`` (a few records per account per second at
most, whatever the usage rate), so its rate is counted in spend records, not usage events.
This benchmark publishes spend records straight to that topic, skipping the ledger, and
times ``finops run alerts`` (a child process) folding them: the judge, the
``alert-profiles`` table and its changelog, and the alerts it sends.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .common import load_avg, machine, now_iso
from .kafka import bench_broker

PER_HOUR = 10  # spend records per account per event-time hour (the ledger sums each account's hour)


def spend_records(accounts: int, start: int, count: int, hour0: datetime) -> list[tuple[bytes, bytes]]:
    """``count`` ``finops.spend.v1`` records as (key, value), the ``start``-th on: account ``i % accounts``
    gets its ``i // accounts``-th record, ``PER_HOUR`` an event-time hour from ``hour0`` on, spend
    steady with a little noise (micro-credits), credits available falling, a window ending in 60 days."""
    import msgspec

    from finops.schemas import outputs

    encode = msgspec.json.Encoder().encode
    window_end = hour0 + timedelta(days=60)
    records = []
    for i in range(start, start + count):
        a, k = i % accounts, i // accounts
        tenant, account = f"bench-t{a % 10}", f"u{a}"
        hour = hour0 + timedelta(hours=k // PER_HOUR)
        spent = 1_000_000 + 50_000 * ((i * 7) % 5)
        record = outputs.Spend(tenant_id=tenant, account_id=account, hour=hour, spent_micros=spent, requests=10,
                               ts=hour + timedelta(minutes=6 * (k % PER_HOUR)),
                               available_micros=10 ** 12 - k * spent, granted_micros=10 ** 12, period="",
                               window_end=window_end)
        records.append((outputs.balance_key(tenant, account).encode(), encode(record)))
    return records


def alert_rate(events: int = 50_000, repeats: int = 3, accounts: int = 200, worker: list[str] | None = None) -> dict:
    """Spend records per second through ``finops run alerts`` on the local broker.

    On a dedicated broker (or ``bench all``'s): the alert processor starts as a child process
    and folds one record per account (it has joined its group once it committed them); then,
    ``repeats`` times, ``events`` records for ``accounts`` accounts (10 tenants), ``PER_HOUR``
    per account and event-time hour, are published at once and timed from the first publish
    until the ``alert-profiles`` changelog holds one record more per input record (the agent
    writes its table once per record). Event time goes on from run to run, so hours close and
    the z-score history fills as in steady operation. ``worker`` is the command of the
    alert processor to time (default: this checkout's ``finops run alerts --no-supervise``);
    it gets the broker and group prefix in FINOPS_KAFKA_BOOTSTRAP and FINOPS_GROUP_PREFIX.
    """
    from confluent_kafka import TopicPartition

    from finops import clients
    from finops.demo import wait_for
    from finops.errors import FinopsError
    from finops.schemas import topics
    from finops.waiting import group_active

    from .latency import _group_caught_up

    hour0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=30)
    with ExitStack() as cleanup:
        settings = bench_broker(cleanup)
        group = f"{settings.group_prefix}-alerts"
        env = {**os.environ, "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap, "FINOPS_GROUP_PREFIX": settings.group_prefix,
               "FINOPS_DATA_DIR": str(settings.data_dir)}
        faust_log = Path(settings.data_dir) / f"{group}.log"
        command = worker or [sys.executable, "-m", "finops.cli", "run", "alerts", "--no-supervise"]
        process = subprocess.Popen(command, env=env, stdout=faust_log.open("w"), stderr=subprocess.STDOUT)
        cleanup.callback(lambda: (process.send_signal(signal.SIGTERM), process.wait(60)))
        producer = clients.producer(settings, **{"linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
        cleanup.callback(producer.flush, 30)

        def publish(records: list[tuple[bytes, bytes]]) -> None:
            for key, value in records:
                while True:
                    try:
                        producer.produce(topics.SPEND, value, key)
                        break
                    except BufferError:
                        producer.poll(0.01)
            producer.flush(60)

        admin = clients.admin(settings)

        def running() -> None:
            if process.poll() is not None or "Crashed" in faust_log.read_text():
                raise RuntimeError("the alert processor failed: " + faust_log.read_text()[-2000:])

        def changelog_made() -> str | None:
            running()
            meta = admin.list_topics(timeout=10).topics
            return next((t for t, m in meta.items() if t.startswith(group) and t.endswith("alert-profiles-changelog")
                         and len(m.partitions) == settings.topic_partitions), None)

        def joined() -> bool:
            running()
            return _group_caught_up(settings, group, topics.SPEND)

        try:
            # Records that reach faust before its changelog topic's metadata crash its agent
            # (PartitionsMismatch): the first ones go once the topic is there and the group has a member.
            wait_for(lambda: changelog_made() is not None, timeout=300, what="the alert processor's changelog topic")
            changelog = changelog_made()
            wait_for(lambda: group_active(settings, group), timeout=300, what="the alert processor to join")
            time.sleep(3.0)
            sent = accounts
            publish(spend_records(accounts, 0, accounts, hour0))
            wait_for(joined, timeout=300, what="the alert processor to fold the first records")
        except FinopsError as exc:
            raise RuntimeError(f"{exc}; the alert processor said: {faust_log.read_text()[-2000:]}") from None
        probe = clients.consumer(settings, f"{settings.group_prefix}-probe")
        cleanup.callback(probe.close)
        partitions = [TopicPartition(changelog, p) for p in range(settings.topic_partitions)]

        def changelog_end() -> int:
            return sum(probe.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in partitions)

        rates = []
        for _ in range(repeats):
            records = spend_records(accounts, sent, events, hour0)
            target = changelog_end() + events
            started = time.perf_counter()
            publish(records)
            deadline = time.monotonic() + 600
            while changelog_end() < target:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the alert processor did not fold the records: " + faust_log.read_text()[-2000:])
                time.sleep(0.02)
            rates.append(events / (time.perf_counter() - started))
            sent += events
    return {
        "benchmark": "alert-rate",
        "what": "finops.spend.v1 records per second through `finops run alerts` (faust: the judge, the "
                "alert-profiles table and its changelog, the alerts), from the first publish until the table's "
                "changelog holds a record per input record",
        "records": events,
        "accounts": accounts,
        "records_per_s": round(statistics.median(rates)),
        "runs": [round(r) for r in rates],
        "load_avg": load_avg(),
        "machine": machine(),
        "at": now_iso(),
    }
