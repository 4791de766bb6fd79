"""Kafka benchmarks, each on a dedicated broker (or one shared by ``bench all``):

- ``ledger``: the exactly-once ledger processor against a raw confluent-kafka consumer;
- ``sdk``: ``UsageProducer.send`` against a raw confluent-kafka producer;
- ``busy-tenant``: one busy tenant published into a running ``finops run ledger`` (a child
  process), kill -9 at half and restart, against 50 small tenants; checked against the fold;
- ``ledger-memory``: the peak RSS of a ``finops run ledger`` child folding 100,000 accounts.

The helpers for a ledger child process (:class:`LedgerRun`, :class:`CommittedProbe`,
:func:`feed_running_ledger`, :func:`check_against_fold`) are shared with
tests/integration/test_busy_tenant.py.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import msgspec

from finops.schemas import topics, wire

from .common import code_version, load_avg, log, machine, now_iso, rate



def _consume_rate(settings, group: str, expected: int, timeout: float = 300.0) -> float:
    """Raw confluent-kafka floor: read_committed consume + decode of both input topics."""
    from finops import clients

    consumer = clients.consumer(settings, group, **{"fetch.max.bytes": 52_428_800})
    consumer.subscribe(list(topics.INPUTS))
    decode = wire.decode
    seen = 0
    started = None
    counted_from = 0  # the clock starts once the first batch is decoded: it counts what came after
    deadline = time.monotonic() + timeout
    try:
        while seen < expected and time.monotonic() < deadline:
            batch = consumer.consume(20_000, 0.5)  # the ledger's --batch-max: batches alike
            for m in batch:
                if m.error() is None:
                    decode(m.value())
                    seen += 1
            if batch and started is None:
                started, counted_from = time.perf_counter(), seen
        if seen < expected:
            raise RuntimeError(f"raw consumer saw {seen} of {expected} messages")
        return (seen - counted_from) / (time.perf_counter() - started)
    finally:
        consumer.close()


class SharedBroker:
    """One dedicated local broker for the Kafka benchmarks of one ``bench all`` run (a broker
    takes about 15 s to start). Started by the first benchmark that asks for a broker; each
    later one finds every topic deleted and created anew, so it reads none of the earlier
    ones' data. A broker that failed to start fails every later benchmark with the same line."""

    def __init__(self) -> None:
        self.cleanup = ExitStack()
        self.settings = None
        self.error: str | None = None
        self.served = 0

    def fresh(self):
        """Settings of the broker with every topic new: it is started on the first call, its topics
        deleted and created anew on later ones. Raises RuntimeError when it did not start (then on
        every call)."""
        if self.error is not None:
            raise RuntimeError(self.error)
        started = time.monotonic()
        if self.settings is None:
            try:
                self.settings = _start_broker(self.cleanup)
            except Exception as exc:
                self.error = f"the benchmarks' broker did not start: {exc}"
                raise
            log(f"  broker at {self.settings.bootstrap} ready in {time.monotonic() - started:.1f} s")
        elif not self.settings.external_kafka:
            recreate_topics(self.settings)
            log(f"  topics deleted and created anew in {time.monotonic() - started:.1f} s")
        self.served += 1
        return self.settings

    def close(self) -> None:
        """Stop the broker (if this started one) and remove its data."""
        self.cleanup.close()


_shared: SharedBroker | None = None


@contextmanager
def shared_broker():
    """Within this block every benchmark's :func:`bench_broker` is one shared broker."""
    global _shared
    _shared = SharedBroker()
    try:
        yield _shared
    finally:
        shared, _shared = _shared, None
        shared.close()


def _start_broker(cleanup: ExitStack):
    """A dedicated local broker in a temporary data dir (stopped by ``cleanup``), or the
    cluster FINOPS_KAFKA_BOOTSTRAP names; the v1 topics created."""
    import tempfile

    from finops import stack
    from finops.settings import load

    base = load()
    if base.external_kafka:
        stack.up(base, log=lambda _m: None)
        return base
    data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="finops-bench-")))
    settings = base.model_copy(update={"data_dir": data_dir, "kafka_port": stack.free_port_pair()})
    cleanup.callback(stack.down, settings, log=lambda _m: None)
    stack.up(settings, log=lambda _m: None)
    return settings


def recreate_topics(settings, timeout: float = 120.0) -> None:
    """Delete every topic but Kafka's own (the v1 topics, changelogs, the alert processor's)
    and create the v1 topics anew, empty. Only for a benchmark's own local broker."""
    from finops import clients, stack

    admin = clients.admin(settings)
    names = [t for t in admin.list_topics(timeout=10).topics if not t.startswith("__")]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30, request_timeout=30).values():
            future.result()
    deadline = time.monotonic() + timeout
    while set(names) & set(admin.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics were still being deleted after {timeout:g} s")
        time.sleep(0.2)
    while True:  # a name whose deletion is not final yet may still be refused for a moment
        stack.ensure_topics(settings)
        if not {spec.name for spec in topics.ALL} - set(admin.list_topics(timeout=10).topics):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the v1 topics were not created again within {timeout:g} s")
        time.sleep(0.5)
    from confluent_kafka import KafkaException

    names = [spec.name for spec in topics.ALL]
    while True:  # until every partition has its leader and answers (new partitions take a moment)
        meta = admin.list_topics(timeout=10).topics
        led = all(meta[n].error is None and meta[n].partitions and
                  all(p.leader >= 0 and p.error is None for p in meta[n].partitions.values()) for n in names)
        try:
            ends = clients.end_offsets(settings, names) if led else None
        except KafkaException:
            ends = None
        if ends is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the v1 topics created anew had no leader within {timeout:g} s")
        time.sleep(0.2)
    if any(ends.values()):
        raise RuntimeError("a v1 topic created anew is not empty")


def bench_broker(cleanup: ExitStack):
    """Settings for one benchmark, with a fresh group prefix: the shared broker of ``bench all``
    (its topics created anew), or else a dedicated local broker with fresh topics (stopped by
    ``cleanup``), unless FINOPS_KAFKA_BOOTSTRAP names a cluster (the benchmarks read its v1
    topics from the start: give them an empty one)."""
    import uuid

    settings = _shared.fresh() if _shared is not None else _start_broker(cleanup)
    return settings.model_copy(update={"group_prefix": f"bench-{uuid.uuid4().hex[:8]}"})


def ledger(events: int = 200_000, repeats: int = 1, tenants: int = 50) -> dict:
    """The exactly-once ledger processor against a raw consumer, on the same broker and topics.

    Starts a dedicated local broker (fresh topics) unless FINOPS_KAFKA_BOOTSTRAP is set,
    publishes ``tenants`` tenants' commands and ``events`` usage events, then measures:
    raw confluent-kafka consume+decode of the input topics, and the ledger processor from
    its first applied batch until every input offset is committed with its outputs.
    """
    import uuid

    from finops import clients
    from finops.processors.runner import LedgerProcessor
    from finops.producers.publish import publish_lines
    from finops.producers.workload import generate

    with ExitStack() as cleanup:
        settings = bench_broker(cleanup)
        workload = generate(tenants=tenants, usage=events, suffix=f"-{uuid.uuid4().hex[:4]}")
        report = publish_lines(settings, workload.lines, validate=False)
        total = sum(end for end in clients.input_ends(settings).values())
        raw_rate = _consume_rate(settings, f"{settings.group_prefix}-raw", total)

        processor = LedgerProcessor(settings)
        ends = clients.input_ends(settings)
        first = None
        counted_from = 0  # as for the raw consumer: the clock starts once the first batch is committed
        started = time.perf_counter()
        try:
            while not processor.caught_up(ends):
                if processor.step() and first is None:
                    first, counted_from = time.perf_counter(), processor.stats.applied + processor.stats.rejected
                if time.perf_counter() - started > 600:
                    raise RuntimeError("the ledger processor did not catch up in 10 minutes")
            finished = time.perf_counter()
        finally:
            processor.close()
        stats = processor.stats
        ledger_rate = (stats.applied + stats.rejected - counted_from) / (finished - (first or started))
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
            "target_ratio": 0.5,
            "machine": machine(),
            "at": now_iso(),
        }


def sdk(events: int = 200_000, repeats: int = 3, tenants: int = 50) -> dict:
    """The SDK's ``UsageProducer.send`` (fill id and ts, check against wire v1, produce) vs raw
    confluent-kafka ``produce`` of the same events already encoded, on the same broker and
    producer settings, each until every event is acknowledged."""

    from finops import clients
    from finops.producers.usage import UsageProducer

    with ExitStack() as cleanup:
        settings = bench_broker(cleanup)
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

        raw_rate, sdk_rate = rate(raw, events, repeats), rate(with_sdk, events, repeats)
        return {
            "benchmark": "sdk",
            "what": "UsageProducer.send (complete, check, produce, delivered) vs raw confluent-kafka produce of "
                    "pre-encoded events (delivered), same broker and producer settings",
            "broker": settings.bootstrap,
            "events": events,
            "sdk": sdk_rate,
            "raw_produce": raw_rate,
            "ratio": round(sdk_rate["events_per_s"] / raw_rate["events_per_s"], 3),
            "machine": machine(),
            "at": now_iso(),
        }


# ----------------------------------------------------------------------------- busy tenant
#
# Issue 13's acceptance: one busy tenant published into a running ledger (a `finops run
# ledger` child process), killed with -9 at about half-way and restarted, against 50 small
# tenants of the same shape measured in the same run. The helpers below are shared with
# tests/integration/test_busy_tenant.py (the short version).

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

    from finops.producers.workload import Workload

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
                                 "ts": wire.format_time(t), **fields}))

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
            "type": "usage", "id": f"{prefix}-u{n}", "tenant_id": tenant, "ts": wire.format_time(ts),
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


class ProcessorRun:
    """One ``finops run PARTS --no-supervise --metrics-every 1`` child process.

    Reads its stderr as it comes (each metrics line parsed: ``last[part]`` is the last
    object of each processor, ``aborted`` the most any ledger line said) and samples its
    RSS from /proc every 0.25 s (``max_rss_kb``, ``rss_kb`` the latest; ``peak_rss_kb`` is
    the kernel's VmHWM, which misses no peak between samples). ``data_dir`` holds its state
    (FINOPS_DATA_DIR); ``env``: more FINOPS_* settings for it.
    """

    def __init__(self, settings, parts: tuple[str, ...], *, data_dir: Path, instance: str = "0",
                 options: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        import collections
        import subprocess
        import sys
        import threading

        self.settings, self.parts, self.instance, self.data_dir = settings, parts, instance, data_dir
        self.options, self.env = options, dict(env or {})
        child_env = {**os.environ, "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap,
                     "FINOPS_GROUP_PREFIX": settings.group_prefix, "FINOPS_DATA_DIR": str(data_dir), **self.env}
        args = [sys.executable, "-m", "finops.cli", "run", *parts, "--no-supervise", "--instance", instance,
                "--metrics-every", "1", *options]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.last: dict[str, dict] = {}
        self.metrics_at = 0.0  # monotonic time the last metrics line arrived
        self.aborted = 0
        self.rss_kb = 0
        self.max_rss_kb = 0
        self.peak_rss_kb = 0
        self.said: collections.deque[str] = collections.deque(maxlen=40)  # its other stderr lines
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def metrics(self) -> dict:
        """The ledger's last metrics object ({} before the first)."""
        return self.last.get("ledger", {})

    def _read(self) -> None:
        import json

        for line in self.proc.stderr:
            if line.startswith("{"):
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = {}
                found = {part: parsed[part] for part in self.parts if isinstance(parsed.get(part), dict)}
                if found:
                    with self._lock:
                        self.last = {**self.last, **found}
                        self.metrics_at = time.monotonic()
                        self.aborted = max(self.aborted, found.get("ledger", {}).get("aborted", 0))
                    continue
            self.said.append(line.rstrip())

    def _sample(self) -> None:
        pid = self.proc.pid
        while self.proc.poll() is None:
            kb = _status_kb(pid)
            self.rss_kb = kb.get("VmRSS", self.rss_kb)
            self.max_rss_kb = max(self.max_rss_kb, self.rss_kb)
            self.peak_rss_kb = max(self.peak_rss_kb, kb.get("VmHWM", 0))
            time.sleep(0.25)  # a sampling period, not a wait for a condition

    def alive(self) -> bool:
        """Is the child process still running?"""
        return self.proc.poll() is None

    def metrics_after(self, moment: float, timeout: float = 30.0) -> dict:
        """The first metrics line that arrives after monotonic time ``moment``."""
        deadline = time.monotonic() + timeout
        while self.metrics_at <= moment:
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"no metrics line from {' and '.join(self.parts)} after {timeout:g} s: "
                                   f"{self.tail()}")
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
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
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
        """The child's last stderr lines that were not metrics (up to 40), for error messages."""
        return "\n".join(self.said)


class LedgerRun(ProcessorRun):
    """One ``finops run ledger`` child process (see :class:`ProcessorRun`) with instance id
    ``instance``; ``data_dir`` holds its state stores."""

    def __init__(self, settings, instance: str, data_dir: Path, *, batch_max: int | None = None) -> None:
        self.batch_max = batch_max
        super().__init__(settings, ("ledger",), data_dir=data_dir, instance=instance,
                         options=() if batch_max is None else ("--batch-max", str(batch_max)))

    def again(self) -> LedgerRun:
        """The same instance started anew (same instance id and state directory)."""
        return LedgerRun(self.settings, self.instance, self.data_dir, batch_max=self.batch_max)


class CommittedProbe:
    """Input messages committed by the ledger's consumer group so far (sum over every input partition)."""

    def __init__(self, settings) -> None:
        from confluent_kafka import TopicPartition

        from finops import clients

        self.consumer = clients.consumer(settings, f"{settings.group_prefix}-ledger")
        self.partitions = [TopicPartition(t, p) for t, p in clients.partitions(settings, topics.INPUTS)]

    def __call__(self) -> int:
        from finops import clients

        return sum(max(tp.offset, 0) for tp in clients.committed_offsets(self.consumer, self.partitions, timeout=60))

    def close(self) -> None:
        """Close the probe's consumer (it never joined the group, so the ledger is not disturbed)."""
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


def running_ledger(cleanup, instance: str) -> tuple:
    """On the benchmarks' broker: (settings, a CommittedProbe of the ledger group, [one
    ``finops run ledger`` child with its state in a temporary dir]); all stopped by ``cleanup``."""
    import tempfile

    settings = bench_broker(cleanup)
    state_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="finops-bench-")))
    committed = CommittedProbe(settings)
    cleanup.callback(committed.close)
    ledgers = [LedgerRun(settings, instance, state_dir)]
    cleanup.callback(lambda: [ledger.stop() for ledger in ledgers if ledger.alive()])
    return settings, committed, ledgers


def publish_in_background(settings, lines: list[bytes]):
    """Publish ``lines`` (``finops publish``'s way) in a started daemon thread: (the thread, a
    dict that gets ``report`` or ``error``, then ``at``, the monotonic time it ended)."""
    import threading

    from finops.producers.publish import publish_lines

    published: dict = {}

    def publish() -> None:
        try:
            published["report"] = publish_lines(settings, lines, validate=False)
        except BaseException as exc:  # noqa: BLE001 - the caller re-raises it
            published["error"] = exc
        published["at"] = time.monotonic()

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    return publisher, published


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

    from finops import clients

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
    started = time.monotonic()
    publisher, published = publish_in_background(settings, workload.lines)
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

    from finops import clients
    from finops.processors.fold import fold_lines
    from finops.projections.balances import read_balances
    from finops.schemas import outputs

    wanted = set(workload.tenants)
    fold = fold_lines(workload.lines, keep_outputs=True)
    expected = Counter((e.tenant_id, e.entry_id, e.kind, e.account_id, e.amount_micros, e.balance_micros)
                       for e in fold.outputs if type(e) is outputs.LedgerEntry)
    folded = {(t, a.id): (a.available, a.consumed, a.reserved, a.overage)
              for t in workload.tenants for a in fold.ledger.tenants[t].accounts.values()}
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
    from finops import clients

    name = topics.changelog_name(f"{settings.group_prefix}-ledger")
    partitions = [p for t, p in clients.partitions(settings, [name])]
    records = size = 0
    for m in clients.read_to_end(settings, name, partitions, start=start, timeout=timeout):
        records += 1
        size += len(m.key() or b"") + len(m.value() or b"")
    return {"records": records, "bytes": size}


def changelog_disk_bytes(settings) -> int | None:
    """Bytes of the changelog's partition logs in the local broker's storage (None: not a local broker)."""
    from finops import stack

    if settings.external_kafka:
        return None
    name = topics.changelog_name(f"{settings.group_prefix}-ledger")
    storage = stack._BrokerFiles.of(settings).storage
    return sum(f.stat().st_size for f in storage.glob(f"{name}-*/*.log"))


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
    import uuid

    small_events = min(events, 1_000_000) if small_events is None else small_events
    load_at_start = load_avg()
    code_at_start = code_version()
    run = uuid.uuid4().hex[:6]
    with ExitStack() as cleanup:
        settings, committed, ledgers = running_ledger(cleanup, "busy")

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
        "code_changed_during_run": code_version() != code_at_start,
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": load_avg(),
        "machine": machine(),
        "at": now_iso(),
    }


# ----------------------------------------------------------------------------- ledger memory


def ledger_memory(events: int = 1_000_000, repeats: int = 1, accounts: int = 100_000, users: int = 97) -> dict:
    """The peak RSS of a ``finops run ledger`` child process folding ``accounts`` accounts.

    ``accounts // (users + 3)`` tenants of the busy-tenant shape (:func:`tenants_workload`:
    a tenant pool, an org, a team and ``users`` users each; 100 accounts a tenant by
    default, so 1,000 tenants), their commands and ``events`` usage events round-robin over
    every user, published into the running ledger on a dedicated broker. The ledger's RSS
    is sampled every 0.25 s and its kernel peak (VmHWM) read. ``repeats`` is ignored.
    """
    import uuid

    tenants = max(accounts // (users + 3), 1)
    load_at_start = load_avg()
    with ExitStack() as cleanup:
        settings, committed, ledgers = running_ledger(cleanup, "memory")
        workload = tenants_workload(tenants, events, prefix=f"mem-{uuid.uuid4().hex[:6]}", users=users)
        log(f"  {tenants:,} tenants, {tenants * (users + 3):,} accounts, {workload.command_count:,} commands and "
            f"{events:,} usage events, published into the running ledger")
        fed = feed_running_ledger(settings, workload, ledgers, committed, log=log)
        ledger = ledgers[-1]
        rss_at_end_kb = ledger.rss_kb
        last = dict(ledger.metrics)
        rc = ledger.stop()
        if rc != 0:
            raise RuntimeError(f"the ledger exited {rc} when stopped: {ledger.tail()}")
    return {
        "benchmark": "ledger-memory",
        "what": "peak RSS (VmHWM) of a `finops run ledger` child process folding a workload of 100,000 accounts "
                "published into it; RSS sampled every 0.25 s",
        "accounts": tenants * (users + 3),
        "tenants": tenants,
        "users_per_tenant": users,
        "usage_events": events,
        "commands": workload.command_count,
        "peak_rss_mb": round(max(ledger.peak_rss_kb, ledger.max_rss_kb) / 1024),
        "rss_at_end_mb": round(rss_at_end_kb / 1024),
        "events_per_s": fed["events_per_s"],
        "wall_s": fed["wall_s"],
        "rejected": last.get("rejected"),
        "aborted": ledger.aborted,
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": load_avg(),
        "machine": machine(),
        "at": now_iso(),
    }
