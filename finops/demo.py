"""``finops demo``: the whole path on the embedded defaults, start to finish.

Starts the local broker if none runs, runs the ledger processor and the ClickHouse sink,
publishes a generated workload (fresh tenant names each run, so runs never mix) whose usage
spans the days that end now (14 by default, so every report "as of today" has two weeks of
history), waits until the ledger has committed every input and ClickHouse holds every row
and balance, prints the balances (from ``finops.balances.v1``), the spend per team
(ClickHouse SQL), the runway of each tenant and team and the reconciliation (the reports),
checks the balances against ``finops fold`` of the same input and that every tenant
reconciles, and stops what it started. With ``serve`` it keeps the pipeline running with the
HTTP API (and its console) until Ctrl-C.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from . import clients, stack
from .errors import FinopsError
from .pipeline import Pipeline
from .processors.fold import fold_lines
from .producers.publish import publish_lines
from .producers.workload import Workload, generate
from .projections import reports
from .projections.balances import read_balances
from .projections.query import LocalReader
from .settings import Settings

Log = Callable[[str], None]
DEFAULT_DAYS = 14
RUNWAY_KINDS = ("tenant", "org", "team")  # the scopes the demo prints (users have no grants of their own)

SPEND_BY_TEAM_SQL = """
SELECT tenant_id, team, sum(requests) AS requests, sum(credits_micros) / 1e6 AS credits
FROM mv_credits_by_team
WHERE tenant_id IN {tenants:Array(String)}
GROUP BY tenant_id, team
ORDER BY tenant_id, team
"""


LATEST_BALANCES_SQL = """
SELECT tenant_id, account_id, argMax(available_micros, kafka_offset), argMax(consumed_micros, kafka_offset),
       argMax(reserved_micros, kafka_offset), argMax(overage_micros, kafka_offset)
FROM balance_snapshots
WHERE tenant_id IN {tenants:Array(String)}
GROUP BY tenant_id, account_id
"""


@dataclass
class DemoResult:
    """What ``finops demo`` saw: the workload, the latest balances on ``finops.balances.v1`` (credits as
    decimal strings), spend by team from ClickHouse (credits), whether the balances equal ``finops
    fold`` of the same input, the runway and reconcile reports, and the wall seconds it took."""

    workload: Workload
    balances: list[tuple]  # (tenant, account, kind, available, consumed, overage)
    spend_by_team: tuple[list[str], list[tuple]]
    usage_rows: int
    matches_fold: bool
    seconds: float
    runway: tuple[list[str], list[tuple]] = ([], [])  # the runway report's rows of each tenant, org and team
    reconcile: tuple[list[str], list[tuple]] = ([], [])  # the reconcile report's row of each tenant
    reconciled: bool = False  # every tenant's identity holds and its ledger entries equal its balances
    as_of: str = field(default="")  # the reports' "as of" day (today, UTC)

    @property
    def ok(self) -> bool:
        """Every check passed: the balances equal `finops fold`'s, and every tenant reconciles."""
        return self.matches_fold and self.reconciled


@dataclass(frozen=True)
class Serving:
    """Where the demo's pipeline serves the HTTP API (``run(serve=...)``): the console's URL and
    an admin token made for this run."""

    url: str
    token: str


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, pipeline: Pipeline | None = None) -> None:
    """Poll ``condition`` until true; raise at the timeout, or as soon as ``pipeline`` has failed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if pipeline is not None:
            pipeline.raise_failure()
        if time.monotonic() > deadline:
            raise FinopsError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def run(settings: Settings, *, usage: int = 3000, tenants: int = 2, days: float = DEFAULT_DAYS, log: Log = print,
        timeout: float = 90.0, serve: Callable[[DemoResult, Serving], None] | None = None,
        stop: threading.Event | None = None) -> DemoResult:
    """The demo; see the module docstring. ``days``: the usage spans the days that end now.

    ``serve``: also run the HTTP API (``FINOPS_API_PORT``) in the pipeline; once the demo's
    checks are done, make an admin token, call ``serve(result, Serving(url, token))`` and keep
    everything running until Ctrl-C (or until ``stop`` is set), then stop what it started.
    """
    started_at = time.monotonic()
    already = stack.status(settings).running or settings.external_kafka
    stack.up(settings, log=log)
    try:
        return _run(settings, usage=usage, tenants=tenants, days=days, log=log, timeout=timeout,
                    started_at=started_at, serve=serve, stop=stop or threading.Event())
    finally:
        if not already:
            stack.down(settings, log=log)


def _run(settings: Settings, *, usage: int, tenants: int, days: float, log: Log, timeout: float,
         started_at: float, serve: Callable[[DemoResult, Serving], None] | None,
         stop: threading.Event) -> DemoResult:
    workload = generate(tenants=tenants, usage=usage, days=days, suffix=f"-{uuid.uuid4().hex[:6]}")
    log(f"workload: {len(workload.tenants)} tenants ({', '.join(workload.tenants)}), "
        f"{workload.command_count} commands, {workload.usage_count} usage events over the {days:g} day(s) "
        "ending now")
    parts = ("ledger", "sink", "serve") if serve is not None else ("ledger", "sink")
    with Pipeline(settings, parts) as pipeline:
        report = publish_lines(settings, workload.lines)
        log(f"published {report.sent} messages ({report.failed} failed)")
        ends = clients.input_ends(settings)
        assert pipeline.ledger is not None and pipeline.sink is not None
        wait_for(lambda: pipeline.ledger.caught_up(ends), timeout=timeout,
                 what="the ledger to commit every input", pipeline=pipeline)
        log("ledger: every input committed")
        count_sql = "SELECT count() FROM usage_events WHERE tenant_id IN {tenants:Array(String)}"
        params = {"tenants": workload.tenants}

        def usage_rows() -> int:
            return int(pipeline.sink.query(count_sql, params)[1][0][0])

        wait_for(lambda: usage_rows() >= workload.usage_count, timeout=timeout,
                 what="ClickHouse to hold every usage row", pipeline=pipeline)
        consumed = sum(a.consumed for t in workload.tenants for a in fold_lines(workload.lines).ledger.tenants[t]
                       .accounts.values())
        spend_sql = "SELECT sum(credits_micros) FROM mv_credits_by_team WHERE tenant_id IN {tenants:Array(String)}"
        wait_for(lambda: int(pipeline.sink.query(spend_sql, params)[1][0][0] or 0) >= consumed, timeout=timeout,
                 what="ClickHouse to hold every ledger entry", pipeline=pipeline)
        spend = pipeline.sink.query(SPEND_BY_TEAM_SQL, params)
        rows = usage_rows()
        latest = {}
        for tenant in workload.tenants:
            latest.update(read_balances(settings, tenant_id=tenant))
        published = {key: (b.available_micros, b.consumed_micros, b.reserved_micros, b.overage_micros)
                     for key, b in latest.items()}

        def balances_in_clickhouse() -> bool:
            held = {(t, a): tuple(v) for t, a, *v in pipeline.sink.query(LATEST_BALANCES_SQL, params)[1]}
            return held == published

        wait_for(balances_in_clickhouse, timeout=timeout, what="ClickHouse to hold every balance", pipeline=pipeline)
        balances = [(tenant, account, b.kind, b.available, b.consumed, b.overage)
                    for (tenant, account), b in sorted(latest.items())]
        result = DemoResult(workload=workload, balances=balances, spend_by_team=spend, usage_rows=rows,
                            matches_fold=not fold_differences(latest, workload), seconds=0.0)
        _add_reports(result, LocalReader(pipeline.sink.client, pipeline.sink.lock, owned=False))
        result.seconds = time.monotonic() - started_at
        if serve is not None:
            _serve(settings, pipeline, result, serve, stop, timeout)
    return result


def _add_reports(result: DemoResult, reader) -> None:
    """The runway of each tenant, org and team, and each tenant's reconciliation, as of today (UTC)."""
    today = datetime.now(timezone.utc).date()
    result.as_of = today.isoformat()
    runway_columns: list[str] = []
    runway_rows: list[tuple] = []
    reconcile_columns: list[str] = []
    reconcile_rows: list[tuple] = []
    for tenant in result.workload.tenants:
        runway = reports.run(reader, "runway", reports.Params(tenant=tenant), today)
        kind = runway.columns.index("kind")
        runway_columns = runway.columns
        runway_rows += sorted((r for r in runway.rows if r[kind] in RUNWAY_KINDS),
                              key=lambda r: (RUNWAY_KINDS.index(r[kind]), r[1]))
        reconcile = reports.run(reader, "reconcile", reports.Params(tenant=tenant), today)
        reconcile_columns = reconcile.columns
        reconcile_rows += reconcile.rows
    result.runway = (runway_columns, runway_rows)
    result.reconcile = (reconcile_columns, reconcile_rows)
    ix = {c: i for i, c in enumerate(reconcile_columns)}
    result.reconciled = len(reconcile_rows) == len(result.workload.tenants) and all(
        r[ix["balanced"]] and r[ix["matches_ledger"]] for r in reconcile_rows)


def _serve(settings: Settings, pipeline: Pipeline, result: DemoResult,
           serve: Callable[[DemoResult, Serving], None], stop: threading.Event, timeout: float) -> None:
    """Keep the pipeline and its HTTP API running until Ctrl-C or ``stop``."""
    from .tokens import TokenStore

    api = pipeline.api
    assert api is not None
    wait_for(lambda: api.server.started, timeout=timeout, what="the HTTP API to listen", pipeline=pipeline)
    _token_id, token = TokenStore(settings.tokens_path).add(None, "admin", note="finops demo --serve")
    serve(result, Serving(url=f"{api.url}/", token=token))
    try:
        while not stop.is_set():
            pipeline.wait(0.5)
    except KeyboardInterrupt:  # the way a served demo ends
        pass


def fold_differences(latest: dict, workload: Workload) -> dict:
    """Accounts whose published balance differs from ``finops fold`` of the same input:
    {(tenant, account): (published, folded)} as (available, consumed, reserved, overage)
    micro-credits; an account missing on either side shows None there. Empty: they agree."""
    ledger = fold_lines(workload.lines).ledger
    expected = {(t, a.id): (a.available, a.consumed, a.reserved, a.overage)
                for t in workload.tenants for a in ledger.tenants[t].accounts.values()}
    actual = {key: (b.available_micros, b.consumed_micros, b.reserved_micros, b.overage_micros)
              for key, b in latest.items()}
    return {key: (actual.get(key), expected.get(key)) for key in actual.keys() | expected.keys()
            if actual.get(key) != expected.get(key)}
