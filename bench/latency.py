"""Latency benchmarks under a steady usage load, each on a dedicated broker (or one shared
by ``bench all``):

- ``alerts``: from a usage event's publish to its ``zscore_spike`` alert, through the
  ledger processor, finops.spend.v1 and the faust alert processor;
- ``balance-latency``: from a usage event's publish to the first record on
  finops.balances.v1 for its account that reflects it, through a ``finops run ledger``
  child process.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from finops.schemas.wire import format_time

from .common import latency_ms, load_avg, machine, now_iso
from .kafka import LedgerRun, bench_broker

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

    from finops import clients
    from finops.demo import wait_for
    from finops.pipeline import Pipeline
    from finops.producers.publish import publish_lines
    from finops.schemas import topics

    tenants = 10
    per_tenant = max(accounts // tenants, 1)
    hourly_credits = events / (tenants * per_tenant) * 3600 * 0.01  # live usage is 0.01 credits per event
    now = datetime.now(timezone.utc)
    hour0 = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=30)

    def names():
        for t in range(tenants):
            for a in range(per_tenant):
                yield f"bench-t{t}", f"u{a}"

    setup = funded_users([f"bench-t{t}" for t in range(tenants)], per_tenant, format_time(hour0))
    history = []
    for h in range(30):  # the hours before now's hour: 6 requests an hour, steady spend with 10 % noise
        for tenant, account in names():
            for n in range(6):
                ts = hour0 + timedelta(hours=h, minutes=n * 10 + 1)
                credits = hourly_credits / 6 * (1 + 0.1 * ((h * 7 + n * 3 + len(account)) % 5 - 2) / 2)
                history.append({"type": "usage", "id": f"h-{account}-{h}-{n}", "tenant_id": tenant,
                                "ts": format_time(ts), "account_id": account, "api_key_id": "k", "model_name": "m",
                                "operation_type": "chat", "units_consumed": 1, "credits_consumed": f"{credits:.6f}"})
    encode = msgspec.json.encode
    with ExitStack() as cleanup:
        settings = bench_broker(cleanup)
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
                    "ts": format_time(datetime.now(timezone.utc)), "account_id": account, "api_key_id": "k",
                    "model_name": "m", "operation_type": "chat", "units_consumed": 1, "credits_consumed": "0.01"}),
                    tenant.encode())
            sent += events // 10
            producer.poll(0)
            if time.time() >= next_spike and len(published) < len(spike_accounts):
                tenant, account = spike_accounts[len(published)]
                producer.produce(topics.USAGE, encode({
                    "type": "usage", "id": f"spike-{account}", "tenant_id": tenant,
                    "ts": format_time(datetime.now(timezone.utc)), "account_id": account, "api_key_id": "k",
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
        "latency_ms": latency_ms(latencies),
        "target_p99_ms": 1000,
        "ledger_transactions": ledger_stats.transactions,
        "machine": machine(),
        "at": now_iso(),
    }


def _group_caught_up(settings, group: str, topic: str) -> bool:
    """Has consumer group ``group`` committed every message of ``topic``?"""
    from confluent_kafka import TopicPartition

    from finops import clients

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


# ----------------------------------------------------------------------------- balance latency


class _BalanceSeen(msgspec.Struct):
    tenant_id: str
    account_id: str
    consumed_micros: int


def funded_users(tenants: list[str], per_tenant: int, ts: str) -> list[dict]:
    """Each tenant buys 10^9 credits and opens ``per_tenant`` user accounts ``u0``, ``u1``, ...
    under its pool (wire-v1 commands as dicts, all at ``ts``)."""
    setup: list[dict] = []
    for tenant in tenants:
        setup.append({"type": "purchase", "id": "buy", "tenant_id": tenant, "ts": ts, "credits": 10 ** 9})
        setup.extend({"type": "open_account", "id": f"open-u{a}", "tenant_id": tenant, "ts": ts,
                      "account_id": f"u{a}", "kind": "user", "parent_id": tenant} for a in range(per_tenant))
    return setup


_WARMUP_S = 2.0  # balance-latency: publish seconds left out of the steady figures


def balance_latency(events: int = 10_000, repeats: int = 1, seconds: float = 60.0, tenants: int = 10,
                    accounts: int = 200) -> dict:
    """Latency from a usage event's publish to its account's balance, under a steady ``events``/s load.

    On a dedicated broker, ``tenants`` tenants buy credits and open ``accounts`` user
    accounts in all (funded by the tenant pool); a ``finops run ledger`` child process
    folds them. Then this process publishes usage of 0.01 credits each, round-robin over the
    accounts with event time now, at ``events`` per second for ``seconds``, and a consumer
    (read_committed) follows finops.balances.v1 from its end. A usage's latency is the time
    from its publish (the produce call) until the first balance record of its account whose
    ``consumed`` includes it (the account's n-th usage is reflected once consumed reaches n x
    0.01 credits) arrives. Every usage is measured; ``unmatched`` counts those whose balance
    did not arrive within 60 s of the end. ``repeats`` is ignored.
    """
    import collections
    import tempfile
    import threading
    import uuid

    from confluent_kafka import TopicPartition

    from finops import clients
    from finops.producers.publish import publish_lines
    from finops.schemas import topics

    from .kafka import CommittedProbe

    per_usage = 10_000  # micro-credits: "0.01"
    run = uuid.uuid4().hex[:6]
    per_tenant = max(accounts // tenants, 1)
    names = [(f"lat-{run}-{t}", f"u{a}") for t in range(tenants) for a in range(per_tenant)]
    start = datetime.now(timezone.utc) - timedelta(minutes=1)
    setup = funded_users([f"lat-{run}-{t}" for t in range(tenants)], per_tenant, format_time(start))
    encode = msgspec.json.encode
    load_at_start = load_avg()
    with ExitStack() as cleanup:
        settings = bench_broker(cleanup)
        state_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="finops-bench-")))
        publish_lines(settings, [encode(m) for m in setup], validate=False)
        committed = CommittedProbe(settings)
        cleanup.callback(committed.close)
        ledger = LedgerRun(settings, "latency", state_dir)
        cleanup.callback(lambda: ledger.stop() if ledger.alive() else None)
        ends = sum(clients.input_ends(settings).values())
        deadline = time.monotonic() + 120
        while committed() < ends:
            if not ledger.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the ledger did not fold the accounts' setup: {ledger.tail()}")
            time.sleep(0.1)

        # account -> (consumed micros that reflect a usage, its publish time), oldest first
        pending: dict[tuple[str, str], collections.deque] = {key: collections.deque() for key in names}
        latencies: list[tuple[float, float]] = []  # (publish time, latency), monotonic seconds
        records = 0
        listening = threading.Event()
        stop = threading.Event()

        def listen() -> None:
            nonlocal records
            decode = msgspec.json.Decoder(_BalanceSeen).decode
            consumer = clients.consumer(settings, f"{settings.group_prefix}-latency")
            parts = [TopicPartition(topics.BALANCES, p) for p in range(settings.topic_partitions)]
            for tp in parts:  # from the end now: this run's records after the setup
                tp.offset = consumer.get_watermark_offsets(tp, timeout=10)[1]
            consumer.assign(parts)
            listening.set()
            try:
                while not stop.is_set():
                    for m in consumer.consume(1000, 0.05):
                        if m.error() or m.value() is None:
                            continue
                        arrived = time.monotonic()
                        records += 1
                        b = decode(m.value())
                        waiting = pending.get((b.tenant_id, b.account_id))
                        while waiting and waiting[0][0] <= b.consumed_micros:
                            sent_at = waiting.popleft()[1]
                            latencies.append((sent_at, arrived - sent_at))
            finally:
                consumer.close()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        if not listening.wait(30):
            raise RuntimeError("the balance consumer did not start")
        producer = clients.producer(settings, **{"linger.ms": 5})
        consumed = {key: 0 for key in names}
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            tick = time.monotonic()
            for _ in range(events // 10):  # a tenth of a second's worth
                key = names[sent % len(names)]
                tenant, account = key
                consumed[key] += per_usage
                value = encode({"type": "usage", "id": f"lat-{run}-{sent}", "tenant_id": tenant,
                                "ts": format_time(datetime.now(timezone.utc)), "account_id": account,
                                "api_key_id": "k", "model_name": "m", "operation_type": "chat", "units_consumed": 1,
                                "credits_consumed": "0.01"})
                pending[key].append((consumed[key], time.monotonic()))
                clients.produce(producer, topics.USAGE, value, tenant.encode())
                sent += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        achieved = sent / (time.monotonic() - started)
        if producer.flush(30):
            raise RuntimeError("usage events not delivered within 30 s")
        wait_until = time.monotonic() + 60
        while any(pending.values()) and time.monotonic() < wait_until:
            if not ledger.alive():
                raise RuntimeError(f"the ledger exited ({ledger.proc.returncode}): {ledger.tail()}")
            time.sleep(0.2)  # a missing balance is reported below, not waited for forever
        stop.set()
        listener.join(10)
        unmatched = sum(len(q) for q in pending.values())
        last = dict(ledger.metrics)
        peak_rss_kb = max(ledger.peak_rss_kb, ledger.max_rss_kb)
        rc = ledger.stop()
        if rc != 0:
            raise RuntimeError(f"the ledger exited {rc} when stopped: {ledger.tail()}")
    if not latencies:
        raise RuntimeError(f"no balance record reflected a usage ({records} balance records read)")
    # The first seconds are the ledger's warm-up (its first transactions open the tenants'
    # state and prune their id memories): reported apart, the steady figures after them.
    warmup = [lat for at, lat in latencies if at - started < _WARMUP_S]
    steady = sorted(lat for at, lat in latencies if at - started >= _WARMUP_S)
    return {
        "benchmark": "balance-latency",
        "what": "latency from a usage event's publish to the first finops.balances.v1 record of its account that "
                "reflects it (read_committed consumer), through a `finops run ledger` child process, under steady "
                "usage load",
        "target_events_per_s": events,
        "achieved_events_per_s": round(achieved),
        "seconds": seconds,
        "accounts": len(names),
        "usage_events": sent,
        "measured": len(latencies),
        "unmatched": unmatched,
        "balance_records": records,
        "latency_ms": latency_ms(steady),
        "warmup_s": _WARMUP_S,
        "latency_ms_in_warmup": latency_ms(sorted(warmup)) if warmup else None,
        "ledger": {"last_metrics": last, "peak_rss_mb": round(peak_rss_kb / 1024)},
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": load_avg(),
        "machine": machine(),
        "at": now_iso(),
    }
