"""Queries: ``finops balance`` (current balances, from the balances topic:
``projections/balances.py``) and ``finops sql`` (SQL on the ClickHouse history:
``projections/query.py``). The reports are ``report.py``."""

from __future__ import annotations

from typing import Optional

import typer

from .common import app, command, fail, load_settings, out, print_rows, setup_logging


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

    from ..projections.balances import read_balances

    setup_logging(False)
    balances = read_balances(load_settings(), tenant_id=tenant)
    if account is not None:
        b = balances.get((tenant, account))
        if b is None:
            fail(f"no balance for account {account!r} of tenant {tenant!r} (is `finops run` processing?)")
        chosen = [b]
    else:
        chosen = [b for _key, b in sorted(balances.items())]
        if not chosen:
            fail(f"no balances for tenant {tenant!r} (is `finops run` processing?)")
    if as_json:
        out.print_json(msgspec.json.encode(chosen[0] if account is not None else chosen).decode())
    else:
        print_rows(["tenant", "account", "kind", "available", "consumed", "reserved", "overage", "as of"],
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
    from ..projections.query import open_reader

    if fmt not in ("table", "json", "csv"):
        fail(f"unknown format {fmt!r}; choose table, json or csv", 2)
    reader = open_reader(load_settings())
    try:
        columns, rows = reader.query(query)
    finally:
        reader.close()
    print_rows(columns, rows, fmt)
