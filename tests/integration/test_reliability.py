"""Faults from reliability.md against the real broker: kill -9, zombies, broker restarts,
rebuilds. After each, the balances equal `finops fold` of the same input and the ledger
topic (read_committed) holds every entry exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
import msgspec.json as msgspec_json
from confluent_kafka import TopicPartition

from finops import clients, stack
from finops.demo import fold_differences
from finops.pipeline import Pipeline
from finops.processors.fold import fold_lines
from finops.producers.publish import publish_lines
from finops.producers.workload import generate
from finops.projections.balances import read_balances
from finops.schemas import outputs, topics
from support import wait_until

pytestmark = pytest.mark.integration



def committed(settings, ends: dict) -> int:
    """Input messages committed by the ledger group so far. Committed offsets are read stable:
    while a killed instance's transaction is open they wait for its abort, up to the ledger's
    transaction.timeout.ms (60 s), so the probe waits longer than that."""
    probe = clients.consumer(settings, settings.group("ledger"))
    try:
        tps = clients.committed_offsets(probe, [TopicPartition(t, p) for t, p in ends], timeout=90)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        probe.close()


def ledger_process(settings, instance: str, batch_max: int = 2000, *options: str) -> subprocess.Popen:
    """`finops run ledger` as its own process (unsupervised unless asked: kill -9 hits the processor)."""
    env = {**os.environ, "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap, "FINOPS_GROUP_PREFIX": settings.group_prefix,
           "FINOPS_DATA_DIR": str(settings.data_dir)}
    return subprocess.Popen([sys.executable, "-m", "finops.cli", "run", "ledger", "--instance", instance,
                             "--batch-max", str(batch_max), *(options or ("--no-supervise",))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


def ledger_entries(settings, tenants: list[str]) -> list[tuple]:
    wanted = set(tenants)
    rows = []
    for m in clients.read_to_end(settings, topics.LEDGER, range(settings.topic_partitions)):
        e = outputs.entry_decoder.decode(m.value())
        if e.tenant_id in wanted:
            rows.append((e.tenant_id, e.entry_id, e.kind, e.account_id, e.amount_micros, e.balance_micros))
    return rows


def assert_exactly_once_and_equal_to_fold(settings, workload) -> None:
    latest = {}
    for tenant in workload.tenants:
        latest.update(read_balances(settings, tenant_id=tenant))
    wrong = fold_differences(latest, workload)
    assert not wrong, f"{len(wrong)} accounts differ from the fold (published, folded): {sorted(wrong.items())[:5]}"
    expected = Counter((e.tenant_id, e.entry_id, e.kind, e.account_id, e.amount_micros, e.balance_micros)
                       for e in fold_lines(workload.lines, keep_outputs=True).outputs
                       if isinstance(e, outputs.LedgerEntry))
    got = Counter(ledger_entries(settings, workload.tenants))
    assert got == expected, (f"{sum((got - expected).values())} unexpected or repeated entries, "
                             f"{sum((expected - got).values())} missing")


class TestFaults:
    def test_kill_9_of_one_of_two_instances_mid_run(self, settings):
        """Acceptance: 100k usage events for 50 tenants, 2 instances, one killed with -9 and restarted."""
        workload = generate(tenants=50, usage=100_000, suffix=f"-{uuid.uuid4().hex[:6]}")
        assert publish_lines(settings, workload.lines).failed == 0
        ends = clients.input_ends(settings)
        total = sum(ends.values())
        a, b = ledger_process(settings, "a"), ledger_process(settings, "b")
        try:
            wait_until(lambda: committed(settings, ends) > total * 0.3 or a.poll() is not None, 120,
                       "30 % of the input committed")
            assert a.poll() is None, a.stderr.read()
            a.send_signal(signal.SIGKILL)  # mid-run: its open transaction is aborted
            a.wait(10)
            before = committed(settings, ends)
            restarted = time.monotonic()
            a = ledger_process(settings, "a", 2000, "--no-supervise", "--metrics-every", "1")
            wait_until(lambda: committed(settings, ends) > before or committed(settings, ends) >= total, 60,
                       "the group to apply again after the restart")
            print(f"kill -9 and restart: applying again {time.monotonic() - restarted:.1f} s after the restart "
                  f"(two instances; restore from the changelog or the warm store included)")
            wait_until(lambda: committed(settings, ends) >= total, 180, "every input committed")
        finally:
            rc_a, err_a = stop(a)
            rc_b, err_b = stop(b)
        assert (rc_a, rc_b) == (0, 0), err_a + err_b
        restores = [json.loads(line)["ledger"] for line in err_a.splitlines() if line.startswith('{"ts"')]
        if restores:
            print(f"the restarted instance restored {restores[-1]['restored_records']} changelog records "
                  f"in {restores[-1]['restore_s']} s")
        assert_exactly_once_and_equal_to_fold(settings, workload)

    def test_a_frozen_zombie_is_fenced_and_exits(self, settings):
        workload = generate(tenants=10, usage=20_000, suffix=f"-{uuid.uuid4().hex[:6]}")
        publish_lines(settings, workload.lines)
        ends = clients.input_ends(settings)
        total = sum(ends.values())
        a = ledger_process(settings, "z", batch_max=300)
        b = None
        try:
            wait_until(lambda: committed(settings, ends) > total * 0.1, 120, "A to make progress")
            a.send_signal(signal.SIGSTOP)
            b = ledger_process(settings, "z", batch_max=300)  # same instance id: takes over
            wait_until(lambda: committed(settings, ends) >= total, 180, "B to finish the work")
            a.send_signal(signal.SIGCONT)
            a.wait(60)
            assert a.returncode != 0
            said = a.stderr.read()
            assert "fenced" in said or "lost its partitions" in said, said
        finally:
            if a.poll() is None:
                a.send_signal(signal.SIGCONT)
            stop(a)
            if b is not None:
                rc_b, err_b = stop(b)
                assert rc_b == 0, err_b
        assert_exactly_once_and_equal_to_fold(settings, workload)

    def test_broker_stopped_and_restarted_while_the_processor_runs(self, settings, kafka_settings):
        """The supervised processor waits out the outage (restarting its Kafka clients if they
        get stuck) and resumes without operator help."""
        if kafka_settings.external_kafka:
            pytest.skip("the test session does not own the broker (FINOPS_KAFKA_BOOTSTRAP is set)")
        workload = generate(tenants=5, usage=6000, suffix=f"-{uuid.uuid4().hex[:6]}")
        half = len(workload.lines) // 2
        publish_lines(settings, workload.lines[:half])
        ends = clients.input_ends(settings)
        proc = ledger_process(settings, "r", 2000, "--supervise", "--stuck-after", "15")
        try:
            wait_until(lambda: committed(settings, ends) >= sum(ends.values()), 90, "the first half")
            stack.down(kafka_settings, log=lambda _m: None)
            time.sleep(2)  # the fault itself: the broker is away for a while
            stack.up(kafka_settings, log=lambda _m: None)
            publish_lines(settings, workload.lines[half:])
            ends = clients.input_ends(settings)
            try:
                wait_until(lambda: committed(settings, ends) >= sum(ends.values()), 180,
                           "the second half after the restart")
            except AssertionError as exc:
                _rc, err = stop(proc)
                raise AssertionError(f"{exc}; the processor said: {err[-3000:]}") from exc
        finally:
            rc, err = stop(proc)
        assert rc == 0, err
        assert_exactly_once_and_equal_to_fold(settings, workload)

    def test_rebuild_from_offset_zero_gives_byte_identical_balances(self, settings):
        workload = generate(tenants=3, usage=3000, suffix=f"-{uuid.uuid4().hex[:6]}")
        publish_lines(settings, workload.lines)

        def run_and_read(group_settings) -> dict:
            with Pipeline(group_settings, ("ledger",)) as pipeline:
                ends = clients.input_ends(group_settings)
                wait_until(lambda: pipeline.ledger.caught_up(ends), 60, "the ledger")
            latest = {}
            for m in clients.read_to_end(settings, topics.BALANCES, range(settings.topic_partitions)):
                if any(m.key().startswith(f"{t}/".encode()) for t in workload.tenants):
                    latest[m.key()] = m.value()
            return latest

        first = run_and_read(settings)
        rebuilt = run_and_read(settings.model_copy(update={"group_prefix": settings.group_prefix + "-rebuild"}))
        assert first and rebuilt == first


class TestBadInputThroughKafka:
    def test_refusals_and_late_events_match_the_fold(self, settings):
        """Rows 9-12 and 14 through the broker: overdraft, windows and expiry by event time,
        unreadable input, another tenant's account, a late usage: the rejected topic and the
        balances say exactly what `finops fold` says of the same bytes."""
        from bad_lines import BAD, GOOD

        run = uuid.uuid4().hex[:8]

        def mark(line: str) -> str:  # every tenant, id and unreadable line carries the run
            if not line.startswith("{"):
                return f"{line} {run}"
            return line.replace('"acme"', f'"acme-{run}"').replace('"globex"', f'"globex-{run}"') \
                .replace('"id":"', f'"id":"{run}-')

        t = f'"tenant_id":"acme-{run}"'
        window = [  # row 10 and row 14: a window, its expiry by a tick, a late usage after it
            f'{{"type":"open_account","id":"w1",{t},"ts":"2026-11-01T10:00:01Z","account_id":"ws","kind":"workspace",'
            '"parent_id":"team","fallback":false}',
            f'{{"type":"allocate","id":"w2",{t},"ts":"2026-11-01T10:00:02Z","from_account":"team","to_account":"ws",'
            '"credits":5,"ends_at":"2026-11-02T00:00:00Z"}',
            f'{{"type":"tick","id":"w3",{t},"ts":"2026-11-03T00:00:00Z"}}',
            f'{{"type":"usage","id":"w4",{t},"ts":"2026-11-01T12:00:00Z","account_id":"ws","api_key_id":"k",'
            '"model_name":"m","operation_type":"chat","units_consumed":1,"credits_consumed":1}',
            f'{{"type":"tick","id":"w5",{t},"ts":"2026-11-03T00:00:00Z"}}',  # expiry twice: nothing more
        ]
        first = [mark(x).encode() for x in GOOD[:3]] + [mark(b).encode() for b, _ in BAD] + \
                [mark(x).encode() for x in GOOD[3:]] + [x.encode() for x in window[:3]]
        late = [x.encode() for x in window[3:]]  # sent after the expiry was applied: truly late
        lines = first + late
        with Pipeline(settings, ("ledger",)) as pipeline:
            for part in (first, late):
                assert publish_lines(settings, part, validate=False).failed == 0
                ends = clients.input_ends(settings)
                wait_until(lambda: pipeline.ledger.caught_up(ends), 60, "the ledger")
        got = Counter()
        for m in clients.read_to_end(settings, topics.REJECTED, range(settings.topic_partitions)):
            record = msgspec_json.decode(m.value())
            if run in record["input"]:
                got[(record.get("id"), record["reason"])] += 1
        fold = fold_lines(lines)
        assert got == Counter((r.id, r.reason) for r in fold.rejected)
        assert len(got) >= 20
        tenants = [f"acme-{run}", f"globex-{run}"]
        latest = {}
        for tenant in tenants:
            latest.update(read_balances(settings, tenant_id=tenant))
        expected = {(tn, a.id): (a.available, a.consumed, a.overage)
                    for tn in tenants for a in fold.ledger.tenants[tn].accounts.values()}
        assert {k: (b.available_micros, b.consumed_micros, b.overage_micros) for k, b in latest.items()} == expected
        assert expected[(f"acme-{run}", "ws")] == (0, 1_000_000, 1_000_000)  # late: charged to what is left: nothing
