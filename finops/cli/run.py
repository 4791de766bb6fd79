"""``finops run``: the processors in the foreground, supervised (the supervisor, the worker's loop
and its metrics line are in the library: ``finops/supervisor.py``, ``finops/metrics.py``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .common import app, command, err, fail, load_settings, setup_logging


@app.command()
@command
def run(
    parts: Optional[list[str]] = typer.Argument(None, help="Processors to run: ledger, sink, scheduler, "
                                                       "webhooks, notify, serve, or alerts on its own "
                                                       "(default: the first three)."),
    instance: str = typer.Option("0", help="Ledger instance id: its transactional id. Unique per running "
                                           "instance; a restarted instance reuses its id (this fences its zombie)."),
    batch_max: int = typer.Option(20_000, help="Most input messages per transaction."),
    batch_ms: int = typer.Option(100, help="Longest wait for a batch to fill, in milliseconds."),
    metrics_every: float = typer.Option(10.0, help="Seconds between metrics lines (JSON on stderr)."),
    stuck_after: float = typer.Option(180.0, help="Restart when a transaction stays open this many seconds."),
    tick_every: float = typer.Option(60.0, help="Seconds between the scheduler's ticks (per tenant)."),
    supervise: bool = typer.Option(True, help="Run the processors in a child process and restart it after a "
                                              "crash or a stuck Kafka client (--no-supervise: run in this one)."),
    url: Optional[str] = typer.Option(None, help="webhooks: the receiver's URL (default FINOPS_WEBHOOK_URL)."),
    webhook_tenant: Optional[str] = typer.Option(None, help="webhooks: only this tenant's alerts."),
    min_severity: str = typer.Option("info", help="webhooks: only alerts this severe or more "
                                                  "(info, warning, critical)."),
    max_attempts: int = typer.Option(10, help="webhooks: attempts before an alert goes to the dead-letter topic."),
    routes: Optional[Path] = typer.Option(None, "--routes", help="notify: the routes file (YAML; docs/notify.md)."),
    insecure_local: bool = typer.Option(False, "--insecure-local",
                                        help="serve: answer requests from 127.0.0.1 without a token."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log assignments and client messages."),
) -> None:
    """Run the processors in the foreground until Ctrl-C (or SIGTERM).

    ledger: usage + commands -> ledger, balances, enforcement, alerts, rejected (exactly once).
    sink: usage, ledger, alerts, balances, allocations -> ClickHouse (with embedded chdb it also answers
    `finops sql` and `finops report` from other terminals).
    scheduler: a tick per tenant every --tick-every seconds (expiries happen with no traffic).
    alerts (on its own, faust): spend per account and hour -> z-score, month-over-month, runway,
    ending-soon and low-balance alerts (FINOPS_ALERT_* settings).
    webhooks: alerts -> POST to --url, signed HMAC-SHA256 with FINOPS_WEBHOOK_SECRET, retried,
    dead-lettered to finops.alerts.deadletter.v1 after --max-attempts failures.
    notify: alerts -> the channels of their route in --routes FILE (Slack, signed webhook, email, PagerDuty),
    each retried and dead-lettered on its own.
    serve: the HTTP API of `finops serve` on FINOPS_API_HOST:FINOPS_API_PORT (with the sink in the same
    process, its ClickHouse client answers the history endpoints).
    Every --metrics-every seconds a JSON
    line on stderr: events/s, consumer lag, batch size, transaction time, rejected count.
    Example: finops run ledger --instance a ; finops run webhooks --url https://hooks.example.com/finops ;
    finops run notify --routes routes.yaml
    """
    if supervise:
        from ..supervisor import supervise as supervise_child

        raise typer.Exit(supervise_child([sys.executable, "-m", "finops.cli", *sys.argv[1:], "--no-supervise"],
                                         log=err.print))
    from ..pipeline import RUN_PARTS, Pipeline
    from ..supervisor import run_foreground

    setup_logging(verbose)
    settings = load_settings()
    if parts and "alerts" in parts:
        if len(parts) > 1:
            fail("run alerts on its own: `finops run alerts` (faust runs its own event loop)", 2)
        from ..processors.alerts import run_worker

        err.print(f"running the alert processor (faust) against {settings.bootstrap} (Ctrl-C stops)")
        run_worker(settings, verbose)
        return
    webhook = {"url": url, "tenant": webhook_tenant, "min_severity": min_severity, "max_attempts": max_attempts}
    notify = None
    if parts and "notify" in parts:
        from ..producers.notify import RoutesError, check_secrets, load_routes

        if routes is None:
            fail("notify needs a routes file: finops run notify --routes routes.yaml (docs/notify.md)", 2)
        try:
            notify = {"routes": load_routes(routes)}
            check_secrets(notify["routes"], settings)
        except RoutesError as exc:
            fail(str(exc), 2)
    pipeline = Pipeline(settings, tuple(parts or RUN_PARTS), instance=instance, batch_max=batch_max, webhook=webhook,
                        batch_s=batch_ms / 1000, tick_every=tick_every, serve={"insecure_local": insecure_local},
                        notify=notify)
    err.print(f"running {', '.join(parts or RUN_PARTS)} against {settings.bootstrap} "
              f"and {settings.clickhouse_dsn} (Ctrl-C stops)")
    run_foreground(pipeline, metrics_every=metrics_every, stuck_after=stuck_after, log=err.print,
                   log_error=lambda text: err.print(f"[red]error:[/red] {text}"))
