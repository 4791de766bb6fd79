"""The tick scheduler: a ``tick`` per tenant every interval, so that expiries, window ends,
monthly renewals and hold releases happen on time even when a tenant sends nothing.

Ticks carry wall-clock time rounded down to the interval, and their id is
``tick:<tenant>:<epoch seconds>``: two schedulers (or a restarted one) send byte-identical
ticks, which the ledger takes once. The tenants to tick come from whoever assembles the
scheduler (``finops run``: the tenants with a balance on ``finops.balances.v1``, see
finops/pipeline.py): a producer does not read the projections itself (docs/architecture.md).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import msgspec

from .. import clients
from ..schemas import topics
from ..schemas.wire import format_time
from ..service import Service
from ..settings import Settings

log = logging.getLogger("finops.scheduler")


def tick_lines(tenants: set[str], now: float, every: float) -> list[tuple[str, bytes]]:
    """(tenant, tick message) for each tenant at ``now`` rounded down to the interval."""
    at = int(now // every * every)
    ts = format_time(at, "seconds")
    return [(tenant, msgspec.json.encode({"type": "tick", "id": f"tick:{tenant}:{at}", "tenant_id": tenant,
                                          "ts": ts}))
            for tenant in sorted(tenants)]


class Scheduler(Service):
    """Publishes a tick per tenant at every ``every`` seconds of wall time, on the interval's boundary.

    ``tenants()`` returns the tenant ids to tick; it is asked again at each interval, so a
    new tenant is ticked from the next one on.
    """

    def __init__(self, settings: Settings, every: float = 60.0, *, tenants: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self.settings = settings
        self.every = every
        self.tenants = tenants
        self.sent = 0
        self.producer = clients.producer(settings)

    def tick(self, now: float | None = None) -> int:
        """Publish this interval's ticks (``now``: epoch seconds, default the wall clock); how many."""
        tenants = set(self.tenants())
        for tenant, line in tick_lines(tenants, time.time() if now is None else now, self.every):
            self.producer.produce(topics.COMMANDS, line, tenant.encode())
        remaining = self.producer.flush(30)
        if remaining:
            log.warning("%d ticks not delivered yet", remaining)
        self.sent += len(tenants)
        return len(tenants)

    def step(self) -> int:
        """Publish this interval's ticks, then wait (wall time) for the next interval's boundary or a stop;
        the number of ticks sent."""
        sent = self.tick()
        self._stop.wait(self.every - time.time() % self.every)  # until the next interval boundary
        return sent

    def close(self) -> None:
        """Flush the ticks still queued (10 s at most)."""
        self.producer.flush(10)
