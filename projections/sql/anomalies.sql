-- Anomalies: days whose spend on an account is more than {z} standard deviations above
-- its trailing 30-day mean (the 30 days before, days without spend counted as 0, from
-- the account's first day of spend; at least {min_days} days of history). Days from
-- {from} to {to} (UTC) are judged.
-- Parameters: tenant, account ('' = all), from, to (Date), z (Float64), min_days (UInt32).
WITH
    spend AS (
        SELECT tenant_id, charged_to AS account_id, day, sum(credits_micros) AS micros
        FROM mv_forecast_inputs
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND ({account:String} = '' OR charged_to = {account:String})
          AND day BETWEEN {from:Date} - 30 AND {to:Date}
        GROUP BY tenant_id, account_id, day
    ),
    grid AS (
        SELECT tenant_id, account_id,
               arrayJoin(arrayMap(i -> first_day + i, range(toUInt32(dateDiff('day', first_day, {to:Date}) + 1))))
                   AS day
        FROM (SELECT tenant_id, account_id, min(day) AS first_day FROM spend GROUP BY tenant_id, account_id)
    ),
    scored AS (
        SELECT g.tenant_id AS tenant_id, g.account_id AS account_id, g.day AS day, ifNull(s.micros, 0) AS micros,
               avg(micros) OVER w AS mean_micros,
               stddevPop(micros) OVER w AS std_micros,
               count() OVER w AS history_days
        FROM grid AS g
        LEFT JOIN spend AS s ON s.tenant_id = g.tenant_id AND s.account_id = g.account_id AND s.day = g.day
        WINDOW w AS (PARTITION BY g.tenant_id, g.account_id ORDER BY g.day ROWS BETWEEN 30 PRECEDING AND 1 PRECEDING)
        SETTINGS join_use_nulls = 1
    )
SELECT
    tenant_id, account_id, day,
    toDecimal128(micros, 6) / 1000000 AS credits,
    toDecimal128(toInt64(mean_micros), 6) / 1000000 AS trailing_mean,
    toDecimal128(toInt64(std_micros), 6) / 1000000 AS trailing_std,
    round((micros - mean_micros) / std_micros, 2) AS z
FROM scored
WHERE day BETWEEN {from:Date} AND {to:Date}
  AND history_days >= {min_days:UInt32}
  AND std_micros > 0
  AND (micros - mean_micros) / std_micros > {z:Float64}
ORDER BY z DESC, tenant_id, account_id, day
