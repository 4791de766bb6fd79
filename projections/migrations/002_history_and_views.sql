-- History beyond usage and ledger (alerts, balance snapshots, allocations), the sink's
-- batch log, the daily materialized views the reports read, and views in credits.
-- Money columns are integer micro-credits (Int64); the v_* views show Decimal credits.

-- Ledger entries caused by a usage carry what it was for (wire v1 addition).
ALTER TABLE ledger_entries
    ADD COLUMN IF NOT EXISTS hold_id        String,
    ADD COLUMN IF NOT EXISTS model_name     LowCardinality(String),
    ADD COLUMN IF NOT EXISTS operation_type LowCardinality(String),
    ADD COLUMN IF NOT EXISTS api_key_id     String,
    ADD COLUMN IF NOT EXISTS usage_labels   Map(String, String),
    ADD COLUMN IF NOT EXISTS team           LowCardinality(String) DEFAULT usage_labels['team'],
    ADD COLUMN IF NOT EXISTS cost_center    LowCardinality(String) DEFAULT usage_labels['cost_center'],
    ADD COLUMN IF NOT EXISTS project        LowCardinality(String) DEFAULT usage_labels['project'],
    ADD COLUMN IF NOT EXISTS env            LowCardinality(String) DEFAULT usage_labels['env'];

-- finops.alerts.v1, firing and resolved.
CREATE TABLE IF NOT EXISTS alerts
(
    id                        String,
    tenant_id                 LowCardinality(String),
    account_id                String,
    type                      LowCardinality(String),
    severity                  LowCardinality(String),
    status                    LowCardinality(String),
    threshold                 Int32,
    current_usage_micros      Int64,
    monthly_allocation_micros Int64,
    period                    String,
    action                    String,
    ts                        DateTime64(6, 'UTC'),
    kafka_partition           UInt16,
    kafka_offset              UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, ts, account_id, id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Every state of every account published on finops.balances.v1 (the topic is compacted;
-- this table keeps the history). The latest row per account is its balance now.
CREATE TABLE IF NOT EXISTS balance_snapshots
(
    tenant_id        LowCardinality(String),
    account_id       String,
    kind             LowCardinality(String),
    parent_id        String,
    available_micros Int64,
    consumed_micros  Int64,
    reserved_micros  Int64,
    overage_micros   Int64,
    ts               DateTime64(6, 'UTC'),
    kafka_partition  UInt16,
    kafka_offset     UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, account_id, ts, kafka_offset)
SETTINGS non_replicated_deduplication_window = 10000;

-- purchase, allocate and reclaim commands as published on finops.commands.v1. Whether one
-- was applied is in the ledger: entries with cause_id = id (see the runway report).
CREATE TABLE IF NOT EXISTS allocations
(
    id               String,
    tenant_id        LowCardinality(String),
    type             LowCardinality(String),
    ts               DateTime64(6, 'UTC'),
    from_account     String,
    to_account       String,
    credits_micros   Nullable(Int64),
    reclaim_all      Bool,
    starts_at        Nullable(DateTime64(6, 'UTC')),
    ends_at          Nullable(DateTime64(6, 'UTC')),
    expires_at       Nullable(DateTime64(6, 'UTC')),
    recurrence_every LowCardinality(String),
    rollover_pct     UInt8,
    cap              LowCardinality(String),
    thresholds       Array(UInt16),
    kafka_partition  UInt16,
    kafka_offset     UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, ts, id)
SETTINGS non_replicated_deduplication_window = 10000;

-- The sink's batch log: each (topic, partition, offset range) is written here before its
-- rows, so after a crash the same range is inserted again with the same deduplication
-- token. The newest row per (topic, partition) is where the sink resumes.
CREATE TABLE IF NOT EXISTS sink_batches
(
    topic        LowCardinality(String),
    partition    UInt16,
    first_offset UInt64,
    last_offset  UInt64,
    rows         UInt32,
    written_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (topic, partition, last_offset)
SETTINGS non_replicated_deduplication_window = 10000;

-- ---------------------------------------------------------------- daily aggregates
-- Spend is what the ledger booked for usage: `consume` and `overage` entries. `charged_to`
-- is the account the usage was charged to; `funded_by` the account whose grants paid
-- (an ancestor, when the cascade climbed). `requests` counts usages (their entry #0).

CREATE TABLE IF NOT EXISTS forecast_inputs_daily
(
    tenant_id      LowCardinality(String),
    day            Date,
    charged_to     String,
    funded_by      String,
    team           LowCardinality(String),
    cost_center    LowCardinality(String),
    project        LowCardinality(String),
    env            LowCardinality(String),
    model_name     LowCardinality(String),
    operation_type LowCardinality(String),
    credits_micros Int64,
    overage_micros Int64,
    requests       UInt64
)
ENGINE = SummingMergeTree((credits_micros, overage_micros, requests))
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, charged_to, funded_by, team, cost_center, project, env, model_name, operation_type)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mv_forecast_inputs TO forecast_inputs_daily AS
SELECT tenant_id, toDate(ts) AS day,
       if(charged_to = '', account_id, charged_to) AS charged_to,
       if(kind = 'consume', account_id, '') AS funded_by,
       team, cost_center, project, env, model_name, operation_type,
       toInt64(sum(amount_micros)) AS credits_micros,
       toInt64(sumIf(amount_micros, kind = 'overage')) AS overage_micros,
       countIf(endsWith(entry_id, '#0')) AS requests
FROM ledger_entries
WHERE kind IN ('consume', 'overage')
GROUP BY tenant_id, day, charged_to, funded_by, team, cost_center, project, env, model_name, operation_type;

CREATE TABLE IF NOT EXISTS credits_by_team_daily
(
    tenant_id      LowCardinality(String),
    day            Date,
    team           LowCardinality(String),
    cost_center    LowCardinality(String),
    project        LowCardinality(String),
    env            LowCardinality(String),
    credits_micros Int64,
    requests       UInt64
)
ENGINE = SummingMergeTree((credits_micros, requests))
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, team, cost_center, project, env)
SETTINGS non_replicated_deduplication_window = 10000;

-- Chained off the daily table above (its keys are a subset), so it reads aggregated blocks.
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_credits_by_team TO credits_by_team_daily AS
SELECT tenant_id, day, team, cost_center, project, env,
       toInt64(sum(credits_micros)) AS credits_micros,
       sum(requests) AS requests
FROM forecast_inputs_daily
GROUP BY tenant_id, day, team, cost_center, project, env;

CREATE TABLE IF NOT EXISTS model_costs_daily
(
    tenant_id      LowCardinality(String),
    day            Date,
    model_name     LowCardinality(String),
    operation_type LowCardinality(String),
    api_key_id     String,
    credits_micros Int64,
    requests       UInt64
)
ENGINE = SummingMergeTree((credits_micros, requests))
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, model_name, operation_type, api_key_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mv_model_costs TO model_costs_daily AS
SELECT tenant_id, toDate(ts) AS day, model_name, operation_type, api_key_id,
       toInt64(sum(amount_micros)) AS credits_micros,
       countIf(endsWith(entry_id, '#0')) AS requests
FROM ledger_entries
WHERE kind IN ('consume', 'overage')
GROUP BY tenant_id, day, model_name, operation_type, api_key_id;

-- Traffic as received (usage_events): a resent request counts again here, never in spend.
CREATE TABLE IF NOT EXISTS request_summary_daily
(
    tenant_id       LowCardinality(String),
    day             Date,
    model_name      LowCardinality(String),
    operation_type  LowCardinality(String),
    env             LowCardinality(String),
    requests        SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    units           SimpleAggregateFunction(sum, Float64),
    latency_ms_sum  SimpleAggregateFunction(sum, Float64),
    latency_count   SimpleAggregateFunction(sum, UInt64),
    latency_ms      AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, model_name, operation_type, env)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS mv_request_summary TO request_summary_daily AS
SELECT tenant_id, toDate(ts) AS day, model_name, operation_type, env,
       count() AS requests,
       countIf(error_code != '') AS errors,
       sum(units_consumed) AS units,
       sum(ifNull(response_latency_ms, 0)) AS latency_ms_sum,
       count(response_latency_ms) AS latency_count,
       quantilesTDigestState(0.5, 0.95, 0.99)(ifNull(response_latency_ms, nan)) AS latency_ms
FROM usage_events
GROUP BY tenant_id, day, model_name, operation_type, env;

-- ---------------------------------------------------------------- in credits, for people
CREATE VIEW IF NOT EXISTS v_ledger_entries AS
SELECT entry_id, kind, tenant_id, account_id, cause_id, cause_type, ts,
       toDecimal128(amount_micros, 6) / 1000000 AS amount,
       toDecimal128(balance_micros, 6) / 1000000 AS balance,
       charged_to, grant_id, hold_id, late, model_name, operation_type, api_key_id,
       team, cost_center, project, env, usage_labels
FROM ledger_entries;

CREATE VIEW IF NOT EXISTS v_balances AS
SELECT tenant_id, account_id,
       argMax(kind, (ts, kafka_offset)) AS kind,
       argMax(parent_id, (ts, kafka_offset)) AS parent_id,
       toDecimal128(argMax(available_micros, (ts, kafka_offset)), 6) / 1000000 AS available,
       toDecimal128(argMax(consumed_micros, (ts, kafka_offset)), 6) / 1000000 AS consumed,
       toDecimal128(argMax(reserved_micros, (ts, kafka_offset)), 6) / 1000000 AS reserved,
       toDecimal128(argMax(overage_micros, (ts, kafka_offset)), 6) / 1000000 AS overage,
       max(ts) AS as_of
FROM balance_snapshots
GROUP BY tenant_id, account_id;

CREATE VIEW IF NOT EXISTS v_spend_daily AS
SELECT tenant_id, day, charged_to, team, cost_center, project, env, model_name, operation_type,
       toDecimal128(sum(credits_micros), 6) / 1000000 AS credits,
       toDecimal128(sum(overage_micros), 6) / 1000000 AS overage,
       sum(requests) AS requests
FROM forecast_inputs_daily
GROUP BY tenant_id, day, charged_to, team, cost_center, project, env, model_name, operation_type;
