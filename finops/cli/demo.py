"""``finops demo``: the whole pipeline on the embedded defaults, and what it computed (the
library: ``finops/demo.py``)."""

from __future__ import annotations

import json

import typer

from .common import app, command, err, fail, load_settings, out, print_rows, setup_logging


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
    from .. import demo as demo_mod

    setup_logging(False)
    if days <= 0:
        fail(f"--days must be positive, not {days:g}", 2)
    settings = load_settings()

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
        print_rows(["tenant", "account", "kind", "available", "consumed", "overage"], result.balances, "table",
                   title="Balances (finops.balances.v1)")
        columns, rows = result.spend_by_team
        print_rows(columns, [(t, team, n, f"{c:.6f}") for t, team, n, c in rows], "table",
                   title="Spend per team (ClickHouse: mv_credits_by_team)")
        columns, rows = result.runway
        keep = ["tenant_id", "account_id", "kind", "capacity", "daily_burn", "runway_days", "runs_out_on",
                "window_end"]
        print_rows(keep, [tuple(r[columns.index(c)] for c in keep) for r in rows], "table",
                   title=f"Runway as of {result.as_of} (finops report runway: capacity and burn of each subtree)")
        columns, rows = result.reconcile
        print_rows(columns, rows, "table", title=f"Reconciliation as of {result.as_of} (finops report reconcile)")
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

    from ..projections.reports import records

    if serve:
        from ..supervisor import sigterm_interrupts

        sigterm_interrupts()  # ends a served demo like Ctrl-C: stops what it started
    result = demo_mod.run(settings, usage=usage, tenants=tenants, days=days,
                          log=lambda m: err.print(m, soft_wrap=True), serve=serving if serve else None)
    if not serve:
        show(result)
    if not result.ok:
        raise typer.Exit(1)
