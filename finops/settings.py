"""Settings, read from the environment (prefix ``FINOPS_``) with embedded defaults.

Everything that builds a client or starts a process takes a :class:`Settings`; nothing
else reads the environment, but for the optional integrations' own settings
(``FINOPS_LITELLM_*``: :mod:`finops.integrations.settings`).
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "finops"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "finops"


class Settings(BaseSettings):
    """The pipeline's configuration, from ``FINOPS_<FIELD>`` environment variables (docs/configuration.md);
    each field's ``description`` says what it sets. Durations take seconds or ISO 8601; an invalid
    value raises pydantic's ``ValidationError``."""

    model_config = SettingsConfigDict(env_prefix="FINOPS_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir,
                           description="Local state: broker logs, embedded ClickHouse, pid files.")
    cache_dir: Path = Field(default_factory=_default_cache_dir,
                            description="Downloaded Kafka jars (shared by every data dir).")
    kafka_bootstrap: str | None = Field(
        default=None,
        description="bootstrap.servers of an existing cluster; when set, nothing is started locally.")
    kafka_version: str = Field(default="4.1.1", description="Apache Kafka version of the local broker.")
    kafka_port: int = Field(default=9092, description="Client port of the local broker (controller: port+1).")
    kafka_heap: str = Field(default="1g", description="-Xmx of the local broker.")
    topic_partitions: int = Field(default=6, ge=1, description="Partitions of each v1 topic when created.")
    clickhouse_url: str | None = Field(
        default=None,
        description="chdb:///PATH (embedded) or http(s)://user:pass@host:8123 (server). "
                    "Default: chdb:///<data_dir>/clickhouse.")
    clickhouse_database: str = Field(default="finops", description="ClickHouse database for all tables.")
    billing_currency: str = Field(default="USD", min_length=3, max_length=3,
                                  description="FOCUS export: ISO 4217 currency of BilledCost.")
    credit_price: Decimal = Field(default=Decimal(1), ge=0,
                                  description="FOCUS export: what one credit costs in billing_currency.")
    webhook_url: str | None = Field(default=None, description="`finops run webhooks`: where to POST alerts.")
    webhook_secret: SecretStr | None = Field(default=None,
                                             description="Shared secret of the webhooks' HMAC-SHA256 signatures.")
    alert_zscore: float = Field(default=3.0, gt=0, description="zscore_spike: standard deviations above the mean.")
    alert_min_hours: int = Field(default=24, ge=2, description="zscore_spike: closed hours of history needed.")
    alert_mom_pct: float = Field(default=20.0, gt=0, description="mom_spike: % above the same point last month.")
    alert_ending_soon_days: float = Field(default=7.0, gt=0, description="ending_soon: days before a window ends.")
    alert_low_balance_pct: float = Field(default=10.0, ge=0, description="low_balance: % of the period's grant.")
    alert_low_balance_credits: float = Field(default=0.0, ge=0, description="low_balance: absolute floor (0: off).")
    id_horizon: timedelta = Field(
        default=timedelta(days=35), gt=timedelta(0),
        description="Idempotency horizon: ids are remembered this long in event time; older messages are "
                    "rejected too_late (seconds, or ISO 8601 like P35D).")
    max_future_skew: timedelta = Field(
        default=timedelta(minutes=5), ge=timedelta(0),
        description="A message whose ts is more than this ahead of the time Kafka stored it is rejected "
                    "ts_in_future (seconds, or ISO 8601 like PT5M).")
    unknown_account_grace: timedelta = Field(
        default=timedelta(hours=1), ge=timedelta(0),
        description="Usage for an account not opened (or a key not bound) yet is held this long in event time "
                    "before it is rejected unknown_account (seconds, or ISO 8601 like PT1H).")
    spend_every: timedelta = Field(
        default=timedelta(seconds=0.5), ge=timedelta(0),
        description="The ledger publishes its usage spend summary (finops.spend.v1) at most this often, in wall "
                    "time (seconds, or ISO 8601 like PT0.5S; 0: in every transaction). Pending spend is kept in "
                    "the ledger's state and changelog meanwhile.")
    group_prefix: str = Field(default="finops", description="Prefix of consumer group and transactional ids.")
    tokens_file: Path | None = Field(
        default=None,
        description="Bearer tokens of the HTTP API (`finops tokens add`); default <data_dir>/tokens.json.")
    api_host: str = Field(default="127.0.0.1", description="Address `finops serve` listens on.")
    api_port: int = Field(default=8080, ge=1, le=65535, description="Port `finops serve` listens on.")

    @field_validator("id_horizon", "max_future_skew", "unknown_account_grace", "spend_every", mode="before")
    @classmethod
    def _seconds(cls, value):
        """A duration as plain seconds ("300", "1.5") as well as ISO 8601 ("PT5M") or "00:05:00"."""
        if isinstance(value, str):
            try:
                return timedelta(seconds=float(value))
            except (ValueError, OverflowError):
                return value
        return value

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers to use: the configured cluster or the local broker."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def external_kafka(self) -> bool:
        """True when an existing cluster is configured: nothing is started locally."""
        return bool(self.kafka_bootstrap)

    @property
    def clickhouse_dsn(self) -> str:
        """Where ClickHouse is: ``clickhouse_url``, else embedded chdb in ``<data_dir>/clickhouse``."""
        return self.clickhouse_url or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def tokens_path(self) -> Path:
        """The bearer token file of the HTTP API."""
        return self.tokens_file or self.data_dir / "tokens.json"

    def group(self, part: str, *, unique: bool = False) -> str:
        """The Kafka consumer group of one part of the pipeline: ``<group_prefix>-<part>``.

        Every group name is made here. The parts: ``ledger`` (the ledger processor; its
        transactional ids and its changelog topic are named after this group), ``sink``,
        ``alerts`` (the faust app, also its data dir), ``webhooks``, ``notify``,
        ``commands-client`` (the SDK's reader of rejections) and ``probe`` (asks watermarks
        and committed offsets, never joins). ``unique``: a group of one short-lived reader
        that never commits (``<group_prefix>-<part>-<8 hex digits>``), e.g. ``reader``, ``view``, ``tail``
        (``finops alerts tail``).
        """
        name = f"{self.group_prefix}-{part}"
        return f"{name}-{uuid.uuid4().hex[:8]}" if unique else name


def load() -> Settings:
    """The settings of this process's environment."""
    return Settings()
