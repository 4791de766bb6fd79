"""Data in: ``finops publish`` (a JSONL file of wire-v1 messages), ``finops simulate`` (generated
traffic) and ``finops wait`` (until the ledger and the sink have processed everything published)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import FinopsError
from ..settings import Settings
from .common import app, command, err, fail, load_settings, out, progress, setup_logging


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
    from ..producers.publish import publish_lines

    setup_logging(False)
    settings = load_settings()
    with progress("publishing") as update:
        if file == "-":
            report = publish_lines(settings, sys.stdin.buffer, validate=not raw, progress=update)
        else:
            path = Path(file)
            if not path.is_file():
                fail(f"cannot read {file}: no such file")
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
    from ..waiting import wait_processed

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
    from ..producers import simulate as sim

    setup_logging(False)
    try:
        simulation = sim.Simulation(tenants=tenants, accounts_per_tenant=accounts_per_tenant, rate=rate,
                                    duration=duration, speed=speed, spikes=tuple(spike or ()),
                                    spike_length=spike_length, bad_fraction=bad_fraction, seed=seed)
    except FinopsError as exc:
        fail(str(exc), 2)  # a bad option value
    total = int(rate * duration)  # requests, about: the daily cycle and spikes move it
    settings = load_settings()
    if output is not None:
        try:
            handle = output.open("wb")
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror}")
        with handle, progress(f"writing {output}", total) as update:
            report = sim.run(simulation, lambda lines: handle.writelines(line + b"\n" for line in lines),
                             paced=False, progress=update, setup=setup)
        sent = None
    else:
        from ..producers.publish import Publisher

        publisher = Publisher(settings)
        with progress(f"simulating {simulation.tenants[0]}{' ...' if tenants > 1 else ''}", total) as update:
            report = sim.run(simulation, publisher.send_all, paced=True,
                             progress=update, setup=setup)
        sent = publisher.close()
        if sent.failed:
            fail(f"{sent.failed} messages were not delivered: {sent.errors[0]}")
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
    from ..waiting import wait_processed

    setup_logging(False)
    waited = wait_processed(load_settings(), timeout=timeout, sink=None if sink else False,
                            log=lambda m: None if as_json else err.print(m))
    if as_json:
        out.print_json(json.dumps(waited))
