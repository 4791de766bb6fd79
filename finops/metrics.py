"""The metrics line of ``finops run``: one JSON object per interval on stderr, for people and log
shippers (the HTTP API's Prometheus metrics are ``GET /metrics``, in ``finops/api.py``).

A line has ``ts`` (wall time, RFC 3339, seconds) and one object per running part:

- ``ledger``: ``events_per_s`` (applied + rejected since the last line, per wall second), ``lag``
  (input messages not yet committed), ``last_batch``, ``last_txn_ms``, the running totals of
  :class:`~finops.processors.runner.LedgerStats` and ``seconds_by_phase`` (cumulative wall seconds);
- ``sink``: ``rows_per_s``, ``rows`` per table, ``batches``, ``refused``, ``paused_s``;
- ``serve``: the live view's ``view_lag_ms`` (null before its first record), ``view_records``,
  ``view_refused``, ``tenants``;
- ``webhooks``: the forwarder's delivery counters; ``notify``: the notifier's.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import Pipeline


class PipelineMetrics:
    """Rates since the previous line and the current figures of a running :class:`Pipeline`.

    Rates are per wall-clock second over the time since the previous :meth:`line` (or since
    construction, for the first).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.at = time.monotonic()
        self.applied = 0  # ledger: applied + rejected at the previous line
        self.rows = 0  # sink: rows written at the previous line

    def line(self) -> dict[str, Any]:
        """The next metrics line as a dict (see the module docstring); starts the next interval."""
        now = time.monotonic()
        elapsed = max(now - self.at, 1e-9)
        line: dict[str, Any] = {"ts": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        ledger, sink = self.pipeline.ledger, self.pipeline.sink
        if ledger is not None:
            s = ledger.stats
            line["ledger"] = {"events_per_s": round((s.applied + s.rejected - self.applied) / elapsed),
                              "lag": s.lag, "last_batch": s.last_batch, "last_txn_ms": round(s.last_txn_ms, 1),
                              "applied": s.applied, "rejected": s.rejected, "transactions": s.transactions,
                              "aborted": s.aborted, "changelog_records": s.changelog_records,
                              "changelog_bytes": s.changelog_bytes, "restored_records": s.restored_records,
                              "restore_s": round(s.restore_s, 3),
                              "seconds_by_phase": {"consume_wait": round(s.consume_s, 2),
                                                   "decode_merge": round(s.decode_s, 2),
                                                   "of_which_watermarks": round(s.watermark_s, 2),
                                                   "apply_produce": round(s.apply_s, 2),
                                                   "commit": round(s.commit_s, 2)}}
            self.applied = s.applied + s.rejected
        if sink is not None:
            rows = sum(sink.progress.rows.values())
            line["sink"] = {"rows_per_s": round((rows - self.rows) / elapsed), "rows": dict(sink.progress.rows),
                            "batches": sink.progress.batches, "refused": sink.progress.refused,
                            "paused_s": round(sink.progress.paused_s, 1)}
            self.rows = rows
        api = self.pipeline.api
        if api is not None:
            lag = api.view.lag_s()
            line["serve"] = {"view_lag_ms": None if lag is None else round(lag * 1000, 1),
                             "view_records": api.view.stats.records, "view_refused": api.view.stats.refused,
                             "tenants": len(api.view.tenants)}
        hooks = self.pipeline.webhooks
        if hooks is not None:
            line["webhooks"] = dict(hooks.progress.__dict__)
        if self.pipeline.notify is not None:
            line["notify"] = self.pipeline.notify.metrics()
        self.at = now
        return line

    def emit(self) -> None:
        """Write :meth:`line` as one JSON line on stderr and flush."""
        sys.stderr.write(json.dumps(self.line()) + "\n")
        sys.stderr.flush()
