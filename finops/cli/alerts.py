"""``finops alerts tail|receive``: follow the alerts topic (the reader: ``producers/alert_tail.py``),
and a webhook receiver for trying ``finops run webhooks`` (``producers/webhooks.py``)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Optional

import typer

from .common import app, command, err, fail, load_settings, out, setup_logging

alerts_app = typer.Typer(help="Alerts on finops.alerts.v1.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


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
    from ..producers.alert_tail import tail_alerts
    from ..producers.webhooks import SEVERITIES

    if severity not in SEVERITIES:
        fail(f"unknown severity {severity!r}; choose {', '.join(SEVERITIES)}", 2)
    setup_logging(False)
    settings = load_settings()
    alerts = tail_alerts(settings, tenant=tenant, min_severity=severity, from_beginning=from_beginning,
                         count=count, timeout=timeout)
    with contextlib.closing(alerts):
        for value, alert in alerts:
            if as_json:
                sys.stdout.write(value.decode() + "\n")
                sys.stdout.flush()
            else:
                print_alert(alert)


def print_alert(alert: dict) -> None:
    """One line for a person: time, severity (or "resolved"), tenant/account, type, period,
    usage of allocation and threshold; colored by severity on a terminal."""
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
    from ..producers.webhooks import Receiver

    settings = load_settings()
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None

    def show(alert: dict) -> None:
        if as_json:
            sys.stdout.write(json.dumps(alert) + "\n")
            sys.stdout.flush()
        else:
            print_alert(alert)

    try:
        receiver = Receiver(host, port, secret, show)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    err.print(f"receiving webhooks on http://{host}:{receiver.address[1]}/ "
              f"({'checking signatures' if secret else 'FINOPS_WEBHOOK_SECRET unset: signatures not checked'})")
    receiver.serve(count=count, timeout=timeout)
    err.print(f"{receiver.received} alerts received, {receiver.refused} refused")
