"""Settings of the integrations, apart from their modules so that reading them (``finops``'s
docs check, a deployment's config validation) needs no optional extra installed."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Policy = Literal["allow", "refuse"]
AccountFrom = Literal["key", "team", "user", "end_user"]


class LiteLLMSettings(BaseSettings):
    """The proxy handler's settings, from ``FINOPS_LITELLM_*`` environment variables.

    The Kafka settings (``FINOPS_KAFKA_BOOTSTRAP``, ...) are finops's own :class:`Settings`.
    """

    model_config = SettingsConfigDict(env_prefix="FINOPS_LITELLM_", extra="ignore")

    tenant_id: str | None = None
    """The tenant of every call that does not name one (metadata ``finops_tenant_id``)."""
    credits_per_usd: Decimal | None = None
    """Credits per US dollar of LiteLLM's ``response_cost``; unset: the tenant's ``set_rates`` card prices tokens."""
    api_url: str | None = None
    """``finops serve``'s base URL for the pre-call check; unset: no check, metering only."""
    api_token: SecretStr | None = None
    """A bearer token of ``finops serve`` that may read the tenant (``finops tokens add``)."""
    account_from: AccountFrom = "key"
    """Which LiteLLM identity names the finops account: ``key`` (the ledger's ``bind_key``
    registry), ``team``, ``user`` or ``end_user`` (the OpenAI ``user`` field: charge by end user)."""
    trust_request_metadata: bool = False
    """Read ``finops_*`` ids from a proxy request's own metadata. Off: only the virtual key's
    metadata (set by an admin) names them, so a caller cannot pick whom a call is charged to.
    The library (no proxy key) always reads the call's metadata: the app is the caller."""
    default_api_key_id: str = "litellm"
    """The ``api_key_id`` of a call with no virtual key and no ``finops_api_key_id``."""
    on_unavailable: Policy = "allow"
    """When ``finops serve`` cannot answer (down, loading, timeout): let the call through, or refuse it."""
    on_unknown: Policy = "allow"
    """When ``finops serve`` knows no such key or account (404): let the call through (the ledger decides), or refuse it."""
    on_auth_error: Policy = "refuse"
    """When ``finops serve`` refuses the token (401, 403: revoked, or another tenant's): a
    misconfiguration, refused by default so that it cannot silently turn enforcement off."""
    check_timeout_s: float = 0.5
    """Seconds (wall time) the pre-call check may take before ``on_unavailable`` applies."""
