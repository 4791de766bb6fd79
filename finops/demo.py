"""``finops demo``: the whole path on the embedded defaults, start to finish.

Starts the local broker if none runs, runs the ledger processor and the ClickHouse sink,
publishes a generated workload (fresh tenant names each run, so runs never mix), waits
until the ledger has committed every input and ClickHouse holds every row, prints the
balances (from ``finops.balances.v1``) and the spend per team (ClickHouse SQL), checks
them against ``finops fold`` of the same input, and stops what it started.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

from . import clients, stack
from .errors import FinopsError
from .pipeline import Pipeline
from .processors.fold import fold_lines
from .producers.publish import publish_lines
from .producers.workload import Workload, generate
from .projections.balances import read_balances
from .settings import Settings

Log = Callable[[str], None]

SPEND_BY_TEAM_SQL = """
SELECT tenant_id, team, sum(requests) AS requests, sum(credits_micros) / 1e6 AS credits
FROM mv_credits_by_team
WHERE tenant_id IN {tenants:Array(String)}
GROUP BY tenant_id, team
ORDER BY tenant_id, team
"""


@dataclass
class DemoResult:
    workload: Workload
    balances: list[tuple]  # (tenant, account, kind, available, consumed, overage)
    spend_by_team: tuple[list[str], list[tuple]]
    usage_rows: int
    matches_fold: bool
    seconds: float


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, pipeline: Pipeline | None = None) -> None:
    """Poll ``condition`` until true; raise at the timeout, or as soon as ``pipeline`` has failed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if pipeline is not None:
            pipeline.raise_failure()
        if time.monotonic() > deadline:
            raise FinopsError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def run(settings: Settings, *, usage: int = 3000, tenants: int = 2, log: Log = print,
        timeout: float = 90.0) -> DemoResult:
    started_at = time.monotonic()
    already = stack.status(settings).running or settings.external_kafka
    stack.up(settings, log=log)
    try:
        return _run(settings, usage=usage, tenants=tenants, log=log, timeout=timeout, started_at=started_at)
    finally:
        if not already:
            stack.down(settings, log=log)


def _run(settings: Settings, *, usage: int, tenants: int, log: Log, timeout: float,
         started_at: float) -> DemoResult:
    workload = generate(tenants=tenants, usage=usage, suffix=f"-{uuid.uuid4().hex[:6]}")
    log(f"workload: {len(workload.tenants)} tenants ({', '.join(workload.tenants)}), "
        f"{workload.command_count} commands, {workload.usage_count} usage events")
    with Pipeline(settings) as pipeline:
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
        consumed = sum(a.consumed for t in workload.tenants for a in fold_lines(workload.lines).book.tenants[t]
                       .accounts.values())
        spend_sql = "SELECT sum(credits_micros) FROM mv_credits_by_team WHERE tenant_id IN {tenants:Array(String)}"
        wait_for(lambda: int(pipeline.sink.query(spend_sql, params)[1][0][0] or 0) >= consumed, timeout=timeout,
                 what="ClickHouse to hold every ledger entry", pipeline=pipeline)
        spend = pipeline.sink.query(SPEND_BY_TEAM_SQL, params)
        rows = usage_rows()
    balances = []
    latest = {}
    for tenant in workload.tenants:
        latest.update(read_balances(settings, tenant_id=tenant))
    for (tenant, account), b in sorted(latest.items()):
        balances.append((tenant, account, b.kind, b.available, b.consumed, b.overage))
    return DemoResult(workload=workload, balances=balances, spend_by_team=spend, usage_rows=rows,
                      matches_fold=not fold_differences(latest, workload), seconds=time.monotonic() - started_at)


def fold_differences(latest: dict, workload: Workload) -> dict:
    """Accounts whose published balance differs from ``finops fold`` of the same input:
    {(tenant, account): (published, folded)} as (available, consumed, reserved, overage)
    micro-credits; an account missing on either side shows None there. Empty: they agree."""
    book = fold_lines(workload.lines).book
    expected = {(t, a.id): (a.available, a.consumed, a.reserved, a.overage)
                for t in workload.tenants for a in book.tenants[t].accounts.values()}
    actual = {key: (b.available_micros, b.consumed_micros, b.reserved_micros, b.overage_micros)
              for key, b in latest.items()}
    return {key: (actual.get(key), expected.get(key)) for key in actual.keys() | expected.keys()
            if actual.get(key) != expected.get(key)}
