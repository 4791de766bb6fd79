"""The LiteLLM integration's pure parts: who a call is for, what usage it becomes, what it
costs in credits, and the key throttle (finops/integrations/litellm.py). The calls through
the broker and the API are in tests/integration/test_litellm.py."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("litellm", reason="the LiteLLM extra: pip install 'finops[litellm]'")
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning")

from finops.integrations.litellm import (  # noqa: E402
    Caller, EntitlementClient, KeyThrottle, NoTenant, Verdict, caller_of, credits_of_cost, usage_of_call)
from finops.producers.usage import RateCard, checked  # noqa: E402
from finops.schemas import wire  # noqa: E402


def logged(**slo) -> dict:
    """The kwargs LiteLLM passes a logger, around a standard logging object."""
    base = {"litellm_call_id": "call-1", "model": "gpt-4o", "call_type": "acompletion", "prompt_tokens": 1200,
            "completion_tokens": 300, "response_cost": 0.006, "startTime": 1796040000.25,
            "endTime": 1796040001.5, "status": "success", "metadata": {}}
    return {"litellm_call_id": base["litellm_call_id"], "standard_logging_object": {**base, **slo},
            "litellm_params": {"metadata": {}}}


class Key:
    """The shape of the proxy's UserAPIKeyAuth."""

    def __init__(self, metadata=None, alias="search-prod", team="team-search", user="ann"):
        self.key_alias, self.token, self.team_id, self.user_id, self.end_user_id = alias, "hash", team, user, None
        self.metadata = metadata or {}


FORGED = {"finops_tenant_id": "victim", "finops_account_id": "someone-else", "finops_api_key_id": "forged"}


class TestCallerOf:
    def test_the_virtual_keys_metadata_names_finops_ids_over_what_the_caller_sends(self):
        key = Key({"finops_account_id": "team-search", "finops_api_key_id": "key-search"})
        caller = caller_of(FORGED, tenant_id="acme", key=key, user="end-user-7")
        assert caller == Caller("acme", "key-search", "team-search", "team-search", "ann", "end-user-7")

    def test_behind_the_proxy_a_callers_own_finops_ids_count_only_when_trusted(self):
        # given a virtual key whose metadata names no finops ids
        untrusted = caller_of(FORGED, tenant_id="acme", key=Key())
        assert (untrusted.tenant_id, untrusted.api_key_id, untrusted.account_id) == ("acme", "search-prod", None)
        # the logging path sees the proxy by its key hash in the metadata
        logged_meta = {**FORGED, "user_api_key_hash": "hash", "user_api_key_alias": "search-prod"}
        assert caller_of(logged_meta, tenant_id="acme").api_key_id == "search-prod"
        trusted = caller_of(FORGED, tenant_id="acme", key=Key(), trust_request=True)
        assert (trusted.tenant_id, trusted.api_key_id, trusted.account_id) == ("victim", "forged", "someone-else")
        # and the library (no proxy key): the app is the caller
        assert caller_of(FORGED, tenant_id="acme").api_key_id == "forged"

    def test_without_finops_ids_the_key_alias_then_its_hash_is_the_api_key(self):
        given_metadata = {"user_api_key_alias": "alias", "user_api_key_hash": "hash", "user_api_key_team_id": "t"}
        assert caller_of(given_metadata, tenant_id="acme").api_key_id == "alias"
        assert caller_of({"user_api_key_hash": "hash"}, tenant_id="acme").api_key_id == "hash"
        assert caller_of({}, tenant_id="acme", default_api_key_id="gw").api_key_id == "gw"

    def test_account_from_team_user_or_end_user_names_the_account(self):
        meta = {"user_api_key_team_id": "team-a", "user_api_key_user_id": "ann"}
        assert caller_of(meta, tenant_id="acme").account_id is None  # "key": the ledger's bind_key registry
        assert caller_of(meta, tenant_id="acme", account_from="team").account_id == "team-a"
        assert caller_of(meta, tenant_id="acme", account_from="user").account_id == "ann"
        assert caller_of(meta, tenant_id="acme", account_from="end_user", user="cust-9").account_id == "cust-9"

    def test_a_call_with_no_tenant_anywhere_is_an_error(self):
        with pytest.raises(NoTenant, match="no finops tenant"):
            caller_of({}, tenant_id=None)


class TestUsageOfCall:
    def test_a_successful_call_is_a_valid_usage_charged_its_cost_at_the_rate(self):
        caller = Caller("acme", "key-a", None, "team-a", "ann", None)
        event = usage_of_call(logged(), None, caller, credits_per_usd=Decimal(1000))
        assert (event["id"], event["ts"], event["units_consumed"], event["credits_consumed"]) == (
            "call-1:1796040000250000", "2026-11-30T12:00:00.250000Z", 1500, "6.000000")
        assert (event["operation_type"], event["response_latency_ms"], event["usage_labels"]) == (
            "chat", 1250, {"team": "team-a", "user": "ann"})
        assert (event["input_tokens"], event["output_tokens"], event["provider_cost_usd"]) == (1200, 300, "0.006")
        _raw, message = checked(event)
        assert isinstance(message, wire.Usage) and message.credits_consumed == 6_000_000

    def test_a_failed_call_carries_its_error_code_and_costs_nothing(self):
        kwargs = logged(status="failure", response_cost=0.0, prompt_tokens=0, completion_tokens=0,
                        error_information={"error_code": "429", "error_class": "RateLimitError"})
        event = usage_of_call(kwargs, None, Caller("acme", "k"), credits_per_usd=Decimal(1000))
        assert (event["error_code"], event["credits_consumed"], event["units_consumed"]) == ("429", "0.000000", 0)
        # and each failed attempt has its own id, apart from the attempt that succeeds under the same call id
        assert event["id"] == "call-1:1796040000250000:failed:1796040001500000"
        assert usage_of_call(logged(), None, Caller("acme", "k"))["id"] == "call-1:1796040000250000"

    def test_a_rate_card_prices_the_tokens_and_without_pricing_the_ledgers_card_does(self):
        card = RateCard.per_1k({"gpt-4o": ("0.0025", "0.01")})
        priced = usage_of_call(logged(), None, Caller("acme", "k"), rate_card=card)
        assert priced["credits_consumed"] == "0.006000"
        assert "credits_consumed" not in usage_of_call(logged(), None, Caller("acme", "k"))

    def test_a_model_litellm_cannot_price_or_the_card_lacks_is_left_to_the_ledgers_card_never_zero(self):
        unpriced = logged(response_cost=0.0, model="openai/my-finetune",
                          response_cost_failure_debug_info={"error_class": "ModelNotMappedError"})
        event = usage_of_call(unpriced, None, Caller("acme", "k"), credits_per_usd=Decimal(1000))
        assert "credits_consumed" not in event and event["units_consumed"] == 1500
        card = RateCard.per_1k({"gpt-4o": ("0.0025", "0.01")})
        assert "credits_consumed" not in usage_of_call(logged(model="claude-x"), None, Caller("acme", "k"), rate_card=card)

    def test_the_model_is_priced_without_its_provider_prefix(self):
        kwargs = logged(model="openai/gpt-4o", custom_llm_provider="openai")
        card = RateCard.per_1k({"gpt-4o": ("0.0025", "0.01")})
        event = usage_of_call(kwargs, None, Caller("acme", "k"), rate_card=card)
        assert (event["model_name"], event["credits_consumed"]) == ("gpt-4o", "0.006000")

    def test_a_cache_hit_costs_nothing_in_every_pricing_mode(self):
        card = RateCard.per_1k({"gpt-4o": ("0.0025", "0.01")})
        for pricing in ({"credits_per_usd": Decimal(1000)}, {"rate_card": card}, {}):
            event = usage_of_call(logged(cache_hit=True, response_cost=0.0), None, Caller("acme", "k"), **pricing)
            assert (event["credits_consumed"], event["units_consumed"], event["usage_labels"]) == (
                "0.000000", 0, {"cache_hit": "true"})

    def test_cached_tokens_are_read_from_the_response_usage(self):
        kwargs = logged()
        kwargs["standard_logging_object"]["metadata"] = {
            "usage_object": {"prompt_tokens_details": {"cached_tokens": 1024}}}
        assert usage_of_call(kwargs, None, Caller("acme", "k"))["cached_tokens"] == 1024


class TestCreditsOfCost:
    @given(st.decimals(min_value=0, max_value=1000, places=8), st.integers(min_value=0, max_value=10**6))
    def test_the_cost_is_read_by_its_shortest_text_and_rounded_half_even_to_the_micro_credit(self, cost, rate):
        as_float = float(cost)
        got = credits_of_cost(as_float, Decimal(rate))
        assert got == (Decimal(repr(as_float)) * rate).quantize(Decimal("0.000001"), rounding="ROUND_HALF_EVEN")
        assert got >= 0 and got.as_tuple().exponent == -6

    @pytest.mark.parametrize("cost", [None, -1.0, float("nan"), float("inf"), "free", 1e19])
    def test_a_missing_or_impossible_cost_is_zero(self, cost):
        assert credits_of_cost(cost, Decimal(1000)) == 0


class TestKeyThrottle:
    def test_a_key_gets_a_burst_of_max_rps_then_max_rps_per_second(self):
        throttle = KeyThrottle()
        burst = [throttle.admit("acme", "key-dev", 2, now=100.0) for _ in range(4)]
        assert burst == [True, True, False, False]
        assert throttle.admit("acme", "key-dev", 2, now=100.4) is False  # 0.8 of a token refilled
        assert throttle.admit("acme", "key-dev", 2, now=100.5) is True
        assert throttle.admit("acme", "key-other", 2, now=100.5) is True  # keys are apart

    def test_a_limit_below_one_per_second_still_admits_one_call_then_waits(self):
        throttle = KeyThrottle()
        assert [throttle.admit("acme", "k", 0.5, now=0.0) for _ in range(2)] == [True, False]
        assert throttle.admit("acme", "k", 0.5, now=2.0) is True


class TestEntitlementClientPolicy:
    def closed_port(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{s.getsockname()[1]}"

    def test_a_refused_token_refuses_by_default_an_unknown_key_allows(self):
        client = EntitlementClient("http://127.0.0.1:1", "revoked")
        assert client.verdict(Caller("acme", "k"), 401, None, "HTTP 401") == Verdict(False, "auth_error")
        assert client.verdict(Caller("acme", "k"), 403, None, "HTTP 403") == Verdict(False, "auth_error")
        assert client.verdict(Caller("acme", "k"), 404, None, "HTTP 404") == Verdict(True, "unknown")

    def test_the_check_asks_by_account_and_key_together(self):
        assert EntitlementClient.params(Caller("acme", "key-a", "team-a")) == {
            "tenant": "acme", "api_key": "key-a", "account": "team-a"}
        assert EntitlementClient.params(Caller("acme", "key-a")) == {"tenant": "acme", "api_key": "key-a"}

    def test_an_unreachable_api_follows_on_unavailable(self):
        caller = Caller("acme", "key-a")
        allowing = EntitlementClient(self.closed_port(), None, timeout_s=0.2)
        refusing = EntitlementClient(self.closed_port(), None, timeout_s=0.2, on_unavailable="refuse")
        assert (allowing.check(caller).allow, allowing.check(caller).reason) == (True, "unavailable")
        assert (refusing.check(caller).allow, refusing.check(caller).reason) == (False, "unavailable")
