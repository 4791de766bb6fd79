"""``finops serve`` against the real broker and chdb, through an HTTP client.

Given a workload published to Kafka and folded by the ledger (``Pipeline`` with the sink and
the API in this process), each endpoint's answer equals ``finops fold`` / ``finops balance`` /
``finops report`` for the same input; ``balance?at=`` equals the fold of the input up to that
time; and no token reaches another tenant.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from typer.testing import CliRunner

from finops import clients
from finops.cli import app as cli
from finops.pipeline import Pipeline
from finops.processors.fold import fold_lines
from finops.processors.ledger import entitlement
from finops.producers.publish import publish_lines
from finops.projections.balances import read_balances
from finops.schemas import topics
from finops.schemas.money import credits
from finops.schemas.outputs import LedgerEntry
from finops.tokens import TokenStore
from ledger_helpers import Script, at
from support import bearer, settled, wait_until

pytestmark = pytest.mark.integration

AT = "2026-11-05T12:00:00Z"  # the event time every check is judged at


def workload(tenant: str) -> Script:
    """A tree with a pool, a hard cap, a spend window, a bound key, and usage through the cascade."""
    s = Script(tenant)
    s.purchase("1000.5", ts=at(0))
    s.open("org", tenant, kind="org", ts=at(0, minutes=1))
    s.open("team-a", "org", ts=at(0, minutes=2))
    s.open("team-b", "org", ts=at(0, minutes=3))
    s.open("ann", "team-a", kind="user", ts=at(0, minutes=4))
    s.open("bob", "team-b", kind="user", ts=at(0, minutes=5))
    s.allocate(tenant, "org", 600, ts=at(0, minutes=6))
    s.allocate("org", "team-a", "200.25", ts=at(0, minutes=7), recurrence={"every": "month", "rollover_pct": 50})
    s.allocate("org", "team-b", 50, cap="hard", ts=at(0, minutes=8))
    s.allocate("team-a", "ann", 20, starts_at=at(0), ends_at=at(10), ts=at(0, minutes=9))
    s.msg("set_members", account_id="org", members=["team-a"], ts=at(0, minutes=10))
    s.msg("bind_key", api_key_id="key-ann", account_id="ann", ts=at(0, minutes=11))
    for day in range(1, 4):
        s.use("ann", "7.5", api_key_id="key-ann", ts=at(day))
        s.use(None, "30.000001", api_key_id="key-ann", ts=at(day, hours=1))
        s.use("bob", 20, api_key_id="key-bob", ts=at(day, hours=2))  # past team-b's hard cap of 50 on day 3
    return s


@pytest.fixture
def served(settings, tmp_path):
    tokens = TokenStore(tmp_path / "tokens.json")
    with Pipeline(settings, ("ledger", "sink", "serve"), serve={"port": 0, "tokens": tokens}) as running:
        wait_until(lambda: running.api.server.started, 60, "the API server", running)
        yield running, tokens


def cli_uses(settings, monkeypatch) -> None:
    """Point the `finops` CLI (run in-process) at this test's broker, ClickHouse and groups."""
    for key, value in (("FINOPS_KAFKA_PORT", str(settings.kafka_port)), ("FINOPS_DATA_DIR", str(settings.data_dir)),
                       ("FINOPS_CLICKHOUSE_URL", settings.clickhouse_dsn),
                       ("FINOPS_CLICKHOUSE_DATABASE", settings.clickhouse_database),
                       ("FINOPS_GROUP_PREFIX", settings.group_prefix)):
        monkeypatch.setenv(key, value)


def test_every_endpoint_answers_what_fold_balance_and_report_answer(settings, served, monkeypatch):
    pipeline, tokens = served
    tenant = f"serve-{uuid.uuid4().hex[:8]}"
    script = workload(tenant)
    assert publish_lines(settings, script.lines).failed == 0
    _id, token = tokens.add(tenant, "write")
    client = httpx.Client(base_url=pipeline.api.url, headers=bearer(token), timeout=60)
    settled(settings, pipeline, client)
    folded = fold_lines(script.lines, keep_outputs=True)
    state = folded.ledger.tenants[tenant]
    summary = folded.summary()["accounts"]

    # accounts: own balances as finops fold and finops balance; effective available by the ledger's cascade
    listing = client.get(f"/v1/tenants/{tenant}/accounts").json()
    assert [a["account_id"] for a in listing["accounts"]] == [tenant, "org", "team-a", "ann", "team-b", "bob"]
    published = read_balances(settings, tenant_id=tenant)
    now = datetime.now(timezone.utc)
    for item in listing["accounts"]:
        acct = state.accounts[item["account_id"]]
        want = summary[acct.id]
        for name in ("available", "consumed", "reserved", "overage"):
            assert item[name] == want[name] and item[f"{name}_micros"] == credits(want[name]), (acct.id, name)
        balance = published[(tenant, acct.id)]
        assert (item["available_micros"], item["consumed_micros"]) == (balance.available_micros,
                                                                       balance.consumed_micros)
        assert item["effective_available_micros"] == entitlement(state, acct, 0, now).effective_available
        assert (item["cap"], item["blocked"], item["period_budget_micros"], item["period_used_micros"]) == (
            acct.cap, acct.blocked, acct.period_granted, acct.period_used)
    assert listing["as_of"] == state.clock.isoformat().replace("+00:00", "Z") and listing["lag_ms"] < 10_000
    one = client.get(f"/v1/tenants/{tenant}/accounts/ann").json()
    assert one["api_key_ids"] == ["key-ann"] and one["available"] == summary["ann"]["available"]

    # check: by account and by key, the same judgement as the fold's state; a block shows who blocks
    for account_id, amount in (("ann", "1"), ("ann", "10000"), ("bob", "1"), ("team-a", "0.000001")):
        got = client.get("/v1/check", params={"tenant": tenant, "account": account_id, "credits": amount,
                                              "at": AT}).json()
        want = entitlement(state, state.accounts[account_id], credits(amount), datetime.fromisoformat(AT))
        assert (got["allow"], got["reason"], got["effective_available_micros"], got["blocked_by"]) == (
            want.allow, want.reason, want.effective_available, list(want.blocked_by)), account_id
    by_key = client.get("/v1/check", params={"tenant": tenant, "api_key": "key-ann", "credits": "1", "at": AT})
    assert by_key.json()["account_id"] == "ann"
    bob = client.get("/v1/check", params={"tenant": tenant, "account": "bob", "credits": "1", "at": AT}).json()
    assert (bob["allow"], bob["reason"], bob["blocked_by"]) == (False, "blocked", ["team-b"])
    blocked = client.get(f"/v1/tenants/{tenant}/enforcement").json()["blocked"]
    assert [(b["account_id"], b["api_key_ids"]) for b in blocked] == [("team-b", [])]

    # ledger history, paged: the fold's entries of the account, in order, with the balance after each
    entries = [o for o in folded.outputs if isinstance(o, LedgerEntry)]
    for account_id in ("ann", "team-a", "org"):
        got, cursor = [], None
        while True:
            page = client.get(f"/v1/tenants/{tenant}/accounts/{account_id}/ledger",
                              params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            got.extend(page["entries"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        want = [e for e in entries if e.account_id == account_id]
        assert [(e["entry_id"], e["kind"], e["amount_micros"], e["balance_micros"]) for e in got] == [
            (e.entry_id, e.kind, e.amount_micros, e.balance_micros) for e in want], account_id
    consumes = client.get(f"/v1/tenants/{tenant}/accounts/ann/ledger", params={"kind": "consume"}).json()
    assert consumes["entries"] and {e["kind"] for e in consumes["entries"]} == {"consume"}

    # balance as of a past time: the fold of the input up to that time
    for cut in (at(0, minutes=9), at(1, minutes=30), at(2, hours=1), at(3, hours=3)):
        upto = fold_lines([line for line in script.lines if json.loads(line)["ts"] <= cut])
        accounts = upto.ledger.tenants[tenant].accounts
        for account_id in ("ann", "team-a", "org", tenant):
            got = client.get(f"/v1/tenants/{tenant}/accounts/{account_id}/balance", params={"at": cut}).json()
            acct = accounts.get(account_id)
            assert (got["available_micros"], got["consumed_micros"], got["overage_micros"]) == (
                (acct.available, acct.consumed, acct.overage) if acct else (0, 0, 0)), (account_id, cut)

    # reports: what `finops report NAME --format json` prints, for the same parameters
    cli_uses(settings, monkeypatch)
    for name in ("burn-rate", "showback", "top-drivers", "runway"):
        printed = CliRunner().invoke(cli, ["report", name, "--tenant", tenant, "--to", "2026-11-05",
                                           "--format", "json"])
        assert printed.exit_code == 0, printed.output
        served_report = client.get(f"/v1/tenants/{tenant}/reports/{name}", params={"to": "2026-11-05"}).json()
        assert served_report["rows"] == json.loads(printed.stdout), name
        assert served_report["rows"], name
    csv = client.get(f"/v1/tenants/{tenant}/reports/showback", params={"to": "2026-11-05", "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and csv.text.count("\n") > 1

    # writes: a command waits for its outcome; a rejection is a problem with the ledger's reason
    applied = client.post(f"/v1/tenants/{tenant}/commands", json={"type": "purchase", "credits": "0.5"})
    assert applied.status_code == 200 and applied.json()["status"] == "applied"
    refused = client.post(f"/v1/tenants/{tenant}/commands",
                          json={"type": "allocate", "from_account": tenant, "to_account": "org", "credits": 10**6})
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["reason"] == "insufficient_funds"
    later = client.post(f"/v1/tenants/{tenant}/commands", params={"wait": "false"},
                        json={"type": "purchase", "credits": 1})
    assert later.status_code == 202 and later.json()["status"] == "pending"
    sent = client.post(f"/v1/tenants/{tenant}/usage", content=b'[{"account_id": "ann", "api_key_id": "key-ann", '
                       b'"model_name": "m", "operation_type": "chat", "units_consumed": 1, '
                       b'"credits_consumed": 0.000001}]')
    assert sent.status_code == 202 and sent.json()["accepted"] == 1
    settled(settings, pipeline, client)
    after = client.get(f"/v1/tenants/{tenant}/accounts/ann").json()
    assert after["consumed_micros"] == credits(summary["ann"]["consumed"]) + 1
    root = client.get(f"/v1/tenants/{tenant}/accounts/{tenant}").json()
    assert root["available_micros"] == credits(summary[tenant]["available"]) + 1_500_000

    # bad input is 400/422 with a problem body, never a 500
    for method, path, kwargs in (
            ("GET", "/v1/check", {"params": {"tenant": tenant, "account": "ann", "credits": "-1"}}),
            ("GET", "/v1/check", {"params": {"tenant": tenant, "account": "ann", "credits": "1.0000001"}}),
            ("GET", "/v1/check", {"params": {"tenant": tenant, "credits": "1"}}),
            ("GET", "/v1/check", {"params": {"tenant": tenant, "account": "ann", "at": "yesterday"}}),
            ("GET", f"/v1/tenants/{tenant}/accounts/ann/ledger", {"params": {"cursor": "!!"}}),
            ("GET", f"/v1/tenants/{tenant}/accounts/ann/ledger", {"params": {"limit": "0"}}),
            ("GET", f"/v1/tenants/{tenant}/accounts/ann/balance", {}),
            ("GET", f"/v1/tenants/{tenant}/reports/burn-rate", {"params": {"from": "2026-13-01"}}),
            ("GET", f"/v1/tenants/{tenant}/reports/burn-rate", {"params": {"from": "2026-11-05", "to": "2026-11-01"}}),
            ("POST", f"/v1/tenants/{tenant}/commands", {"content": b"{"}),
            ("POST", f"/v1/tenants/{tenant}/commands", {"content": b"[]"}),
            ("POST", f"/v1/tenants/{tenant}/commands", {"json": {"type": "purchase", "credits": "1e999999"}}),
            ("POST", f"/v1/tenants/{tenant}/commands", {"json": {"type": "usage", "account_id": "ann"}}),
            ("POST", f"/v1/tenants/{tenant}/commands", {"content": b'{"type": "purchase", "credits": 1, "\xff": 1}'}),
            ("POST", f"/v1/tenants/{tenant}/usage", {"content": b'{"not": "an array"}'}),
            ("POST", f"/v1/tenants/{tenant}/usage", {"content": b"[]"}),
            ("POST", f"/v1/tenants/{tenant}/usage", {"json": [{"account_id": "ann", "credits_consumed": "x"}]})):
        answer = client.request(method, path, **kwargs)
        assert answer.status_code in (400, 422), (path, kwargs, answer.status_code, answer.text)
        problem = answer.json()
        assert answer.headers["content-type"] == "application/problem+json"
        assert problem["status"] == answer.status_code and problem["type"].startswith("urn:finops:problem:")
    assert client.get("/healthz").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert 'route="/v1/check"' in metrics and "finops_api_request_seconds_bucket" in metrics
    assert "finops_view_lag_seconds" in metrics


def test_no_token_reaches_another_tenant(settings, served, capsys):
    pipeline, tokens = served
    mine, theirs = f"iso-a-{uuid.uuid4().hex[:6]}", f"iso-b-{uuid.uuid4().hex[:6]}"
    lines = workload(mine).lines + workload(theirs).lines
    assert publish_lines(settings, lines).failed == 0
    _a, writer_a = tokens.add(mine, "write")
    _b, writer_b = tokens.add(theirs, "write")
    _r, reader_a = tokens.add(mine, "read")
    _x, admin = tokens.add(None, "admin")
    client = httpx.Client(base_url=pipeline.api.url, timeout=60)
    settled(settings, pipeline, client)
    before = {t: client.get(f"/v1/tenants/{t}/accounts", headers=bearer(admin)).json()["accounts"]
              for t in (mine, theirs)}
    inputs_before = clients.end_offsets(settings, topics.INPUTS)

    command = {"type": "purchase", "credits": 5}
    usage = [{"account_id": "ann", "api_key_id": "key-ann", "model_name": "m", "operation_type": "chat",
              "units_consumed": 1, "credits_consumed": 1}]
    endpoints = [
        ("GET", "/v1/check", {"params": {"tenant": "{t}", "account": "ann", "credits": "1"}}),
        ("GET", "/v1/check", {"params": {"tenant": "{t}", "api_key": "key-ann", "credits": "1"}}),
        ("GET", "/v1/tenants/{t}/accounts", {}),
        ("GET", "/v1/tenants/{t}/accounts/ann", {}),
        ("GET", "/v1/tenants/{t}/enforcement", {}),
        ("GET", "/v1/tenants/{t}/accounts/ann/ledger", {}),
        ("GET", "/v1/tenants/{t}/accounts/ann/balance", {"params": {"at": AT}}),
        ("GET", "/v1/tenants/{t}/reports/showback", {}),
        ("POST", "/v1/tenants/{t}/commands", {"json": command}),
        ("POST", "/v1/tenants/{t}/usage", {"json": usage}),
    ]

    def fill(value, tenant):
        if isinstance(value, str):
            return value.replace("{t}", tenant)
        if isinstance(value, dict):
            return {k: fill(v, tenant) for k, v in value.items()}
        return value

    cases = []  # (who, endpoint, tenant in the path, expected status)
    for method, path, kwargs in endpoints:
        target = {k: fill(v, theirs) for k, v in kwargs.items()}
        url = fill(path, theirs)
        cases.append(("no token", method, url, target, {}, 401))
        cases.append(("malformed token", method, url, target, {"Authorization": "Bearer nonsense"}, 401))
        cases.append(("forged secret", method, url, target,
                      bearer("_".join(writer_b.split("_", 2)[:2]) + "_" + "x" * 43), 401))
        cases.append(("other tenant's token", method, url, target, bearer(writer_a), 404))
        cases.append(("other tenant's read token", method, url, target, bearer(reader_a), 404))
        if method == "GET":  # (a tenant comes to be with its first command: an admin may create one)
            cases.append(("unknown tenant, admin", method, fill(path, "no-such-tenant"),
                          {k: fill(v, "no-such-tenant") for k, v in kwargs.items()}, bearer(admin), 404))
    for method, path, kwargs in endpoints[:7]:
        if "ann" in json.dumps(kwargs) or "/ann" in path:
            forged = json.loads(json.dumps(fill(kwargs, mine)).replace('"ann"', '"no-such-account"')
                                .replace('"key-ann"', '"no-such-key"'))
            cases.append(("unknown account", method, fill(path, mine).replace("/ann", "/no-such-account"), forged,
                          bearer(writer_a), 404))
    # a body naming another tenant under my own path
    cases.append(("body of another tenant", "POST", f"/v1/tenants/{mine}/commands",
                  {"json": {**command, "tenant_id": theirs}}, bearer(writer_a), 404))
    cases.append(("body of another tenant", "POST", f"/v1/tenants/{mine}/usage",
                  {"json": [{**usage[0], "tenant_id": theirs}]}, bearer(writer_a), 404))
    cases.append(("read token writes", "POST", f"/v1/tenants/{mine}/commands", {"json": command},
                  bearer(reader_a), 403))

    rows = []
    for who, method, url, kwargs, headers, expected in cases:
        answer = client.request(method, url, headers=headers, **kwargs)
        rows.append((who, method, url.replace(theirs, "<other>").replace(mine, "<mine>"), answer.status_code,
                     expected))
        assert answer.status_code == expected, rows[-1]
        assert answer.headers["content-type"] == "application/problem+json"
        body = answer.json()
        assert theirs not in json.dumps({k: v for k, v in body.items() if k != "instance"})
    listed = client.get("/v1/tenants", headers=bearer(writer_a)).json()["tenants"]
    assert listed == [mine]

    # nothing was written, nothing changed
    assert clients.end_offsets(settings, topics.INPUTS) == inputs_before
    after = {t: client.get(f"/v1/tenants/{t}/accounts", headers=bearer(admin)).json()["accounts"]
             for t in (mine, theirs)}
    assert after == before
    with capsys.disabled():
        print(f"\ntenant isolation: {len(rows)} requests")
        print(f"{'who':<26} {'method':<6} {'path':<52} {'got':>4} {'want':>4}")
        for who, method, url, got, want in rows:
            print(f"{who:<26} {method:<6} {url[:52]:<52} {got:>4} {want:>4}")


def test_records_the_view_cannot_read_are_skipped_and_it_goes_on(settings, served):
    pipeline, tokens = served
    tenant = f"odd-{uuid.uuid4().hex[:8]}"
    _id, token = tokens.add(tenant, "read")
    client = httpx.Client(base_url=pipeline.api.url, headers=bearer(token), timeout=60)
    view = pipeline.api.view
    wait_until(lambda: view.ready.is_set(), 60, "the live view", pipeline)
    refused = view.stats.refused
    # given records no ledger writes: an account value that is not msgpack, a key that is not UTF-8,
    # an enforcement record that is not JSON
    producer = clients.producer(settings)
    account_key = b"A" + len(tenant).to_bytes(2, "big") + tenant.encode() + b"ann"
    producer.produce(view.changelog, b"\xc1not msgpack", account_key, partition=0)
    producer.produce(view.changelog, b"\x90", b"A\x00\x02\xff\xfeann", partition=0)
    producer.produce(topics.ENFORCEMENT, b"{not json", f"{tenant}/ann".encode(), partition=0)
    assert producer.flush(30) == 0
    wait_until(lambda: view.stats.refused >= refused + 3, 30, "the view to skip the odd records", pipeline)
    # when the tenant's real state follows, then the view reads it and answers
    script = Script(tenant)
    script.purchase(10)
    script.open("ann", tenant, kind="user")
    assert publish_lines(settings, script.lines).failed == 0
    settled(settings, pipeline, client)
    answer = client.get("/v1/check", params={"tenant": tenant, "account": "ann", "credits": "10"}).json()
    assert (answer["allow"], answer["effective_available_micros"]) == (True, 10_000_000)
    assert client.get("/healthz").json()["view"]["refused"] == view.stats.refused


def test_retries_ids_and_odd_requests(settings, served):
    pipeline, tokens = served
    tenant = f"retry-{uuid.uuid4().hex[:8]}"
    _id, token = tokens.add(tenant, "write")
    client = httpx.Client(base_url=pipeline.api.url, headers=bearer(token), timeout=60)
    commands = f"/v1/tenants/{tenant}/commands"
    assert client.post(commands, json={"type": "purchase", "credits": 10, "ts": at(0)}).status_code == 200
    assert client.post(commands, json={"type": "open_account", "account_id": "a/b", "kind": "team",
                                       "parent_id": tenant, "ts": at(0, minutes=1)}).status_code == 200
    # given a command rejected for lack of funds, when the funds come and the same command is sent again,
    # then it is applied (the earlier rejection was of the earlier sending)
    allocate = {"type": "allocate", "id": "alloc-1", "from_account": tenant, "to_account": "a/b", "credits": 15,
                "ts": at(0, minutes=2)}
    first = client.post(commands, json=allocate)
    assert first.status_code == 409 and first.json()["reason"] == "insufficient_funds"
    assert client.post(commands, json={"type": "purchase", "credits": 10, "ts": at(0, minutes=3)}).status_code == 200
    again = client.post(commands, json=allocate)
    assert again.status_code == 200 and again.json() == {"id": "alloc-1", "type": "allocate", "status": "applied"}
    # an id without ts cannot be sent again as the same message: refused before it is sent
    bare = client.post(commands, json={"type": "purchase", "id": "p-9", "credits": 1})
    assert bare.status_code == 422 and bare.json()["reason"] == "missing_field"
    # an outcome not known in time still names the command, so it can be looked up or sent again
    slow = client.post(commands, params={"timeout": "0.001"}, json={"type": "purchase", "credits": 1})
    assert slow.status_code == 504 and slow.json()["id"]
    # an account id with a slash is reachable, percent-encoded
    settled(settings, pipeline, client)
    account = client.get(f"/v1/tenants/{tenant}/accounts/a%2Fb")
    assert account.status_code == 200 and account.json()["available_micros"] == 15_000_000
    assert client.get(f"/v1/tenants/{tenant}/accounts/a%2Fb/ledger").json()["entries"][0]["kind"] == "allocation_in"
    # bodies nested too deeply, and unknown entry kinds, are refused with a problem, and the connection lives on
    deep = client.post(f"/v1/tenants/{tenant}/usage", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400 and deep.json()["reason"] == "invalid"
    kind = client.get(f"/v1/tenants/{tenant}/accounts/a%2Fb/ledger", params={"kind": "bogus"})
    assert kind.status_code == 422
    assert client.get(f"/v1/tenants/{tenant}/").status_code == 404
    assert client.get("/healthz").status_code == 200


def test_a_stopped_ledger_shows_in_health_and_metrics(settings, tmp_path):
    # given the API with no ledger running (its changelog exists: the ledger ran once, say)
    from finops.processors.runner import ensure_changelog

    ensure_changelog(settings, f"{settings.group_prefix}-ledger")
    with Pipeline(settings, ("serve",), serve={"port": 0, "tokens": TokenStore(tmp_path / "t.json")}) as running:
        wait_until(lambda: running.api.server.started, 60, "the API server", running)
        client = httpx.Client(base_url=running.api.url, timeout=30)
        wait_until(lambda: client.get("/healthz").status_code == 200, 60, "the view to load", running)
        # when input arrives that nobody folds
        script = Script(f"stalled-{uuid.uuid4().hex[:8]}")
        script.purchase(1)
        assert publish_lines(settings, script.lines).failed == 0
        # then the API says the ledger has it pending and has not moved on it
        wait_until(lambda: (client.get("/healthz").json()["ledger"]["pending"] or 0) >= 1
                   and client.get("/healthz").json()["ledger"]["stalled_s"] >= 1, 30, "the stall to show", running)
        assert "finops_ledger_pending_records" in client.get("/metrics").text


def test_late_usage_counts_at_its_own_time_in_balance_as_of(settings, served):
    pipeline, tokens = served
    tenant = f"late-{uuid.uuid4().hex[:8]}"
    _id, token = tokens.add(tenant, "read")
    client = httpx.Client(base_url=pipeline.api.url, headers=bearer(token), timeout=60)
    # given a usage booked after a later one (late)
    s = Script(tenant)
    s.purchase(100, ts=at(0))
    s.use(tenant, 10, ts=at(2))
    s.use(tenant, 5, ts=at(1))
    assert publish_lines(settings, s.lines).failed == 0
    settled(settings, pipeline, client)
    # then the ledger lists entries in booking order, the balance running on from one to the next
    entries = client.get(f"/v1/tenants/{tenant}/accounts/{tenant}/ledger").json()["entries"]
    assert [(e["kind"], e["balance_micros"], e["late"]) for e in entries] == [
        ("credit", 100_000_000, False), ("consume", 90_000_000, False), ("consume", 85_000_000, True)]
    # and the balance as of a time between them is the fold of the input up to that time
    for cut in (at(0, hours=1), at(1, hours=1), at(2, hours=1)):
        upto = fold_lines([line for line in s.lines if json.loads(line)["ts"] <= cut]).ledger.tenants[tenant]
        got = client.get(f"/v1/tenants/{tenant}/accounts/{tenant}/balance", params={"at": cut}).json()
        root = upto.accounts[tenant]
        assert (got["available_micros"], got["consumed_micros"]) == (root.available, root.consumed), cut


def test_every_report_answers_over_http_as_the_cli_prints_it(settings, served, monkeypatch):
    pipeline, tokens = served
    tenant = f"reports-{uuid.uuid4().hex[:8]}"
    script = workload(tenant)
    assert publish_lines(settings, script.lines).failed == 0
    _id, token = tokens.add(tenant, "read")
    client = httpx.Client(base_url=pipeline.api.url, headers=bearer(token), timeout=60)
    settled(settings, pipeline, client)
    cli_uses(settings, monkeypatch)
    from finops.projections.reports import REPORTS

    for name in REPORTS:
        if name == "focus":
            continue  # FOCUS is an export (csv or parquet); its CSV is checked below
        args = ["report", name, "--tenant", tenant, "--from", "2026-10-01", "--to", "2026-11-05", "--format", "json"]
        printed = CliRunner().invoke(cli, args)
        assert printed.exit_code == 0, (name, printed.output)
        answer = client.get(f"/v1/tenants/{tenant}/reports/{name}", params={"from": "2026-10-01", "to": "2026-11-05"})
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["rows"] == json.loads(printed.stdout), name
    for name in ("focus", "plan", "forecast"):
        printed = CliRunner().invoke(cli, ["report", name, "--tenant", tenant, "--to", "2026-11-05", "--format", "csv"])
        assert printed.exit_code == 0, (name, printed.output)
        answer = client.get(f"/v1/tenants/{tenant}/reports/{name}", params={"to": "2026-11-05", "format": "csv"})
        assert answer.text.replace("\r\n", "\n") == printed.stdout.replace("\r\n", "\n"), name


def test_a_critical_rate_limit_reaches_the_check_of_each_non_prod_key(settings, served):
    # given a team whose allocation asks for a rate limit at its critical threshold, a dev and a prod key
    pipeline, tokens = served
    tenant = f"limit-{uuid.uuid4().hex[:8]}"
    s = Script(tenant)
    s.purchase(100, ts=at(0))
    s.open("team", tenant, ts=at(0, minutes=1))
    s.allocate(tenant, "team", 10, ts=at(0, minutes=2),
               on_critical={"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": 5}})
    s.msg("bind_key", api_key_id="k-dev", account_id="team", env="dev", ts=at(0, minutes=3))
    s.msg("bind_key", api_key_id="k-prod", account_id="team", env="prod", ts=at(0, minutes=4))
    # when its use passes 90 %
    s.use("team", "9.5", api_key_id="k-prod", ts=at(0, minutes=5))
    assert publish_lines(settings, s.lines).failed == 0
    _id, token = tokens.add(tenant, "read")
    client = httpx.Client(base_url=pipeline.api.url, headers=bearer(token), timeout=60)
    settled(settings, pipeline, client)
    # then the check of the dev key carries the limit, the prod key's does not, and enforcement lists it
    check = {key: client.get("/v1/check", params={"tenant": tenant, "api_key": key, "credits": "0.1"}).json()
             for key in ("k-dev", "k-prod")}
    assert (check["k-dev"]["rate_limit_rps"], check["k-prod"]["rate_limit_rps"]) == (5, None)
    limited = client.get(f"/v1/tenants/{tenant}/enforcement").json()["rate_limited"]
    assert [(r["account_id"], r["rate_limits"]) for r in limited] == [("team", {"k-dev": 5})]
