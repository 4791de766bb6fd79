"""The key registry and the critical action beyond the pure ledger: the showback report follows the
registry's labels (ClickHouse, through the ledger processor's step and the sink's row builders),
and the real broker with a running ledger publishes the stamped entries, the alert's action and
the per-key limits on finops.enforcement.v1, then lifts them."""

from __future__ import annotations

import json
import uuid
from datetime import date

import msgspec
import pytest

from finops import clients
from finops.pipeline import Pipeline
from finops.processors.fold import fold_lines
from finops.producers.publish import publish_lines
from finops.projections import clickhouse, reports
from finops.projections.query import LocalReader
from finops.schemas import topics
from report_data import through_the_ledger
from support import wait_until


def _lines(tenant: str, year: int = 2026) -> list[bytes]:
    """Two keys registered to the search team (one dev, one prod); their callers say ads, or nothing."""
    def msg(ts: str, type_: str, id_: str, **fields) -> bytes:
        return msgspec.json.encode({"type": type_, "id": id_, "tenant_id": tenant, "ts": ts, **fields})

    setup = f"{year}-11-02T09:00:00Z"
    lines = [msg(setup, "purchase", "buy", credits=1_000),
             msg(setup, "open_account", "open-search", account_id="search", kind="team", parent_id=tenant),
             msg(setup, "allocate", "alloc", from_account=tenant, to_account="search", credits=100,
                 on_critical={"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": 3}}),
             msg(setup, "set_policy", "policy", require_key_registry=True),
             msg(setup, "bind_key", "bind-dev", api_key_id="k-dev", account_id="search", team="search",
                 project="ranker", env="dev"),
             msg(setup, "bind_key", "bind-prod", api_key_id="k-prod", account_id="search", team="search",
                 project="ranker", env="prod")]
    for n in range(6):  # 6 x 15 = 90: the critical threshold
        lines.append(msg(f"{year}-11-03T10:00:0{n}Z", "usage", f"req-{n}", api_key_id="k-dev" if n % 2 else "k-prod",
                         model_name="gpt-4o", operation_type="chat", units_consumed=1, credits_consumed=15,
                         usage_labels={"team": "ads", "project": "banner"} if n < 4 else {}))
    # a key nobody registered, named by account: charged, untagged, its caller's labels stand
    lines.append(msg(f"{year}-11-03T11:00:00Z", "usage", "req-x", api_key_id="k-stray", account_id="search",
                     model_name="gpt-4o", operation_type="chat", units_consumed=1, credits_consumed=2,
                     usage_labels={"team": "ads", "project": "banner"}))
    return lines


@pytest.fixture
def client(clickhouse_settings):
    return clickhouse.connect(clickhouse_settings)


def test_showback_follows_the_registry_not_the_callers_labels(client):
    # given usage whose callers say team "ads", from keys the registry gives to team "search"
    through_the_ledger(client, _lines("registry"), token="registry")
    # when the showback report runs
    report = reports.run(LocalReader(client, owned=False), "showback", reports.Params(tenant="registry"),
                         date(2026, 11, 14))
    rows = {(r[report.columns.index("team")], r[report.columns.index("project")]):
            r[report.columns.index("credits")] for r in report.rows}
    # then the registered keys' 90 credits are the search team's; only the unregistered key's 2 stay with ads
    assert rows == {("search", "ranker"): 90, ("ads", "banner"): 2}


@pytest.mark.integration
def test_through_kafka_the_entries_alert_and_enforcement_are_the_folds(settings):
    tenant = f"registry-{uuid.uuid4().hex[:8]}"
    lines = _lines(tenant, 2025)  # a year back: the ledger refuses a ts ahead of the time Kafka stored it
    lines.append(msgspec.json.encode({"type": "allocate", "id": "top-up", "tenant_id": tenant,
                                      "ts": "2025-11-04T09:00:00Z", "from_account": tenant,
                                      "to_account": "search", "credits": 100}))
    folded = fold_lines(lines, keep_outputs=True)
    with Pipeline(settings, ("ledger",)) as pipeline:
        assert publish_lines(settings, lines).failed == 0
        ends = clients.input_ends(settings)
        wait_until(lambda: pipeline.ledger.caught_up(ends), 120, "the ledger", pipeline)

    def read(topic: str) -> list[dict]:
        return [json.loads(m.value()) for m in clients.read_to_end(settings, topic, range(settings.topic_partitions))
                if json.loads(m.value()).get("tenant_id") == tenant]

    consumed = {e["cause_id"]: e for e in read(topics.LEDGER) if e["kind"] == "consume"}
    assert consumed["req-0"]["usage_labels"] == {"team": "search", "project": "ranker", "env": "prod"}
    assert consumed["req-0"]["caller_labels"] == {"team": "ads", "project": "banner"}
    assert consumed["req-5"]["caller_labels"] == {} and "untagged" not in consumed["req-5"]
    assert consumed["req-x"]["untagged"] is True and "caller_labels" not in consumed["req-x"]
    critical = [a for a in read(topics.ALERTS) if a["type"] == "threshold" and a["threshold"] == 90]
    assert [(a["status"], a.get("action")) for a in critical] == [
        ("firing", {"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": 3}}), ("resolved", None)]
    records = read(topics.ENFORCEMENT)
    assert [(r["state"], r.get("rate_limits")) for r in records] == [("open", {"k-dev": 3}), ("open", None)]
    assert [(r["state"], r.get("rate_limits")) for r in records] == [
        (e["state"], e.get("rate_limits")) for e in
        (msgspec.to_builtins(o) for o in folded.outputs if type(o).__name__ == "Enforcement")]
