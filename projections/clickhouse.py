"""ClickHouse access through clickhouse-connect only: connect, migrate, query.

The same DDL and SQL run on chdb (embedded, ``chdb:///path``) and on a server
(``http(s)://host:8123``). Migrations are the numbered files in ``migrations/``; each is
applied once and recorded in ``schema_migrations``.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from .. import clients
from ..errors import FinopsError
from ..settings import Settings

MIGRATIONS_TABLE = "schema_migrations"


class ClickHouseError(FinopsError):
    """ClickHouse could not be reached or refused a statement; one line for people."""


def connect(settings: Settings, *, migrate: bool = True, lock_wait_s: float = 0.0):
    """A client on ``settings.clickhouse_database``, with every migration applied.

    ``lock_wait_s``: embedded chdb is held by one process at a time; a long-running owner
    (the sink) waits this long for a short-lived one (``finops sql`` started first) to finish.
    """
    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            client = clients.clickhouse(settings)
            client.command(f"CREATE DATABASE IF NOT EXISTS {settings.clickhouse_database}")
            break
        except Exception as exc:  # the drivers raise many types; the caller wants one line
            if "lock" in str(exc).lower() and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise ClickHouseError(f"cannot open ClickHouse at {settings.clickhouse_dsn}: {first_line(exc)}") from exc
    client.database = settings.clickhouse_database
    if migrate:
        apply_migrations(client)
    return client


def migrations() -> list[tuple[str, str]]:
    """``(version, SQL text)`` of each file in ``migrations/``, in version order."""
    folder = resources.files(__package__) / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


def apply_migrations(client) -> list[str]:
    """Apply every migration not yet recorded in ``schema_migrations``; the versions applied now.
    A statement ClickHouse refuses propagates as the driver's error."""
    client.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version String, applied_at DateTime64(3, 'UTC') "
        "DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version")
    done = {row[0] for row in client.query(f"SELECT version FROM {MIGRATIONS_TABLE}").result_rows}
    applied = []
    for version, text in migrations():
        if version in done:
            continue
        for statement in split_statements(text):
            client.command(statement)
        client.insert(MIGRATIONS_TABLE, [[version]], column_names=["version"])
        applied.append(version)
    return applied


def split_statements(text: str) -> list[str]:
    """Split a migration file on ';' at line ends, dropping comment-only pieces."""
    pieces = []
    for piece in text.split(";\n"):
        body = "\n".join(line for line in piece.splitlines() if not line.strip().startswith("--")).strip()
        if body.rstrip(";"):
            pieces.append(body.rstrip(";"))
    return pieces


def query(client, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run a query; (column names, rows). Raises :class:`ClickHouseError` with one line."""
    try:
        result = client.query(sql, parameters=parameters)
    except Exception as exc:
        raise ClickHouseError(first_line(exc)) from exc
    return list(result.column_names), [tuple(r) for r in result.result_rows]


def first_line(exc: Exception) -> str:
    """The first non-blank line of an error's text (at most 300 characters), or its type's name."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return type(exc).__name__
