"""Issue 13's busy tenant, short: one tenant's 300,000 usage events published into a running
`finops run ledger` (a child process), kill -9 of the ledger at about half, restart. Every
event is applied exactly once and the balances equal `finops fold` of the same lines.
Speed is measured by `finops bench busy-tenant` (3,000,000 events against 50 small
tenants), not here: the only timing asserted is the acceptance's 30 s from the restart to
applying again; the restore time and the changelog bytes per event are printed."""

from __future__ import annotations

import uuid

import pytest

from bench.kafka import CommittedProbe, LedgerRun, check_against_fold, feed_running_ledger, tenants_workload

pytestmark = pytest.mark.integration

EVENTS = 300_000


def test_busy_tenant_published_into_a_running_ledger_survives_kill_9(settings, tmp_path):
    workload = tenants_workload(1, EVENTS, prefix=f"busy-{uuid.uuid4().hex[:6]}")
    committed = CommittedProbe(settings)
    ledgers = [LedgerRun(settings, "busy", tmp_path / "ledger")]
    try:
        run = feed_running_ledger(settings, workload, ledgers, committed, kill_at=0.5, timeout=200, log=print)
        rc = ledgers[-1].stop()
    finally:
        for ledger in ledgers:
            if ledger.alive():
                ledger.stop()
        committed.close()
    restart = run["restart"]
    print(f"busy tenant, {EVENTS:,} usage events: killed at {restart['committed_share_at_kill']:.0%} committed; "
          f"applying again {restart['restart_to_applying_s']} s after the restart, restore {restart['restore_s']} s "
          f"({restart['restored_records']:,} changelog records); {run['changelog_bytes_per_usage_event']} changelog "
          f"bytes per usage event ({run['changelog_records']:,} records, "
          f"{run['changelog_disk_bytes_per_usage_event']} bytes on disk); {run['events_per_s']:,} events/s; "
          f"ledger RSS at most {max(r.peak_rss_kb for r in ledgers) // 1024} MiB")
    assert rc == 0, ledgers[-1].tail()
    assert [r.proc.returncode for r in ledgers] == [-9, 0], "the ledger was not killed once half-way"

    check = check_against_fold(settings, workload)
    assert check["rejected_by_fold"] == 0 and check["rejected_in_kafka"] == 0, check
    assert check["usage_ids"] == EVENTS and check["usage_ids_without_entries"] == 0, check
    assert check["balances_equal_fold"], check
    assert check["exactly_once"], check
    assert [r.aborted for r in ledgers] == [0, 0], [r.metrics for r in ledgers]
    assert restart["restart_to_applying_s"] <= 30, restart
