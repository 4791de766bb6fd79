"""A small app using the finops SDK: give a team a budget, then publish the usage of
each model call. Run it against a running pipeline (`finops stack up`, `finops run &`):

    python examples/usage_app.py            # tenant acme; or: python examples/usage_app.py my-tenant

The model call is a stand-in that returns what an OpenAI-style client returns; in a real
app it is `client.chat.completions.create(...)`.
"""

import random
import sys
import uuid

from finops.producers import CommandClient, RateCard, UsageProducer, measure_latency, usage_from_openai

TENANT = sys.argv[1] if len(sys.argv) > 1 else "acme"
TEAM = "app-example"
RATES = RateCard.per_1k({"gpt-4o": ("0.0025", "0.01"), "gpt-4o-mini": ("0.00015", "0.0006")})


def call_model(prompt: str) -> dict:
    """Stands in for an LLM call; returns an OpenAI-style response with its usage block."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "model": "gpt-4o-mini-2024-07-18",
            "usage": {"prompt_tokens": 40 * len(prompt.split()), "completion_tokens": random.randint(50, 400)}}


# 1. A budget for the team: commands wait until the ledger has applied (or rejected) them.
with CommandClient() as commands:
    commands.purchase(TENANT, credits=100).raise_for_rejection()
    opened = commands.open_account(TENANT, TEAM, kind="team", parent_id=TENANT)
    if not opened.applied and opened.reason != "account_exists":  # a second run finds it open
        opened.raise_for_rejection()
    commands.allocate(TENANT, from_account=TENANT, to_account=TEAM, credits=5).raise_for_rejection()

# 2. One usage event per request, checked before it is sent, delivered in batches.
with UsageProducer() as usage:
    for prompt in ["summarize this ticket", "draft a reply to the customer", "classify the sentiment"] * 10:
        with measure_latency() as latency:
            response = call_model(prompt)
        usage.send(usage_from_openai(response, tenant_id=TENANT, account_id=TEAM, api_key_id="key-app-example",
                                     rate_card=RATES, latency=latency,
                                     usage_labels={"team": TEAM, "cost_center": "cc-docs", "project": "support-bot",
                                                   "env": "dev"}))
print(f"published {usage.sent} usage events for {TENANT}/{TEAM} ({usage.failed} failed)")
