-- Runway: how many days each account's available credits last at its burn rate (the
-- average daily draw on its own grants over the last 14 days, which includes what
-- descendants drew from it through the cascade), the day it runs dry, and whether that
-- comes before the end of its spend window (the earliest ends_at/expires_at still ahead of
-- an allocation it received and the ledger applied; a monthly recurrence ends its period
-- at the month's end). Accounts with no burn have no runway date.
-- Parameters: tenant, account ('' = all), to (Date: "as of"); from is not used.
WITH
    balances AS (
        SELECT tenant_id, account_id,
               argMax(available_micros, (ts, kafka_offset)) AS available_micros
        FROM balance_snapshots
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND ({account:String} = '' OR account_id = {account:String})
          AND ts < toDateTime64({to:Date} + 1, 6, 'UTC')
        GROUP BY tenant_id, account_id
    ),
    burn AS (
        SELECT tenant_id, funded_by AS account_id, sum(credits_micros - overage_micros) / 14 AS daily_micros
        FROM mv_forecast_inputs
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND funded_by != ''
          AND ({account:String} = '' OR funded_by = {account:String})
          AND day BETWEEN {to:Date} - 13 AND {to:Date}
        GROUP BY tenant_id, funded_by
    ),
    windows AS (
        SELECT a.tenant_id, a.to_account AS account_id,
               minIf(toDate(coalesce(a.ends_at, a.expires_at)),
                     coalesce(a.ends_at, a.expires_at) IS NOT NULL
                     AND toDate(coalesce(a.ends_at, a.expires_at)) >= {to:Date}) AS window_end_fixed,
               max(a.recurrence_every = 'month') AS recurring
        FROM allocations AS a
        WHERE a.type = 'allocate'
          AND ({tenant:String} = '' OR a.tenant_id = {tenant:String})
          AND (a.tenant_id, a.id) IN (SELECT tenant_id, cause_id FROM ledger_entries WHERE kind = 'allocation_in')
        GROUP BY a.tenant_id, a.to_account
    )
SELECT
    b.tenant_id AS tenant_id,
    b.account_id AS account_id,
    toDecimal128(b.available_micros, 6) / 1000000 AS available,
    toDecimal128(toInt64(ifNull(u.daily_micros, 0)), 6) / 1000000 AS daily_burn,
    if(ifNull(u.daily_micros, 0) > 0, round(b.available_micros / u.daily_micros, 2), NULL) AS runway_days,
    if(ifNull(u.daily_micros, 0) > 0, {to:Date} + toIntervalDay(floor(b.available_micros / u.daily_micros)), NULL)
        AS runs_out_on,
    multiIf(w.window_end_fixed > toDate(0) AND w.recurring = 1,
                least(w.window_end_fixed, toLastDayOfMonth({to:Date})),
            w.recurring = 1, toLastDayOfMonth({to:Date}),
            w.window_end_fixed > toDate(0), w.window_end_fixed,
            NULL) AS window_end,
    CAST(runs_out_on IS NOT NULL AND window_end IS NOT NULL AND runs_out_on < window_end AS Bool)
        AS runs_out_before_window_end
FROM balances AS b
LEFT JOIN burn AS u ON u.tenant_id = b.tenant_id AND u.account_id = b.account_id
LEFT JOIN windows AS w ON w.tenant_id = b.tenant_id AND w.account_id = b.account_id
ORDER BY runs_out_before_window_end DESC, runway_days IS NULL, runway_days, tenant_id, account_id
SETTINGS join_use_nulls = 1
