"""Current balances, read from the compacted ``finops.balances.v1`` topic (read_committed)."""

from __future__ import annotations

import msgspec
from confluent_kafka import KafkaException

from ..errors import FinopsError
from .. import clients
from ..schemas import outputs, topics
from ..settings import Settings

_decoder = msgspec.json.Decoder(outputs.Balance)


class BalanceLookupError(FinopsError):
    """The balances topic could not be read; one line for people."""


def read_balances(settings: Settings, *, tenant_id: str | None = None,
                  timeout: float = 30.0) -> dict[tuple[str, str], outputs.Balance]:
    """The latest committed balance of every account (of one tenant, if given)."""
    admin = clients.admin(settings)
    try:
        meta = admin.list_topics(topics.BALANCES, timeout=min(timeout, 10.0))
    except KafkaException as exc:
        raise BalanceLookupError(f"cannot reach Kafka at {settings.bootstrap}: {exc.args[0].str()}") from None
    topic = meta.topics.get(topics.BALANCES)
    if topic is None or topic.error is not None:
        raise BalanceLookupError(f"topic {topics.BALANCES} does not exist; run `finops stack up` first")
    latest: dict[tuple[str, str], outputs.Balance] = {}
    try:
        for m in clients.read_to_end(settings, topics.BALANCES, topic.partitions, timeout=timeout):
            if m.value() is None:
                continue
            b = _decoder.decode(m.value())
            if tenant_id is None or b.tenant_id == tenant_id:
                latest[(b.tenant_id, b.account_id)] = b
    except (TimeoutError, KafkaException) as exc:
        raise BalanceLookupError(f"cannot read {topics.BALANCES}: {exc}") from None
    return latest
