"""Reading ClickHouse from any terminal, embedded or server.

With a server (``FINOPS_CLICKHOUSE_URL=http://...``) every reader has its own
clickhouse-connect client. Embedded chdb holds its data directory for one process only,
so the process that owns it (``finops run`` with the sink) serves queries for the
others: it listens on 127.0.0.1 (a free port) and writes the address and a random token
to ``<chdb path>.query.json`` (mode 0600). ``open_reader`` finds that file, checks that the
owner is alive, and sends its SQL there; the answer comes back as Arrow (typed) or in the
ClickHouse output format asked for (CSV, Parquet, ...).

Limits: the owner runs one statement at a time, between sink inserts, so a heavy query
slows ingestion and queries queue behind each other. Good for a few people on one machine;
for many users, or dashboards, use a ClickHouse server (compose.yaml runs one).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib import error as urlerror
from urllib import request as urlrequest

import pyarrow as pa

from ..settings import Settings
from . import clickhouse

log = logging.getLogger("finops.query")

ARROW_SETTINGS = {"output_format_arrow_string_as_string": 1, "output_format_arrow_low_cardinality_as_dictionary": 0}


class Reader(Protocol):
    """What reports and ``finops sql`` read ClickHouse through: :class:`LocalReader` or :class:`RemoteReader`
    (from :func:`open_reader`). Every method raises :class:`~finops.projections.clickhouse.ClickHouseError`
    with one line."""

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run ``sql`` with ClickHouse ``{name:Type}`` ``parameters``: (column names, rows as tuples)."""

    def raw(self, sql: str, parameters: dict[str, Any] | None = None, fmt: str = "CSVWithNames") -> bytes:
        """Run ``sql`` and return the answer as bytes in ClickHouse output format ``fmt`` (CSV, Parquet, ...)."""

    def close(self) -> None:
        """Release the client, if this reader owns one."""


class LocalReader:
    """A reader on a client of this process (a server, or chdb this process owns)."""

    def __init__(self, client, lock: threading.RLock | None = None, owned: bool = True) -> None:
        self.client = client
        self.lock = lock or threading.RLock()
        self.owned = owned

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of ``sql``, one statement at a time under the lock."""
        with self.lock:
            return clickhouse.query(self.client, sql, parameters)

    def raw(self, sql: str, parameters: dict[str, Any] | None = None, fmt: str = "CSVWithNames",
            settings: dict | None = None) -> bytes:
        """The answer to ``sql`` in output format ``fmt``; a driver error becomes a one-line
        :class:`~finops.projections.clickhouse.ClickHouseError`."""
        with self.lock:
            try:
                return self.client.raw_query(sql, parameters=parameters, fmt=fmt, settings=settings)
            except Exception as exc:  # one line for people, whatever the driver raised
                raise clickhouse.ClickHouseError(clickhouse.first_line(exc)) from exc

    def close(self) -> None:
        """Close the client when this reader owns it (``owned``); a shared one stays open."""
        if self.owned:
            self.client.close()


class RemoteReader:
    """A reader that sends SQL to the process owning the embedded ClickHouse."""

    def __init__(self, url: str, token: str, timeout: float = 300.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def raw(self, sql: str, parameters: dict[str, Any] | None = None, fmt: str = "CSVWithNames",
            settings: dict | None = None) -> bytes:
        """POST ``sql`` to the owner's ``/query``; the answer in output format ``fmt``. Raises
        :class:`~finops.projections.clickhouse.ClickHouseError` with the owner's message, or when it does
        not answer within ``timeout`` seconds."""
        body = json.dumps({"sql": sql, "parameters": parameters or {}, "format": fmt,
                           "settings": settings or {}}, default=str).encode()
        req = urlrequest.Request(f"{self.url}/query", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {self.token}",
                                          "Content-Type": "application/json"})
        try:
            with urlrequest.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urlerror.HTTPError as exc:
            raise clickhouse.ClickHouseError(exc.read().decode(errors="replace").strip() or str(exc)) from exc
        except OSError as exc:
            raise clickhouse.ClickHouseError(f"the process owning the embedded ClickHouse at {self.url} did not "
                                             f"answer: {exc}") from exc

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of ``sql``, sent as Arrow so the values come back typed."""
        data = self.raw(sql, parameters, "ArrowStream", ARROW_SETTINGS)
        if not data:
            return [], []
        table = pa.ipc.open_stream(data).read_all()
        columns = [c.to_pylist() for c in table.columns]
        return list(table.column_names), list(zip(*columns)) if columns else []

    def close(self) -> None:
        """Nothing to release: every request is its own HTTP connection."""


def endpoint_file(settings: Settings) -> Path | None:
    """Where the owner of an embedded ClickHouse advertises its query endpoint (None for a server)."""
    dsn = settings.clickhouse_dsn
    if not dsn.startswith("chdb://"):
        return None
    return Path(dsn.removeprefix("chdb://").split("?", 1)[0].rstrip("/") + ".query.json")


def open_reader(settings: Settings) -> Reader:
    """A reader for this terminal: the server, the owner of chdb, or chdb itself when nobody owns it."""
    path = endpoint_file(settings)
    if path is not None and path.exists():
        try:
            info = json.loads(path.read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            info = None  # stale: its owner is gone
        if info is not None:
            return RemoteReader(info["url"], info["token"])
    try:
        return LocalReader(clickhouse.connect(settings))
    except clickhouse.ClickHouseError as exc:
        if path is not None and "lock" in str(exc).lower():
            raise clickhouse.ClickHouseError(
                f"the embedded ClickHouse at {settings.clickhouse_dsn} is held by another process that does not "
                "serve queries; stop it, or run the pipeline with the sink (`finops run`), which serves them, "
                "or use a ClickHouse server (FINOPS_CLICKHOUSE_URL)") from exc
        raise


class QueryServer:
    """Serves SQL for other processes on 127.0.0.1, through ``reader`` (this process's client)."""

    def __init__(self, settings: Settings, reader: LocalReader) -> None:
        self.path = endpoint_file(settings)
        self.reader = reader
        self.token = secrets.token_urlsafe(24)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.reader, self.token))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="finops-query", daemon=True)

    def start(self) -> QueryServer:
        """Start serving and advertise the address and token in the endpoint file (mode 0600)."""
        self.thread.start()
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"url": self.url, "token": self.token, "pid": os.getpid()}, handle)
            os.replace(tmp, self.path)
        log.info("serving queries for other processes at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving; remove the endpoint file if this process wrote it."""
        if self.path is not None:
            try:
                info = json.loads(self.path.read_text())
                if info.get("pid") == os.getpid():
                    self.path.unlink()
            except (OSError, ValueError):
                pass
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(reader: LocalReader, token: str) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            if self.path != "/query":
                return self._send(404, b"not found")
            if not secrets.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                return self._send(401, b"bad token")
            try:
                ask = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                data = reader.raw(ask["sql"], ask.get("parameters") or None, ask.get("format") or "CSVWithNames",
                                  ask.get("settings") or None)
            except clickhouse.ClickHouseError as exc:
                return self._send(400, str(exc).encode())
            except (ValueError, KeyError) as exc:
                return self._send(400, f"bad request: {exc}".encode())
            self._send(200, data)

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug("query endpoint: " + fmt, *args)

    return Handler
