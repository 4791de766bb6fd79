"""Follow ``finops.alerts.v1`` as alerts are raised: the reader behind ``finops alerts tail``.

Like the webhook forwarder and the notifier (``webhooks.py``, ``notify.py``) it consumes the
alerts topic; unlike them it commits nothing and keeps no place: every call reads with a consumer
group of its own (``<FINOPS_GROUP_PREFIX>-tail-<pid>-<unix seconds>``), from the next alert
raised or, with ``from_beginning``, from the oldest alert the topic still keeps. The filter is
the forwarder's (:func:`~finops.producers.webhooks.alert_wanted`).
"""

from __future__ import annotations

import json
import time
from typing import Iterator

from .. import clients
from ..errors import FinopsError
from ..schemas import topics
from ..settings import Settings
from .webhooks import SEVERITIES, alert_wanted


def tail_alerts(settings: Settings, *, tenant: str | None = None, min_severity: str = "info",
                from_beginning: bool = False, count: int | None = None,
                timeout: float | None = None) -> Iterator[tuple[bytes, dict]]:
    """Yield ``(value, alert)`` for each alert that passes the filter, in the order read: the record's
    bytes as published and the decoded JSON object. Records that are not JSON are skipped.

    ``tenant``: only this tenant's alerts (None: all). ``min_severity``: info, warning or critical.
    Stops after ``count`` alerts or ``timeout`` seconds (wall time; checked about every 0.5 s),
    whichever comes first; with neither it follows until the caller stops. Close the iterator
    (``contextlib.closing``) to close the consumer when stopping early.

    Raises :class:`~finops.errors.FinopsError` for an unknown ``min_severity`` (before reading).
    """
    if min_severity not in SEVERITIES:
        raise FinopsError(f"unknown severity {min_severity!r}; choose {', '.join(SEVERITIES)}")
    return _follow(settings, tenant, min_severity, from_beginning, count, timeout)


def _follow(settings: Settings, tenant: str | None, min_severity: str, from_beginning: bool, count: int | None,
            timeout: float | None) -> Iterator[tuple[bytes, dict]]:
    consumer = clients.consumer(settings, settings.group("tail", unique=True),
                                **{"auto.offset.reset": "earliest" if from_beginning else "latest"})
    consumer.subscribe([topics.ALERTS])
    shown = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while (count is None or shown < count) and (deadline is None or time.monotonic() < deadline):
            for m in consumer.consume(100, 0.5):
                if m.error():
                    continue
                try:
                    alert = json.loads(m.value())
                except ValueError:
                    continue  # not an alert: nothing to show (webhooks dead-letter such records)
                if not alert_wanted(alert, tenant=tenant, min_severity=min_severity):
                    continue
                yield m.value(), alert
                shown += 1
                if count is not None and shown >= count:
                    break
    finally:
        consumer.close()
