"""What `finops run` and `finops alerts tail` call, without Kafka: the supervisor's restart rule
(finops/supervisor.py), the metrics line (finops/metrics.py) and the alert filter shared by the
webhook forwarder and the tail (producers/webhooks.alert_wanted)."""

from __future__ import annotations

import signal
import sys
from types import SimpleNamespace

import pytest

from finops.metrics import PipelineMetrics
from finops.producers.webhooks import alert_wanted
from finops.supervisor import EXIT_CRASH, EXIT_RESTART, supervise


@pytest.fixture
def restore_signals():
    """supervise() installs SIGTERM and SIGINT handlers in this process: put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _child(tmp_path, codes: list[int]) -> list[str]:
    """A child that exits with the next code of ``codes`` on each start (a counter file in tmp_path)."""
    script = ("import pathlib, sys\n"
              f"p = pathlib.Path({str(tmp_path / 'starts')!r})\n"
              "n = int(p.read_text()) if p.exists() else 0\n"
              "p.write_text(str(n + 1))\n"
              f"sys.exit({codes!r}[n])\n")
    return [sys.executable, "-c", script]


class TestSupervise:
    def test_given_a_worker_asking_for_a_restart_then_a_crash_when_supervised_then_it_restarts_until_it_stops(
            self, tmp_path, restore_signals):
        lines: list[str] = []
        rc = supervise(_child(tmp_path, [EXIT_RESTART, EXIT_CRASH, 0]), log=lines.append)
        assert rc == 0
        assert (tmp_path / "starts").read_text() == "3"
        assert lines == [f"processors exited with code {EXIT_RESTART}; restarting in 1 s",
                         f"processors exited with code {EXIT_CRASH}; restarting in 2 s"]

    @pytest.mark.parametrize("final", [1, 2])
    def test_given_an_expected_error_or_bad_usage_when_supervised_then_it_is_final(self, tmp_path, final,
                                                                                   restore_signals):
        lines: list[str] = []
        assert supervise(_child(tmp_path, [final]), log=lines.append) == final
        assert lines == [] and (tmp_path / "starts").read_text() == "1"


class TestMetricsLine:
    def test_given_a_ledger_and_a_sink_then_the_line_has_rates_since_the_last_one(self):
        stats = SimpleNamespace(applied=90, rejected=10, lag=3, last_batch=50, last_txn_ms=12.34, transactions=2,
                                aborted=0, changelog_records=7, changelog_bytes=700, restored_records=0,
                                restore_s=0.0, consume_s=1.0, decode_s=0.5, watermark_s=0.1, apply_s=0.2,
                                commit_s=0.3)
        progress = SimpleNamespace(rows={"usage_events": 40}, batches=1, refused=0, paused_s=0.0)
        pipeline = SimpleNamespace(ledger=SimpleNamespace(stats=stats), sink=SimpleNamespace(progress=progress),
                                   api=None, webhooks=None, notify=None)
        metrics = PipelineMetrics(pipeline)
        first = metrics.line()
        assert set(first) == {"ts", "ledger", "sink"}
        assert first["ledger"]["applied"] == 90 and first["ledger"]["last_txn_ms"] == 12.3
        assert set(first["ledger"]["seconds_by_phase"]) == {"consume_wait", "decode_merge", "of_which_watermarks",
                                                            "apply_produce", "commit"}
        assert first["sink"]["rows"] == {"usage_events": 40}
        second = metrics.line()  # nothing happened since: the rates are 0, the totals stay
        assert second["ledger"]["events_per_s"] == 0 and second["sink"]["rows_per_s"] == 0
        assert second["ledger"]["applied"] == 90


class TestAlertFilter:
    ALERT = {"tenant_id": "acme", "severity": "warning"}

    @pytest.mark.parametrize("tenant, min_severity, wanted", [
        (None, "info", True), ("", "warning", True), ("acme", "warning", True), ("acme", "critical", False),
        ("globex", "info", False),
    ])
    def test_tenant_and_severity(self, tenant, min_severity, wanted):
        assert alert_wanted(self.ALERT, tenant=tenant, min_severity=min_severity) is wanted

    def test_a_missing_or_unknown_severity_ranks_as_info(self):
        assert alert_wanted({"tenant_id": "acme"}, min_severity="info")
        assert not alert_wanted({"tenant_id": "acme", "severity": "loud"}, min_severity="warning")
