-- Raw usage events as published (one row per usage message that could be read).
CREATE TABLE IF NOT EXISTS usage_events
(
    tenant_id           LowCardinality(String),
    id                  String,
    ts                  DateTime64(6, 'UTC'),
    account_id          String,
    api_key_id          String,
    model_name          LowCardinality(String),
    operation_type      LowCardinality(String),
    units_consumed      Float64,
    credits_micros      Nullable(Int64),
    team                LowCardinality(String),
    cost_center         LowCardinality(String),
    project             LowCardinality(String),
    env                 LowCardinality(String),
    labels              Map(String, String),
    response_latency_ms Nullable(Float64),
    error_code          String,
    raw                 String CODEC(ZSTD(3)),
    kafka_partition     UInt16,
    kafka_offset        UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, ts, id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Every balance movement of finops.ledger.v1.
CREATE TABLE IF NOT EXISTS ledger_entries
(
    entry_id        String,
    kind            LowCardinality(String),
    tenant_id       LowCardinality(String),
    account_id      String,
    cause_id        String,
    cause_type      LowCardinality(String),
    ts              DateTime64(6, 'UTC'),
    amount_micros   Int64,
    balance_micros  Int64,
    charged_to      String,
    grant_id        String,
    late            Bool,
    kafka_partition UInt16,
    kafka_offset    UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, account_id, ts, entry_id)
SETTINGS non_replicated_deduplication_window = 10000;
