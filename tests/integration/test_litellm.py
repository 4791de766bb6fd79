"""The LiteLLM integration against the real broker, ledger and API: real ``litellm`` calls
with ``mock_response`` (no network), metered by the finops callback and checked before they
run (finops/integrations/litellm.py, docs/integrations.md)."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal

import httpx
import pytest


litellm = pytest.importorskip("litellm", reason="the LiteLLM extra: pip install 'finops[litellm]'")

from litellm.integrations.custom_logger import CustomLogger  # noqa: E402

from finops import clients  # noqa: E402
from finops.integrations.litellm import FinopsLiteLLM, credits_of_cost  # noqa: E402
from finops.pipeline import Pipeline  # noqa: E402
from finops.producers.publish import publish_lines  # noqa: E402
from finops.producers.usage import UsageProducer  # noqa: E402
from finops.schemas import topics  # noqa: E402
from finops.tokens import TokenStore  # noqa: E402
from ledger_helpers import Script, at  # noqa: E402
from support import view_caught_up, wait_until  # noqa: E402

pytestmark = [pytest.mark.integration,  # litellm builds pydantic models of ReadOnly TypedDicts as it imports
              pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning")]

MESSAGES = [{"role": "user", "content": "How many credits are left?"}]
MOCK = "Plenty."


@pytest.fixture
def served(settings, tmp_path):
    """The ledger and the API (its live view answers the pre-call check), and a read token."""
    tokens = TokenStore(tmp_path / "tokens.json")
    with Pipeline(settings, ("ledger", "serve"), serve={"port": 0, "tokens": tokens}) as running:
        wait_until(lambda: running.api.server.started, 60, "the API server", running)
        yield running, tokens


class Capture(CustomLogger):
    """Keeps what LiteLLM passed the loggers for each successful call, to log one again."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, tuple] = {}

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.calls[kwargs["litellm_call_id"]] = (kwargs, response_obj, start_time, end_time)


def uninstall(*loggers) -> None:
    """Take loggers out of every list LiteLLM copied them into (it keeps them past ``litellm.callbacks``)."""
    for name in ("callbacks", "success_callback", "failure_callback", "_async_success_callback",
                 "_async_failure_callback", "input_callback", "_async_input_callback"):
        listed = getattr(litellm, name, None)
        if isinstance(listed, list):
            listed[:] = [c for c in listed if all(c is not logger for logger in loggers)]


@pytest.fixture
def metered(settings):
    """Install a handler (and any other loggers) as LiteLLM's callbacks; take them out after."""
    made: list = []

    def install(tenant: str, *others, **kwargs) -> FinopsLiteLLM:
        handler = FinopsLiteLLM(tenant, producer=UsageProducer(settings), **kwargs)
        litellm.callbacks = [handler, *others]
        made.extend([handler, *others])
        return handler

    yield install
    uninstall(*made)
    for handler in made:
        if isinstance(handler, FinopsLiteLLM):
            handler.close()
            handler._producer.close()


def settle(settings, pipeline: Pipeline, handler: FinopsLiteLLM, calls: int) -> None:
    """Wait until LiteLLM's logging threads metered ``calls`` calls, Kafka has them, the ledger
    committed them, and the API's live view has read that commit."""
    wait_until(lambda: handler.published + handler.unmetered >= calls, 60, "LiteLLM's success callbacks", pipeline)
    assert handler.flush(30) == 0
    ends = clients.input_ends(settings)
    wait_until(lambda: pipeline.ledger.caught_up(ends), 120, "the ledger", pipeline)
    view_caught_up(pipeline)


def read(settings, topic: str, tenant: str) -> list[dict]:
    """The tenant's records on a topic (the shared broker's inputs also hold other tests' bad input)."""
    found = []
    for m in clients.read_to_end(settings, topic, range(settings.topic_partitions)):
        try:
            record = json.loads(m.value())
        except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
            continue
        if isinstance(record, dict) and record.get("tenant_id") == tenant:
            found.append(record)
    return found


def setup(tenant: str, *extra) -> list[bytes]:
    """A tenant with two teams, each with a bound key, a month before the calls."""
    s = Script(tenant)
    s.purchase(10_000, ts=at(0))
    s.open("team-a", tenant, ts=at(0, minutes=1))
    s.open("team-b", tenant, ts=at(0, minutes=2))
    s.allocate(tenant, "team-a", 1_000, ts=at(0, minutes=3))
    s.allocate(tenant, "team-b", 1_000, ts=at(0, minutes=4))
    s.msg("bind_key", api_key_id="key-a", account_id="team-a", ts=at(0, minutes=5))
    s.msg("bind_key", api_key_id="key-b", account_id="team-b", ts=at(0, minutes=6))
    for n, (type_, fields) in enumerate(extra):
        s.msg(type_, ts=at(0, minutes=10 + n), **fields)
    return s.lines


def test_200_completions_are_charged_litellms_cost_per_team_and_a_logged_call_is_one_usage(
        settings, served, metered):
    pipeline, _tokens = served
    tenant = f"litellm-{uuid.uuid4().hex[:8]}"
    assert publish_lines(settings, setup(tenant)).failed == 0
    rate = Decimal("1000")  # credits per US dollar
    capture = Capture()
    handler = metered(tenant, capture, credits_per_usd=rate)
    expected = {"team-a": 0, "team-b": 0}

    def call(account: str, key: str, model: str = "gpt-4o", **kwargs):
        response = litellm.completion(model=model, messages=MESSAGES, mock_response=MOCK,
                                      metadata={"finops_api_key_id": key}, **kwargs)
        cost = response._hidden_params["response_cost"]
        assert cost > 0
        expected[account] += int(credits_of_cost(cost, rate) * 1_000_000)
        return response

    # when 200 calls of two models run through litellm.completion, spread over the two teams' keys
    for n in range(200):
        call(*(("team-a", "key-a") if n % 3 else ("team-b", "key-b")), model=("gpt-4o", "gpt-4o-mini")[n % 2])
    # and a caller sends one call id twice (the provider bills both attempts), one call fails,
    # one fails and its retry under the same call id succeeds, and one asks LiteLLM not to log it
    twice = f"call-{uuid.uuid4().hex}"
    for _ in range(2):
        call("team-a", "key-a", litellm_call_id=twice)
    with pytest.raises(litellm.InternalServerError):
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response=Exception("provider down"),
                           metadata={"finops_api_key_id": "key-b"})
    retried = f"call-{uuid.uuid4().hex}"
    with pytest.raises(litellm.InternalServerError):
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response=Exception("overloaded"),
                           litellm_call_id=retried, metadata={"finops_api_key_id": "key-a"})
    call("team-a", "key-a", litellm_call_id=retried)
    quiet = f"call-{uuid.uuid4().hex}"
    call("team-b", "key-b", litellm_call_id=quiet, **{"no-log": True})
    settle(settings, pipeline, handler, 206)
    # and the retry's success is logged again, here and by a handler in another process
    wait_until(lambda: retried in capture.calls, 30, "the capturing logger", pipeline)  # LiteLLM's logging thread
    again = capture.calls[retried]
    handler.log_success_event(*again)
    other = FinopsLiteLLM(tenant, producer=UsageProducer(settings), credits_per_usd=rate)
    other.log_success_event(*again)
    other.close()
    other._producer.close()
    settle(settings, pipeline, handler, 206)

    # then the ledger consumed, per team, exactly LiteLLM's cost at the rate, in micro-credits
    entries = [e for e in read(settings, topics.LEDGER, tenant) if e["kind"] in ("consume", "overage")]
    consumed = {"team-a": 0, "team-b": 0}
    for e in entries:
        consumed[e.get("charged_to") or e["account_id"]] += e["amount_micros"]
    assert consumed == expected
    # and each attempt is one usage: the success logged three times is one, published twice;
    # the call LiteLLM was asked not to log is metered all the same
    usage = read(settings, topics.USAGE, tenant)
    assert len({u["id"] for u in usage}) == 206 and len(usage) == 207
    assert sum(u["id"].startswith(f"{retried}:") for u in usage) == 3
    assert sum(u["id"].startswith(f"{twice}:") for u in usage) == 2
    assert sum(u["id"].startswith(f"{quiet}:") for u in usage) == 1
    # a failed attempt is a usage with its error and no credits
    failed = sorted((f["api_key_id"], f["credits_consumed"], f["units_consumed"]) for f in usage if "error_code" in f)
    assert failed == [("key-a", "0.000000", 0), ("key-b", "0.000000", 0)]
    assert sorted(":failed:" in i for i in {u["id"] for u in usage if u["id"].startswith(f"{retried}:")}) == [
        False, True]
    assert all(u["input_tokens"] + u["output_tokens"] == u["units_consumed"] for u in usage)
    assert not read(settings, topics.REJECTED, tenant)


def test_a_hard_capped_key_is_refused_once_the_ledger_has_committed_its_block(settings, served, metered):
    pipeline, tokens = served
    tenant = f"litellm-{uuid.uuid4().hex[:8]}"
    # given a user with a hard cap of 1 credit under team-a, and its own key
    lines = setup(tenant, ("open_account", {"account_id": "ann", "kind": "user", "parent_id": "team-a"}),
                  ("allocate", {"from_account": "team-a", "to_account": "ann", "credits": 1, "cap": "hard"}),
                  ("bind_key", {"api_key_id": "key-ann", "account_id": "ann"}))
    assert publish_lines(settings, lines).failed == 0
    _id, token = tokens.add(tenant, "read", note="gateway")
    handler = metered(tenant, credits_per_usd="1000", api_url=pipeline.api.url, api_token=token)
    settle(settings, pipeline, handler, 0)

    # when ann's calls (0.225 credits each with gpt-4o) pass her cap, as the checks allow them
    for _ in range(5):
        handler.completion(model="gpt-4o", messages=MESSAGES, mock_response=MOCK,
                           metadata={"finops_api_key_id": "key-ann"})
    settle(settings, pipeline, handler, 5)
    blocks = [r for r in read(settings, topics.ENFORCEMENT, tenant) if r["account_id"] == "ann"]
    assert [r["state"] for r in blocks] == ["blocked"]

    # then, the ledger's commit of the block being visible, the very next call is refused before it runs
    calls_before = handler.published
    with pytest.raises(litellm.BudgetExceededError, match="ann"):
        handler.completion(model="gpt-4o", messages=MESSAGES, mock_response=MOCK,
                           metadata={"finops_api_key_id": "key-ann"})
    assert handler.refused == 1 and handler.published == calls_before
    # and team-a's other key still runs
    handler.completion(model="gpt-4o", messages=MESSAGES, mock_response=MOCK, metadata={"finops_api_key_id": "key-a"})


def test_after_the_critical_alert_a_non_prod_key_is_throttled_to_max_rps_and_a_prod_key_is_not(
        settings, served, metered):
    pipeline, tokens = served
    tenant = f"litellm-{uuid.uuid4().hex[:8]}"
    max_rps = 2
    # given an account whose allocation rate-limits non-prod keys at its 90 % (critical) alert
    action = {"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": max_rps}}
    lines = setup(tenant, ("open_account", {"account_id": "search", "kind": "team", "parent_id": tenant}),
                  ("allocate", {"from_account": tenant, "to_account": "search", "credits": 100,
                                "on_critical": action}),
                  ("bind_key", {"api_key_id": "key-dev", "account_id": "search", "env": "dev"}),
                  ("bind_key", {"api_key_id": "key-prod", "account_id": "search", "env": "prod"}))
    assert publish_lines(settings, lines).failed == 0
    _id, token = tokens.add(tenant, "read", note="gateway")
    # 1 USD = 100,000 credits: a gpt-4o call of 0.000225 USD costs 22.5 credits; four reach 90 %
    handler = metered(tenant, credits_per_usd=100_000, api_url=pipeline.api.url, api_token=token)
    settle(settings, pipeline, handler, 0)
    for key in ("key-dev", "key-prod", "key-dev", "key-prod"):
        handler.completion(model="gpt-4o", messages=MESSAGES, mock_response=MOCK, metadata={"finops_api_key_id": key})
    settle(settings, pipeline, handler, 4)
    critical = [a for a in read(settings, topics.ALERTS, tenant) if a.get("threshold") == 90]
    assert [(a["status"], a.get("action")) for a in critical] == [("firing", action)]

    def burst(key: str, calls: int = 12) -> tuple[int, float]:
        allowed, started = 0, time.monotonic()
        for _ in range(calls):
            try:
                handler.completion(model="gpt-4o", messages=MESSAGES, mock_response=MOCK,
                                   metadata={"finops_api_key_id": key})
                allowed += 1
            except litellm.RateLimitError:
                pass
        return allowed, time.monotonic() - started

    # when each key sends a burst of 12 calls
    dev_allowed, dev_s = burst("key-dev")
    prod_allowed, _ = burst("key-prod")
    # then the dev key gets its bucket (max_rps) and what refilled at max_rps during the burst, the prod key all
    assert max_rps <= dev_allowed <= max_rps + max_rps * dev_s + 1, (dev_allowed, dev_s)
    assert handler.throttled == 12 - dev_allowed
    assert prod_allowed == 12
    # and a check that names the account as well as the key learns the key's limit too
    asked = httpx.get(f"{pipeline.api.url}/v1/check", params={"tenant": tenant, "account": "search",
                                                               "api_key": "key-dev"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    assert (asked["account_id"], asked["rate_limit_rps"]) == ("search", max_rps)
