"""``finops tokens add|list|revoke``: the bearer tokens of the HTTP API, stored hashed (the
library: ``finops/tokens.py``)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .common import app, command, err, fail, load_settings, print_rows

tokens_app = typer.Typer(help="Bearer tokens of the HTTP API (`finops serve`), stored hashed in FINOPS_TOKENS_FILE.",
                         no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


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
    from ..tokens import ROLES, TokenStore

    if role not in ROLES:
        fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}", 2)
    if tenant is None and role != "admin":
        fail(f"--tenant is required for a {role} token (only --role admin may act on every tenant)", 2)
    path = load_settings().tokens_path
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
    from ..tokens import TokenStore

    path = load_settings().tokens_path
    tokens = TokenStore(path).list()
    columns = ["token_id", "tenant_id", "role", "note", "created"]
    if as_json:
        print_rows(columns, [tuple(t[c] for c in columns) for t in tokens], "json")
        return
    if not tokens:
        err.print(f"no tokens in {path} (create one with `finops tokens add`)", markup=False, soft_wrap=True)
        return
    print_rows(columns, [(t["token_id"], "(all)" if t["tenant_id"] is None else t["tenant_id"], t["role"],
                          t["note"], t["created"]) for t in tokens], "table")


@tokens_app.command("revoke")
@command
def tokens_revoke(token_id: str = typer.Argument(..., help="The token's id (`finops tokens list`).")) -> None:
    """Remove a token; a running `finops serve` refuses it within about a second.

    Example: finops tokens revoke 3f9c0a1b
    """
    from ..tokens import TokenStore

    path = load_settings().tokens_path
    if not TokenStore(path).revoke(token_id):
        fail(f"no token {token_id!r} in {path}")
    err.print(f"token {token_id} revoked", markup=False)
