"""``finops serve``: the HTTP API and its console (the library: ``finops/api.py``)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import app, command, err, load_settings, setup_logging


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
    from ..api import ApiServer

    setup_logging(verbose)
    settings = load_settings()
    server = ApiServer(settings, host=host, port=port, insecure_local=insecure_local)
    config = server.server.config
    err.print(f"serving the API on http://{config.host}:{config.port} (docs at /docs) against "
              f"{settings.bootstrap}; tokens in {settings.tokens_path}"
              f"{'; no token needed from 127.0.0.1' if insecure_local else ''} (Ctrl-C stops)")
    server.run()
