"""What several test folders share: waiting on a condition, a free local port, a bearer header,
a local HTTP endpoint that answers POSTs,
and the thin slice (publish, ledger, sink, balances) that tests/e2e/test_pipeline.py and
tests/integration/test_docker.py both run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from finops import clients
from finops.demo import fold_differences
from finops.pipeline import Pipeline
from finops.processors.fold import fold_lines
from finops.producers.publish import publish_lines
from finops.producers.workload import generate
from finops.projections.balances import read_balances
from finops.schemas.outputs import LedgerEntry
from finops.waiting import wait_processed


def wait_until(condition, timeout: float, what: str, pipeline: Pipeline | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if pipeline is not None:
            pipeline.raise_failure()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def ledger_entry_count(lines: list[bytes]) -> int:
    return sum(isinstance(o, LedgerEntry) for o in fold_lines(lines, keep_outputs=True).outputs)


def tenant_count(pipeline: Pipeline, table: str, tenants: list[str]) -> int:
    sql = f"SELECT count() FROM {table} WHERE tenant_id IN {{tenants:Array(String)}}"
    return int(pipeline.sink.query(sql, {"tenants": tenants})[1][0][0])


def check_thin_slice(settings) -> None:
    """Publish a workload, run ledger + sink, check balances (topic and CLI) and ClickHouse rows."""
    workload = generate(tenants=2, usage=2000, suffix=f"-{uuid.uuid4().hex[:6]}")
    report = publish_lines(settings, workload.lines)
    assert (report.sent, report.failed) == (len(workload.lines), 0)
    with Pipeline(settings) as pipeline:
        ends = clients.input_ends(settings)
        wait_until(lambda: pipeline.ledger.caught_up(ends), 60, "the ledger", pipeline)
        wait_until(lambda: tenant_count(pipeline, "usage_events", workload.tenants) >= 2000, 60,
                   "usage rows in ClickHouse", pipeline)
        expected_entries = ledger_entry_count(workload.lines)
        wait_until(lambda: tenant_count(pipeline, "ledger_entries", workload.tenants) >= expected_entries,
                   60, "ledger rows in ClickHouse", pipeline)
        assert tenant_count(pipeline, "usage_events", workload.tenants) == 2000
        assert tenant_count(pipeline, "ledger_entries", workload.tenants) == expected_entries

    latest = {}
    for tenant in workload.tenants:
        latest.update(read_balances(settings, tenant_id=tenant))
    assert fold_differences(latest, workload) == {}

    # and the CLI answers the same, as a program would read it
    tenant = workload.tenants[0]
    env = {**os.environ, "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap}
    out = subprocess.run([sys.executable, "-m", "finops.cli", "balance", "search", "--tenant", tenant, "--json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    b = latest[(tenant, "search")]
    assert (shown["available"], shown["consumed"], shown["reserved"], shown["overage"]) == (
        b.available, b.consumed, b.reserved, b.overage)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settled(settings, pipeline: Pipeline, client: httpx.Client) -> None:
    """Wait until the ledger committed everything published and ClickHouse and the live view hold it."""
    wait_processed(settings, timeout=120, sink=True)
    view_caught_up(pipeline)


def view_caught_up(pipeline: Pipeline) -> None:
    """Wait until the API's live view has been complete at a moment after now (it holds every
    ledger commit made before this call)."""
    committed_at = time.time()
    view = pipeline.api.view
    wait_until(lambda: view._fresh_at is not None and view._fresh_at > committed_at, 30, "the live view", pipeline)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class PostReceiver:
    """A real HTTP server on ``127.0.0.1:port`` (default: a free one) that answers each POST with
    the status :meth:`answer` returns; not started (or stopped) it refuses connections."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def answer(self, headers, body: bytes) -> int:
        """The HTTP status for one POST (``headers``: the request's; ``body``: its bytes)."""
        raise NotImplementedError

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.answer(self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
