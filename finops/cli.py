"""The ``finops`` command: a thin layer over the library. Each command parses, calls one
library function and prints: a table for people, ``--json`` (or ``--format``) for programs.
Expected failures are one line on stderr and exit code 1; bad usage exits 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import FinopsError
from .settings import Settings, load

EXIT_CODES = ("Exit codes: 0 done; 1 an expected failure (one line on stderr: unreachable broker, bad file, "
              "bad SQL, invalid lines, timeout); 2 bad usage; 130 interrupted. Every command has --help with "
              "an example; data comes as a table, or as JSON with --json (--format where there are more).")

app = typer.Typer(
    help="finops: an event-sourced FinOps pipeline for AI/API credit spend on Kafka and ClickHouse.\n\n"
         "Start here: finops stack up; finops run 2> run.log &; finops simulate --duration 30 --wait; "
         "finops balance --tenant acme; finops report burn-rate",
    epilog=EXIT_CODES,
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]})
stack_app = typer.Typer(help="The local Apache Kafka broker (skipped when FINOPS_KAFKA_BOOTSTRAP is set).",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")
alerts_app = typer.Typer(help="Alerts on finops.alerts.v1.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
tokens_app = typer.Typer(help="Bearer tokens of the HTTP API (`finops serve`), stored hashed in FINOPS_TOKENS_FILE.",
                         no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


def command(fn: Callable) -> Callable:
    """Turn expected failures into one line and exit 1; Ctrl-C into exit 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .stack import StackError

        try:
            return fn(*args, **kwargs)
        except (FinopsError, StackError) as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130)
    return wrapper


def _settings() -> Settings:
    try:
        return load()
    except Exception as exc:  # pydantic's ValidationError for a bad FINOPS_* value
        errors = getattr(exc, "errors", lambda: [])()
        detail = "; ".join(f"FINOPS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in errors) or str(exc)
        _fail(f"bad configuration: {detail}")
        raise


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # librdkafka reports every failed connection attempt; show them only when asked.
    logging.getLogger("finops.kafka").setLevel(logging.INFO if verbose else logging.CRITICAL)


def _print_rows(columns: list[str], rows: Iterable[tuple], fmt: str, title: str | None = None) -> None:
    rows = list(rows)
    if fmt == "json":
        from .projections.reports import records

        out.print_json(json.dumps(records(columns, rows)))
    elif fmt == "csv":
        from .projections.reports import to_csv

        sys.stdout.write(to_csv(columns, rows).decode())
    else:
        table = Table(title=title, title_justify="left")
        cells = [["" if v is None else str(v) for v in r] for r in rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        for c in columns:
            table.add_column(c, no_wrap=True)
        for r in cells:
            table.add_row(*r)
        wide = Console(highlight=False, width=max(out.width, sum(widths) + 3 * len(widths) + 1))
        wide.print(table)  # never cut a number to fit a narrow terminal


@contextlib.contextmanager
def _progress(description: str, total: int | None = None):
    """Progress of long work on stderr: a live bar on a terminal, else a line every 10 s.
    Yields ``update(done)`` (the count so far)."""
    if err.is_terminal:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.update(task, completed=done)
        return
    last = [time.monotonic()]

    def update(done: int) -> None:
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            err.print(f"{description}: {done}{f' of {total}' if total else ''}")
    yield update


# ----------------------------------------------------------------------------- stack


@stack_app.command("up")
@command
def stack_up(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show client logs."),
             as_json: bool = typer.Option(False, "--json", help="Print the resulting status as JSON.")) -> None:
    """Fetch the Kafka jars once, start one KRaft broker on 127.0.0.1, create the v1 topics.

    Running it again is a no-op. Example: FINOPS_KAFKA_PORT=19092 finops stack up
    """
    from . import stack

    _setup_logging(verbose)
    _print_status(stack.up(_settings(), log=err.print), as_json)


def _print_status(status, as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        out.print_json(json.dumps(asdict(status), default=str))
    else:
        for line in status.lines():
            out.print(line)


@stack_app.command("down")
@command
def stack_down() -> None:
    """Stop the local broker (its data stays in the data dir). Example: finops stack down"""
    from . import stack

    stack.down(_settings(), log=err.print)


@stack_app.command("status")
@command
def stack_status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """What runs where: broker pid, bootstrap, data dir, log file, topics. Example: finops stack status --json"""
    from . import stack

    _setup_logging(False)
    _print_status(stack.status(_settings()), as_json)


# ----------------------------------------------------------------------------- data in


@app.command()
@command
def publish(
    file: str = typer.Argument(..., help="A JSONL file of wire-v1 messages, or - for stdin."),
    raw: bool = typer.Option(False, "--raw", help="Send lines as they are, without checking them first."),
    wait: bool = typer.Option(False, "--wait", help="Then wait until the ledger (and a running sink) has "
                                                    "processed everything published so far."),
    timeout: float = typer.Option(120.0, help="--wait: give up after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Send wire-v1 messages to Kafka (usage and commands to their topics, keyed by tenant).

    Lines that are not valid v1 messages are reported and not sent (unless --raw).
    Exit code 1 when any line failed. Example: finops publish events.jsonl --wait
    """
    from .producers.publish import publish_lines

    _setup_logging(False)
    settings = _settings()
    with _progress("publishing") as update:
        if file == "-":
            report = publish_lines(settings, sys.stdin.buffer, validate=not raw, progress=update)
        else:
            path = Path(file)
            if not path.is_file():
                _fail(f"cannot read {file}: no such file")
            with path.open("rb") as handle:
                report = publish_lines(settings, handle, validate=not raw, progress=update)
    waited = _wait_processed(settings, timeout) if wait else None
    if as_json:
        out.print_json(json.dumps({"sent": report.sent, "failed": report.failed, "by_topic": report.by_topic,
                                   "errors": report.errors, **({"waited": waited} if waited else {})}))
    else:
        for line in report.errors:
            err.print(f"  {line}", soft_wrap=True)
        topics_text = ", ".join(f"{n} to {t}" for t, n in sorted(report.by_topic.items()))
        out.print(f"sent {report.sent} ({topics_text or 'nothing'}), failed {report.failed}")
    if report.failed:
        raise typer.Exit(1)


def _wait_processed(settings: Settings, timeout: float) -> dict[str, float]:
    from .waiting import wait_processed

    return wait_processed(settings, timeout=timeout, log=lambda m: err.print(m))


@app.command()
@command
def simulate(
    tenants: int = typer.Option(1, help="Tenants (acme, globex, initech, ...)."),
    accounts_per_tenant: int = typer.Option(12, help="User accounts per tenant (about 4 per team)."),
    rate: float = typer.Option(100.0, help="Requests per wall-clock second, on average over the daily cycle."),
    duration: float = typer.Option(60.0, help="Wall-clock seconds to run."),
    speed: float = typer.Option(1.0, help="Event time runs this many times as fast as the wall clock, ending "
                                          "now (3600: an hour of traffic per second)."),
    spike: Optional[list[str]] = typer.Option(None, help="ACCOUNT:FACTOR@TIME, e.g. search-user0:10@30s (TIME: "
                                                         "event-time offset like 30s/10m/2h, or RFC 3339). "
                                                         "Repeatable. ACCOUNT may be tenant/account."),
    spike_length: float = typer.Option(3600.0, help="Event-time seconds a spike lasts."),
    bad_fraction: float = typer.Option(0.002, help="Share of requests sent as bad input (unreadable, missing "
                                                   "fields, negative amounts, unknown accounts, conflicting "
                                                   "resends)."),
    seed: Optional[int] = typer.Option(None, help="Random seed, for a repeatable run."),
    setup: bool = typer.Option(True, help="First buy credits and open the accounts and budgets (--no-setup: "
                                          "add traffic to an earlier run's accounts)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write JSONL here instead of publishing "
                                                                       "(no pacing: as fast as it can)."),
    wait: bool = typer.Option(False, "--wait", help="Then wait until the ledger (and a running sink) has "
                                                    "processed it all."),
    timeout: float = typer.Option(120.0, help="--wait: give up after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Publish realistic traffic: budgets, a daily cycle, a model mix, labels, spikes, some bad input.

    Example: finops simulate --tenants 2 --rate 500 --duration 60 --speed 3600 --spike search-user0:10@12h --wait
    """
    from .producers import simulate as sim

    _setup_logging(False)
    try:
        simulation = sim.Simulation(tenants=tenants, accounts_per_tenant=accounts_per_tenant, rate=rate,
                                    duration=duration, speed=speed, spikes=tuple(spike or ()),
                                    spike_length=spike_length, bad_fraction=bad_fraction, seed=seed)
    except FinopsError as exc:
        _fail(str(exc), 2)  # a bad option value
    total = int(rate * duration)  # requests, about: the daily cycle and spikes move it
    settings = _settings()
    if output is not None:
        try:
            handle = output.open("wb")
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror}")
        with handle, _progress(f"writing {output}", total) as update:
            report = sim.run(simulation, lambda lines: handle.writelines(line + b"\n" for line in lines),
                             paced=False, progress=update, setup=setup)
        sent = None
    else:
        from .producers.publish import Publisher

        publisher = Publisher(settings)
        with _progress(f"simulating {simulation.tenants[0]}{' ...' if tenants > 1 else ''}", total) as update:
            report = sim.run(simulation, publisher.send_all, paced=True,
                             progress=update, setup=setup)
        sent = publisher.close()
        if sent.failed:
            _fail(f"{sent.failed} messages were not delivered: {sent.errors[0]}")
    waited = _wait_processed(settings, timeout) if wait and output is None else None
    summary = {**report.as_dict(), **({"output": str(output)} if output else {}),
               **({"waited": waited} if waited else {})}
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(f"{'wrote' if output else 'published'} {report.messages} messages in {report.seconds:.1f} s: "
              f"{report.commands} commands, {report.usage} usage ({report.spiked} from spikes), {report.bad} bad; "
              f"tenants {', '.join(report.tenants)}; event time {report.first_ts} .. {report.last_ts}",
              soft_wrap=True)


@app.command("wait")
@command
def wait_cmd(
    timeout: float = typer.Option(120.0, help="Give up after this many seconds (exit 1)."),
    sink: bool = typer.Option(True, help="Also wait for the ClickHouse sink when one runs (--no-sink: the "
                                         "ledger only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the seconds each stage took as JSON."),
) -> None:
    """Wait until everything published so far is processed: balances by the ledger, history in ClickHouse.

    Exit 1 when no ledger processor runs or at the timeout. Example: finops publish events.jsonl && finops wait
    """
    from .waiting import wait_processed

    _setup_logging(False)
    waited = wait_processed(_settings(), timeout=timeout, sink=None if sink else False,
                            log=lambda m: None if as_json else err.print(m))
    if as_json:
        out.print_json(json.dumps(waited))


# ----------------------------------------------------------------------------- processors


EXIT_RESTART = 75  # a worker asks its supervisor for a clean restart
EXIT_CRASH = 70  # an unexpected error in a worker (EX_SOFTWARE): restarted too


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
        raise typer.Exit(_supervise([*sys.argv[1:], "--no-supervise"]))
    from .pipeline import RUN_PARTS, Pipeline
    from .service import tune_gc
    from .processors.runner import PartitionsLost, Stuck

    _setup_logging(verbose)
    settings = _settings()
    if parts and "alerts" in parts:
        if len(parts) > 1:
            _fail("run alerts on its own: `finops run alerts` (faust runs its own event loop)", 2)
        from .processors.alerts import run_worker

        err.print(f"running the alert processor (faust) against {settings.bootstrap} (Ctrl-C stops)")
        run_worker(settings, verbose)
        return
    webhook = {"url": url, "tenant": webhook_tenant, "min_severity": min_severity, "max_attempts": max_attempts}
    notify = None
    if parts and "notify" in parts:
        from .producers.notify import RoutesError, check_secrets, load_routes

        if routes is None:
            _fail("notify needs a routes file: finops run notify --routes routes.yaml (docs/notify.md)", 2)
        try:
            notify = {"routes": load_routes(routes)}
            check_secrets(notify["routes"], settings)
        except RoutesError as exc:
            _fail(str(exc), 2)
    pipeline = Pipeline(settings, tuple(parts or RUN_PARTS), instance=instance, batch_max=batch_max, webhook=webhook,
                        batch_s=batch_ms / 1000, tick_every=tick_every, serve={"insecure_local": insecure_local},
                        notify=notify)
    signal.signal(signal.SIGTERM, _interrupt)
    tune_gc()
    err.print(f"running {', '.join(parts or RUN_PARTS)} against {settings.bootstrap} "
              f"and {settings.clickhouse_dsn} (Ctrl-C stops)")
    metrics = _Metrics(pipeline)
    with pipeline:
        try:
            while not pipeline.wait(metrics_every, stuck_after):
                metrics.emit()
        except KeyboardInterrupt:
            err.print("stopping")
        except (Stuck, PartitionsLost) as exc:
            err.print(f"[red]error:[/red] {exc}")
            sys.stderr.flush()
            os._exit(EXIT_RESTART)  # a stuck thread cannot be joined; the supervisor restarts us clean
        except FinopsError:
            raise  # expected and final (fenced, bad configuration): one line, exit 1
        except Exception:  # a bug or an unforeseen fault: show it, and let the supervisor restart us
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(EXIT_CRASH)


def _supervise(args: list[str]) -> int:
    """Run ``finops <args>`` as a child; restart it after a crash or EXIT_RESTART, with backoff.

    Exit 0 (stopped), 1 (an error a restart would not fix, e.g. fenced) and 2 (usage)
    are final; anything else (75: asked for a restart, 70: an unexpected error, a signal)
    is restarted. The child dies with its parent (Linux PR_SET_PDEATHSIG), so a killed
    supervisor leaves no processor behind.
    """
    import subprocess

    stopping = False
    child: subprocess.Popen | None = None

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    backoff = 1.0
    while True:
        child = subprocess.Popen([sys.executable, "-m", "finops.cli", *args], preexec_fn=_die_with_parent)
        rc = child.wait()
        if stopping or rc in (0, 1, 2):
            return rc
        err.print(f"processors exited with code {rc}; restarting in {backoff:g} s")
        time.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


class _Metrics:
    """One JSON line per interval on stderr: rates since the last line, lag, batch, transaction time."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.at = time.monotonic()
        self.applied = 0
        self.rows = 0

    def emit(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self.at, 1e-9)
        line: dict = {"ts": datetime.now(timezone.utc).isoformat(timespec="seconds")}
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
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()


# ----------------------------------------------------------------------------- HTTP API


@app.command()
@command
def serve(
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port (default FINOPS_API_PORT, 8080)."),
    host: Optional[str] = typer.Option(None, help="Address (default FINOPS_API_HOST, 127.0.0.1)."),
    insecure_local: bool = typer.Option(False, "--insecure-local",
                                        help="Answer requests from 127.0.0.1 without a bearer token (only "
                                             "with a loopback --host)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log the live view and client messages."),
) -> None:
    """Serve the HTTP API until Ctrl-C: entitlement checks, balances, history, commands, usage, reports.

    Balances and checks come from a live view of the ledger's state (its changelog, read
    into memory; every answer says how fresh it is); history and reports from ClickHouse
    (through `finops run`'s sink when it owns the embedded ClickHouse). Tokens: `finops tokens
    add`. OpenAPI at /openapi.json, interactive docs at /docs. See docs/api.md.

    Example: finops serve --port 8080 ; curl -H "Authorization: Bearer $TOKEN"
    "localhost:8080/v1/check?tenant=acme&account=user-ann&credits=2.5"
    """
    from .api import ApiServer

    _setup_logging(verbose)
    settings = _settings()
    server = ApiServer(settings, host=host, port=port, insecure_local=insecure_local)
    config = server.server.config
    err.print(f"serving the API on http://{config.host}:{config.port} (docs at /docs) against "
              f"{settings.bootstrap}; tokens in {settings.tokens_path}"
              f"{'; no token needed from 127.0.0.1' if insecure_local else ''} (Ctrl-C stops)")
    server.run()


# ----------------------------------------------------------------------------- queries


@alerts_app.command("tail")
@command
def alerts_tail(
    tenant: Optional[str] = typer.Option(None, "--tenant", "-t", help="Only this tenant."),
    severity: str = typer.Option("info", help="Only this severe or more: info, warning, critical."),
    as_json: bool = typer.Option(False, "--json", help="One JSON alert per line (as published)."),
    from_beginning: bool = typer.Option(False, help="Start with the oldest alert kept, not the next one."),
    count: Optional[int] = typer.Option(None, help="Stop after this many alerts."),
    timeout: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
) -> None:
    """Follow alerts as they are raised (threshold, z-score, month-over-month, runway, ...).

    Example: finops alerts tail --tenant acme --severity warning
    """
    from .producers.webhooks import SEVERITIES, severity_rank
    from .schemas import topics

    if severity not in SEVERITIES:
        _fail(f"unknown severity {severity!r}; choose {', '.join(SEVERITIES)}", 2)
    _setup_logging(False)
    settings = _settings()
    from . import clients

    consumer = clients.consumer(settings, f"{settings.group_prefix}-tail-{os.getpid()}-{int(time.time())}",
                                **{"auto.offset.reset": "earliest" if from_beginning else "latest"})
    consumer.subscribe([topics.ALERTS])
    shown = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while (count is None or shown < count) and (deadline is None or time.monotonic() < deadline):
            for m in consumer.consume(100, 0.5):
                if m.error():
                    continue
                try:
                    alert = json.loads(m.value())
                except ValueError:
                    continue  # not an alert: nothing to show (webhooks dead-letter such records)
                if tenant and alert.get("tenant_id") != tenant:
                    continue
                if severity_rank(alert.get("severity")) < severity_rank(severity):
                    continue
                if as_json:
                    sys.stdout.write(m.value().decode() + "\n")
                    sys.stdout.flush()
                else:
                    _print_alert(alert)
                shown += 1
                if count is not None and shown >= count:
                    break
    finally:
        consumer.close()


def _print_alert(alert: dict) -> None:
    colors = {"info": "cyan", "warning": "yellow", "critical": "red"}
    sev = alert.get("severity", "")
    state = "resolved" if alert.get("status") == "resolved" else sev
    out.print(f"{alert.get('ts', '')}  [{colors.get(sev, 'white')}]{state:<9}[/]  "
              f"{alert.get('tenant_id')}/{alert.get('account_id')}  {alert.get('type')}  "
              f"period {alert.get('period') or '-'}  usage {alert.get('current_usage')} "
              f"of {alert.get('monthly_allocation')}  (threshold {alert.get('threshold')})", soft_wrap=True)


@alerts_app.command("receive")
@command
def alerts_receive(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, help="Port to listen on."),
    as_json: bool = typer.Option(False, "--json", help="One JSON alert per line."),
    count: Optional[int] = typer.Option(None, help="Stop after this many alerts."),
    timeout: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
) -> None:
    """A webhook receiver for trying `finops run webhooks`: checks signatures, prints each alert once.

    With FINOPS_WEBHOOK_SECRET set, a POST without a valid signature gets 401; repeats (same
    Idempotency-Key) are dropped. Example: finops alerts receive --port 8080 &
    finops run webhooks --url http://127.0.0.1:8080/
    """
    from .producers.webhooks import Receiver

    settings = _settings()
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None

    def show(alert: dict) -> None:
        if as_json:
            sys.stdout.write(json.dumps(alert) + "\n")
            sys.stdout.flush()
        else:
            _print_alert(alert)

    try:
        receiver = Receiver(host, port, secret, show)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    err.print(f"receiving webhooks on http://{host}:{receiver.address[1]}/ "
              f"({'checking signatures' if secret else 'FINOPS_WEBHOOK_SECRET unset: signatures not checked'})")
    receiver.serve(count=count, timeout=timeout)
    err.print(f"{receiver.received} alerts received, {receiver.refused} refused")


@app.command()
@command
def balance(
    account: Optional[str] = typer.Argument(None, help="Account id (the tenant id for its root pool); "
                                                       "default: every account of the tenant."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (amounts as credit strings and micros)."),
) -> None:
    """Current balances, from the balances topic: one account, or every account of a tenant.

    Example: finops balance team-search --tenant acme --json
    """
    import msgspec

    from .projections.balances import read_balances

    _setup_logging(False)
    balances = read_balances(_settings(), tenant_id=tenant)
    if account is not None:
        b = balances.get((tenant, account))
        if b is None:
            _fail(f"no balance for account {account!r} of tenant {tenant!r} (is `finops run` processing?)")
        chosen = [b]
    else:
        chosen = [b for _key, b in sorted(balances.items())]
        if not chosen:
            _fail(f"no balances for tenant {tenant!r} (is `finops run` processing?)")
    if as_json:
        out.print_json(msgspec.json.encode(chosen[0] if account is not None else chosen).decode())
    else:
        _print_rows(["tenant", "account", "kind", "available", "consumed", "reserved", "overage", "as of"],
                    [(b.tenant_id, b.account_id, b.kind, b.available, b.consumed, b.reserved, b.overage, b.ts)
                     for b in chosen], "table")


@app.command()
@command
def sql(
    query: str = typer.Argument(..., help="A ClickHouse SQL query."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
) -> None:
    """Run SQL on the ClickHouse history (FINOPS_CLICKHOUSE_URL; default: embedded chdb).

    Example: finops sql "SELECT team, sum(credits_micros)/1e6 FROM usage_events GROUP BY team"
    """
    from .projections.query import open_reader

    if fmt not in ("table", "json", "csv"):
        _fail(f"unknown format {fmt!r}; choose table, json or csv", 2)
    reader = open_reader(_settings())
    try:
        columns, rows = reader.query(query)
    finally:
        reader.close()
    _print_rows(columns, rows, fmt)


REPORT_HELP = (
    "Reports over the ClickHouse history; each is a SQL file an analyst can reuse (--sql prints it).\n\n"
    "burn-rate: daily, 7- and 14-day averages. forecast: month end by the 14-day formula and by Holt, with a "
    "90 % band. runway: when each account and everything below it runs dry at its subtree's 14-day burn (a "
    "tenant's row is the whole tenant), against its window end, with its own grants' runway beside it. "
    "reconcile: per tenant, purchased = available + reserved + consumed - overage + expired, and whether every "
    "balance equals its ledger entries. forecast-accuracy: what the formula and Holt forecast on days 7, 14 and "
    "21 of each past month against its actual total. plan: next month's allocations from a parent (--account, "
    "default the tenant root) to its children by --method flat, usage or hybrid (--reserve-pct kept back), "
    "split from --budget (default the parent's available) by usage from --from to --to; --output writes the "
    "allocate commands as JSONL for `finops publish`. chargeback: cost center -> GL account (--mapping). "
    "showback: team and project. top-drivers: model, operation, API key, cost per request. anomalies: z-score "
    "of daily spend against the trailing 30 days. focus: FOCUS columns (csv or parquet).\n\n"
    "Days are UTC; --to is the 'as of' day (default today), --from defaults to 29 days before it. Works while "
    "`finops run` owns the embedded ClickHouse: it answers for this terminal.\n\n"
    "Example: finops report forecast --tenant acme --plot forecast.png ; finops report plan --tenant acme "
    "--account org --method hybrid --reserve-pct 15 --output plan.jsonl")


def _day(value: Optional[str], option: str):
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        _fail(f"{option} {value!r} is not a day like 2026-11-23", 2)


@app.command(help=REPORT_HELP)
@command
def report(
    name: str = typer.Argument(..., help="burn-rate, forecast, runway, reconcile, forecast-accuracy, plan, "
                                         "chargeback, showback, top-drivers, anomalies or focus."),
    tenant: str = typer.Option("", "--tenant", "-t", help="Only this tenant (default: all)."),
    account: str = typer.Option("", "--account", "-a", help="Only this account (default: all)."),
    start: Optional[str] = typer.Option(None, "--from", help="First UTC day, YYYY-MM-DD (default: --to - 29)."),
    end: Optional[str] = typer.Option(None, "--to", help="Last UTC day and 'as of' day (default: today)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, csv or parquet (parquet needs --output)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout (plan: "
                                                                      "the allocate commands as JSONL; the table "
                                                                      "still prints)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also draw a PNG here (burn-down, bars, ...)."),
    mapping: Optional[str] = typer.Option(None, help="chargeback: CSV with columns cost_center,gl_account."),
    z: float = typer.Option(3.0, help="anomalies: flag days more than this many standard deviations above."),
    currency: Optional[str] = typer.Option(None, help="focus: BillingCurrency (default FINOPS_BILLING_CURRENCY)."),
    credit_price: Optional[str] = typer.Option(None, help="focus: price of one credit in that currency "
                                                          "(default FINOPS_CREDIT_PRICE)."),
    method: str = typer.Option("usage", help="plan: flat (equal shares), usage (by usage from --from to --to) "
                                              "or hybrid (keeps --reserve-pct back, the rest by usage)."),
    budget: Optional[str] = typer.Option(None, metavar="CREDITS", help="plan: credits to split (default: the "
                                                                       "parent's available as of --to)."),
    reserve_pct: str = typer.Option("10", help="plan, hybrid: percent of the budget kept at the parent."),
    sql_only: bool = typer.Option(False, "--sql", help="Print the report's SQL file and exit."),
) -> None:
    from decimal import Decimal, InvalidOperation

    from .projections import reports
    from .projections.query import open_reader

    if name not in reports.REPORTS:
        _fail(f"unknown report {name!r}; choose one of {', '.join(reports.REPORTS)}", 2)
    if sql_only:
        sys.stdout.write(reports.sql_text(name))
        return
    if fmt not in ("table", "json", "csv", "parquet"):
        _fail(f"unknown format {fmt!r}; choose table, json, csv or parquet", 2)
    if fmt == "parquet" and not output:
        _fail("--format parquet writes a file: add --output FILE", 2)
    settings = _settings()
    try:
        price = Decimal(credit_price) if credit_price is not None else settings.credit_price
    except InvalidOperation:
        _fail(f"--credit-price {credit_price!r} is not a number", 2)
    plan_options = {}
    if name == "plan":
        if method not in reports.PLAN_METHODS:
            _fail(f"unknown --method {method!r}; choose {', '.join(reports.PLAN_METHODS)}", 2)
        try:
            plan_options = {"method": method, "reserve_pct": Decimal(reserve_pct),
                            "budget": None if budget is None else Decimal(budget)}
        except InvalidOperation:
            _fail(f"--budget {budget!r} and --reserve-pct {reserve_pct!r} must be numbers", 2)
    params = reports.Params(tenant=tenant, account=account, start=_day(start, "--from"), end=_day(end, "--to"),
                            mapping=reports.read_mapping(mapping) if mapping else {}, z=z,
                            currency=currency or settings.billing_currency, credit_price=price, **plan_options)
    reader = open_reader(settings)
    today = datetime.now(timezone.utc).date()
    if name == "plan":
        _report_plan(reader, params, today, fmt, output, plot)
        return
    if fmt in ("csv", "parquet") and name not in reports.PYTHON_REPORTS and not plot:  # ClickHouse writes it
        try:
            data = reports.export(reader, name, params, today, "Parquet" if fmt == "parquet" else "CSVWithNames")
        finally:
            reader.close()
        _write_bytes(data, output)
        return
    try:
        result = reports.run(reader, name, params, today)
        if plot:
            from .projections.plot import plot as draw

            draw(result, plot, reader)
    finally:
        reader.close()
    _write_rows(result.columns, result.rows, fmt, output, title=f"{name} {result.params.start} .. {result.params.end}")
    if plot:
        err.print(f"plot written to {plot}")


def _report_plan(reader, params, today, fmt: str, output: Optional[str], plot: Optional[str]) -> None:
    """The plan as a table (or json, csv) on stdout; with --output, its allocate commands as JSONL there."""
    from .projections import reports

    if fmt == "parquet":
        _fail("plan prints its rows and writes JSONL commands (--output); choose table, json or csv", 2)
    try:
        result = reports.run(reader, "plan", params, today)
        if plot:
            from .projections.plot import plot as draw

            draw(result, plot, reader)
            err.print(f"plot written to {plot}")
    finally:
        reader.close()
    _print_rows(result.columns, result.rows, fmt, title=f"plan for {result.rows[0][5] if result.rows else '-'} "
                                                         f"({params.method}; usage {result.params.start} .. "
                                                         f"{result.params.end})")
    if output is None:
        return
    lines = reports.plan_commands(result, datetime.now(timezone.utc).replace(microsecond=0))
    _write_bytes(b"".join(line + b"\n" for line in lines), output)
    err.print(f"{len(lines)} allocate commands for review; then: finops publish {output} --wait", soft_wrap=True)


def _write_bytes(data: bytes, output: Optional[str]) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror}")
    err.print(f"{len(data)} bytes written to {output}")


def _write_rows(columns: list[str], rows: list[tuple], fmt: str, output: Optional[str], title: str) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
        try:
            pq.write_table(table, output)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc}")
        err.print(f"{len(rows)} rows written to {output}")
        return
    if output is None:
        _print_rows(columns, rows, fmt, title)
        return
    try:
        with open(output, "w", newline="") as handle:
            with contextlib.redirect_stdout(handle):
                _print_rows(columns, rows, "csv" if fmt == "table" else fmt, title)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror}")
    err.print(f"{len(rows)} rows written to {output}")


@app.command()
@command
def fold(file: str = typer.Argument(..., help="A JSONL file of wire-v1 messages, or - for stdin."),
         now: Optional[str] = typer.Option(
             None, "--now", metavar="TS",
             help="Judge every line as if Kafka had stored it at this RFC 3339 time: a line whose ts is more "
                  "than FINOPS_MAX_FUTURE_SKEW ahead of it is rejected ts_in_future. Without it the rule is "
                  "skipped (a file has no stored time).")) -> None:
    """Apply a file of messages with the ledger's own code, no Kafka; print the result as JSON.

    The rules are the ledger processor's, with the same settings (FINOPS_ID_HORIZON,
    FINOPS_MAX_FUTURE_SKEW, FINOPS_UNKNOWN_ACCOUNT_GRACE). The end of the file ends every
    grace: usage still held for an account that never opened is rejected unknown_account.

    Exit 0 even when lines are rejected (they are listed); non-zero only when the file
    cannot be read or --now is not a time. Example: finops fold examples/seed.jsonl --now 2026-11-30T12:00:00Z
    """
    from .processors.fold import fold_lines

    stored_at = None
    if now is not None:
        stored_at = _parse_time(now, "--now")
    rules = _rules(_settings())
    if file == "-":
        result = fold_lines(sys.stdin.buffer, now=stored_at, rules=rules)
    else:
        try:
            with open(file, "rb") as handle:
                result = fold_lines(handle, now=stored_at, rules=rules)
        except OSError as exc:
            _fail(f"cannot read {file}: {exc.strerror}")
    sys.stdout.write(json.dumps(result.summary(), indent=2) + "\n")


def _parse_time(text: str, option: str):
    """An RFC 3339 time with an offset, in UTC; exit 2 with one line otherwise."""
    from .schemas import wire

    when = wire.parse_time(text)
    if when is None:
        err.print(f"error: {option} {text!r} is not an RFC 3339 time with an offset, e.g. 2026-11-30T12:00:00Z")
        raise typer.Exit(2)
    return when


def _rules(settings):
    from .processors.state import Rules

    return Rules(id_horizon_s=settings.id_horizon.total_seconds(),
                 max_future_skew_s=settings.max_future_skew.total_seconds(),
                 unknown_account_grace_s=settings.unknown_account_grace.total_seconds())


# ----------------------------------------------------------------------------- tokens


@tokens_app.command("add")
@command
def tokens_add(
    tenant: Optional[str] = typer.Option(None, "--tenant", "-t",
                                         help="Tenant the token acts on; may be left out only with --role admin "
                                              "(then: every tenant)."),
    role: str = typer.Option("read", "--role", help="read (GET endpoints), write (read + POST usage and "
                                                    "commands) or admin (everything)."),
    note: str = typer.Option("", "--note", help="Free text shown by `finops tokens list`."),
) -> None:
    """Create a bearer token; print it alone on stdout, once (the file keeps only its scrypt hash).

    Example: TOKEN=$(finops tokens add --tenant acme --role write --note "billing job")
    """
    from .tokens import ROLES, TokenStore

    if role not in ROLES:
        _fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}", 2)
    if tenant is None and role != "admin":
        _fail(f"--tenant is required for a {role} token (only --role admin may act on every tenant)", 2)
    path = _settings().tokens_path
    token_id, token = TokenStore(path).add(tenant, role=role, note=note)
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    whom = "all tenants" if tenant is None else f"tenant {tenant}"
    err.print(f"token {token_id} for {whom} (role {role}) stored hashed in {path}; it is shown only now",
              markup=False, soft_wrap=True)


@tokens_app.command("list")
@command
def tokens_list(as_json: bool = typer.Option(False, "--json", help="Print JSON (tenant_id null: every tenant).")
                ) -> None:
    """The stored tokens: id, tenant, role, note, created (never a token nor its hash).

    Example: finops tokens list --json
    """
    from .tokens import TokenStore

    path = _settings().tokens_path
    tokens = TokenStore(path).list()
    columns = ["token_id", "tenant_id", "role", "note", "created"]
    if as_json:
        _print_rows(columns, [tuple(t[c] for c in columns) for t in tokens], "json")
        return
    if not tokens:
        err.print(f"no tokens in {path} (create one with `finops tokens add`)", markup=False, soft_wrap=True)
        return
    _print_rows(columns, [(t["token_id"], "(all)" if t["tenant_id"] is None else t["tenant_id"], t["role"],
                           t["note"], t["created"]) for t in tokens], "table")


@tokens_app.command("revoke")
@command
def tokens_revoke(token_id: str = typer.Argument(..., help="The token's id (`finops tokens list`).")) -> None:
    """Remove a token; a running `finops serve` refuses it within about a second.

    Example: finops tokens revoke 3f9c0a1b
    """
    from .tokens import TokenStore

    path = _settings().tokens_path
    if not TokenStore(path).revoke(token_id):
        _fail(f"no token {token_id!r} in {path}")
    err.print(f"token {token_id} revoked", markup=False)


# ----------------------------------------------------------------------------- bench


BENCH_HELP = (
    "Benchmark to run: fold (pure ledger), ledger (the Kafka processor against raw confluent-kafka, on a "
    "dedicated broker), reports (every report on generated ClickHouse data), sink (the sink's ClickHouse write "
    "path, no Kafka), alerts (publish-to-alert latency under steady load; --events is events per second), "
    "balance-latency (publish-to-balance latency under steady load; --events is events per second), sdk "
    "(UsageProducer against raw confluent-kafka produce), e2e (publish to ClickHouse rows through `finops run "
    "ledger` and `finops run sink` child processes), ledger-memory (peak RSS of `finops run ledger` folding "
    "100,000 accounts), busy-tenant (one busy tenant published into a running `finops run ledger`, kill -9 at "
    "half, vs 50 small tenants; checked against finops fold), serve (GET /v1/check of a `finops serve` child at "
    "1,000 requests/s from an open-loop load generator, and the live view's lag after usage bursts; --events is "
    "requests per second) or all (every one, the Kafka ones on one shared broker: one JSON with the headline "
    "figures, each benchmark's own JSON under details).")


def _bench_package(root: Path | None = None):
    """The checkout's ``bench`` package, next to the ``finops`` package's source (the install is
    editable); exit 1 with one line when there is none (an installed wheel)."""
    import importlib

    if root is None:
        import finops

        root = Path(finops.__file__).resolve().parents[1]
    if not ((root / "pyproject.toml").is_file() and (root / "bench" / "__init__.py").is_file()):
        _fail("benchmarks run from a source checkout (its bench/ package); this finops is installed without one")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("bench")
    if Path(module.__file__).resolve().parent != root / "bench":
        _fail(f"another module named bench ({module.__file__}) hides the checkout's {root / 'bench'}")
    return module


@app.command()
@command
def bench(
    name: str = typer.Argument("fold", help=BENCH_HELP),
    events: Optional[int] = typer.Option(None, help="Usage events per run; for reports and sink, rows; for "
                                                    "alerts and balance-latency, events per second (default: "
                                                    "fold/ledger/sdk 200000, reports 10000000, sink 500000, "
                                                    "alerts/balance-latency 10000, e2e/ledger-memory 1000000, "
                                                    "busy-tenant 3000000; smaller with --quick)."),
    repeats: Optional[int] = typer.Option(None, help="Runs; the median is reported (default: 3 where a run is "
                                                     "short, else 1)."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes and fewer repeats (all: under 8 minutes on "
                                                      "2 cores)."),
    output: Optional[Path] = typer.Option(None, "--out", "--json", "-o", help="Also write the JSON to this file."),
) -> None:
    """Measure throughput and latency and print one JSON document (speed is measured here, not in tests).

    Runs from a source checkout: the benchmarks are its bench/ package; `python -m bench NAME` from its root is the same.

    `all` exits 1 when any benchmark failed (each failure is under details, its figures null).

    Example: finops bench all --quick --json bench/results/all-quick.json
    """
    bench_mod = _bench_package()
    if name not in bench_mod.NAMES:
        _fail(f"unknown benchmark {name!r}; choose from {', '.join(bench_mod.NAMES)}", 2)
    if name == "all" and (events is not None or repeats is not None):
        _fail("bench all takes --quick, not --events or --repeats", 2)
    _setup_logging(False)
    result = bench_mod.run(name, events=events, repeats=repeats, quick=quick,
                           log=lambda m: err.print(m, soft_wrap=True, markup=False))
    text = json.dumps(result, indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    if result.get("failed"):
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- demo


@app.command()
@command
def demo(
    usage: int = typer.Option(3000, help="Usage events to generate."),
    tenants: int = typer.Option(2, help="Tenants to generate."),
    days: float = typer.Option(14, help="The usage spans the days that end now."),
    serve: bool = typer.Option(False, "--serve", help="Then keep the pipeline running with the HTTP API and its "
                                                      "console (FINOPS_API_PORT) until Ctrl-C; prints the URL "
                                                      "and an admin token."),
    as_json: bool = typer.Option(False, "--json", help="Print the balances, spend, runway and reconciliation "
                                                       "as JSON."),
) -> None:
    """Run the whole pipeline on the embedded defaults and show what it computed.

    Starts the broker if needed, runs the processors, publishes a generated workload whose
    usage spans the days that end now (so every report as of today shows it), waits until it
    is processed, prints balances, spend per team, the runway of each tenant and team and the
    reconciliation, stops what it started. Exit 1 when the balances differ from `finops fold`
    of the same input or a tenant does not reconcile. Example: finops demo --usage 10000 --serve
    """
    from . import demo as demo_mod

    _setup_logging(False)
    if days <= 0:
        _fail(f"--days must be positive, not {days:g}", 2)
    settings = _settings()

    def show(result) -> None:
        if as_json:
            columns, rows = result.spend_by_team
            out.print_json(json.dumps({
                "tenants": result.workload.tenants, "matches_fold": result.matches_fold,
                "reconciled": result.reconciled, "usage_rows": result.usage_rows,
                "seconds": round(result.seconds, 2), "as_of": result.as_of,
                "balances": [dict(zip(["tenant", "account", "kind", "available", "consumed", "overage"], b))
                             for b in result.balances],
                "spend_by_team": [dict(zip(columns, r)) for r in rows],
                "runway": records(*result.runway), "reconcile": records(*result.reconcile)}, default=str))
            return
        _print_rows(["tenant", "account", "kind", "available", "consumed", "overage"], result.balances, "table",
                    title="Balances (finops.balances.v1)")
        columns, rows = result.spend_by_team
        _print_rows(columns, [(t, team, n, f"{c:.6f}") for t, team, n, c in rows], "table",
                    title="Spend per team (ClickHouse: mv_credits_by_team)")
        columns, rows = result.runway
        keep = ["tenant_id", "account_id", "kind", "capacity", "daily_burn", "runway_days", "runs_out_on",
                "window_end"]
        _print_rows(keep, [tuple(r[columns.index(c)] for c in keep) for r in rows], "table",
                    title=f"Runway as of {result.as_of} (finops report runway: capacity and burn of each subtree)")
        columns, rows = result.reconcile
        _print_rows(columns, rows, "table", title=f"Reconciliation as of {result.as_of} (finops report reconcile)")
        tenants_sql = ", ".join(f"'{t}'" for t in result.workload.tenants)
        out.print(f"usage rows in ClickHouse for this run: {result.usage_rows}; "
                  f"balances match `finops fold` of the same input: {'yes' if result.matches_fold else 'NO'}; "
                  f"every tenant reconciles: {'yes' if result.reconciled else 'NO'}; {result.seconds:.1f} s")
        out.print(f'try: finops report forecast --tenant {result.workload.tenants[0]}   or   '
                  f'finops sql "SELECT model_name, sum(credits_micros)/1e6 FROM mv_model_costs '
                  f'WHERE tenant_id IN ({tenants_sql}) GROUP BY model_name"', soft_wrap=True)

    def serving(result, where) -> None:
        show(result)
        err.print(f"console: {where.url}  (log in with the admin token: {where.token})", soft_wrap=True)
        err.print(f"the pipeline and the HTTP API keep running on {settings.bootstrap}; Ctrl-C stops", soft_wrap=True)

    from .projections.reports import records

    if serve:
        signal.signal(signal.SIGTERM, _interrupt)  # ends a served demo like Ctrl-C: stops what it started
    result = demo_mod.run(settings, usage=usage, tenants=tenants, days=days,
                          log=lambda m: err.print(m, soft_wrap=True), serve=serving if serve else None)
    if not serve:
        show(result)
    if not result.ok:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
