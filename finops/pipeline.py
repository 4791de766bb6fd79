"""Runs the processors of one process in threads: the ledger processor and the ClickHouse sink.

In embedded mode (chdb) this process owns the ClickHouse data directory, so the sink
and anything that queries ClickHouse here share one client and one lock, and a query
endpoint on 127.0.0.1 answers ``finops sql`` and ``finops report`` from other terminals
(see ``projections/query.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .errors import FinopsError
from .processors.runner import LedgerProcessor, Stuck
from .producers.scheduler import Scheduler
from .producers.webhooks import WebhookForwarder
from .projections.balances import read_balances
from .projections.query import LocalReader, QueryServer, endpoint_file
from .projections.sink import Sink
from .settings import Settings

log = logging.getLogger("finops.pipeline")

PARTS = ("ledger", "sink", "scheduler", "webhooks", "notify", "serve")
DEFAULT_PARTS = ("ledger", "sink")  # the scheduler sends wall-clock ticks: `finops run` adds it
RUN_PARTS = ("ledger", "sink", "scheduler")  # `finops run` with no names; webhooks, notify and serve when named


class Pipeline:
    """Start, watch and stop the chosen processors; a crash in one stops all and is re-raised."""

    def __init__(self, settings: Settings, parts: tuple[str, ...] = DEFAULT_PARTS, *, instance: str = "0",
                 batch_max: int = 20_000, batch_s: float = 0.1, tick_every: float = 60.0,
                 webhook: dict | None = None, serve: dict | None = None, notify: dict | None = None) -> None:
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise FinopsError(f"unknown processor {sorted(unknown)[0]!r}; choose from {', '.join(PARTS)}")
        self.ledger = (LedgerProcessor(settings, instance=instance, batch_max=batch_max, batch_s=batch_s)
                       if "ledger" in parts else None)
        self.sink = Sink(settings) if "sink" in parts else None
        self.scheduler = (Scheduler(settings, tick_every, tenants=lambda: {t for t, _a in read_balances(settings)})
                          if "scheduler" in parts else None)
        self.webhooks = None
        if "webhooks" in parts:
            options = dict(webhook or {})
            url = options.pop("url", None) or settings.webhook_url
            if not url:
                raise FinopsError("webhooks need a receiver: --url URL or FINOPS_WEBHOOK_URL")
            self.webhooks = WebhookForwarder(settings, url, **options)
        self.notify = None
        if "notify" in parts:  # alert routing (producers/notify.py): routes = a file path or loaded Routes
            from .producers.notify import Notifier

            options = dict(notify or {})
            routes = options.pop("routes", None)
            if not routes:
                raise FinopsError("notify needs a routes file: --routes FILE (see docs/notify.md)")
            self.notify = Notifier(settings, routes, **options)
        self.query_server = None
        if self.sink is not None and endpoint_file(settings) is not None:  # embedded: we own chdb, serve others
            self.query_server = QueryServer(settings, LocalReader(self.sink.client, self.sink.lock, owned=False))
        self.api = None
        if "serve" in parts:  # the HTTP API (finops/api.py); with the sink here it queries the sink's client
            from .api import ApiServer

            reader = ((lambda: LocalReader(self.sink.client, self.sink.lock, owned=False))
                      if self.sink is not None else None)
            self.api = ApiServer(settings, reader=reader, **(serve or {}))
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._stopped = threading.Event()

    def _parts(self) -> list[tuple[str, object]]:
        return [(n, p) for n, p in (("ledger", self.ledger), ("sink", self.sink), ("scheduler", self.scheduler),
                                    ("webhooks", self.webhooks), ("notify", self.notify), ("serve", self.api))
                if p is not None]

    def start(self) -> Pipeline:
        """Start the query server (embedded ClickHouse) and each processor in a daemon thread of its own."""
        if self.query_server is not None:
            self.query_server.start()
        for name, part in self._parts():
            thread = threading.Thread(target=self._guard(part.run), name=f"finops-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _guard(self, run: Callable[[], None]) -> Callable[[], None]:
        def target() -> None:
            try:
                run()
            except BaseException as exc:  # noqa: BLE001 - reported to the owner, not lost
                log.error("processor stopped: %s", exc)
                self._errors.append(exc)
                self._stopped.set()
        return target

    def wait(self, timeout: float, stuck_after: float = 180.0) -> bool:
        """Block until a processor fails (then raise its error) or the timeout passes.

        Raises :class:`Stuck` when the ledger's transaction has been open for longer
        than ``stuck_after`` seconds (the thread cannot be interrupted; the caller exits).
        """
        deadline = time.monotonic() + timeout
        while not self._stopped.wait(min(1.0, max(deadline - time.monotonic(), 0))):
            if self.ledger is not None and self.ledger.stuck_for() > stuck_after:
                raise Stuck(f"a ledger transaction has been open for over {stuck_after:g} s "
                            "(Kafka client stuck after a coordinator loss); exiting to restart clean")
            if time.monotonic() >= deadline:
                break
        self.raise_failure()
        return self._stopped.is_set()

    def raise_failure(self) -> None:
        """Raise the first error a processor stopped with, if any."""
        if self._errors:
            raise self._errors[0]

    def stop(self) -> None:
        """Ask every processor to stop and wait for each thread (30 s at most), then stop the query server."""
        for _name, part in self._parts():
            part.stop()
        for thread in self._threads:
            thread.join(30)
        if self.query_server is not None:
            self.query_server.stop()
        self._stopped.set()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
