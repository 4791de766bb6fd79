-- Forecast accuracy: for each calendar month from {from}'s month on that ended by {to}, the
-- month-end forecast the forecast report's formula (forecast.sql, the seed's formula: month to
-- date + the average daily spend of the last 14 days x the days left in the month) would have
-- made as of the month's 7th, 14th and 21st day, against the month's actual spend, and its error
-- in % of the actual. Per tenant, or per account with {account}. Spend is what the ledger
-- booked for usage (consume + overage), charged to the account that used it.
-- (`finops report forecast-accuracy` adds Holt's forecast as of the same days, as the forecast
-- report computes it from daily-spend.sql: holt, holt_error_pct.)
-- Parameters: tenant, account ('' = all), from, to (Date).
WITH
    months AS (
        SELECT toStartOfMonth({from:Date}) + toIntervalMonth(number) AS month
        FROM numbers(toUInt64(greatest(0, dateDiff('month', toStartOfMonth({from:Date}), toStartOfMonth({to:Date})) + 1)))
        WHERE toLastDayOfMonth(month) <= {to:Date}
    ),
    points AS (
        SELECT month, arrayJoin([7, 14, 21]) AS day, month + (day - 1) AS as_of
        FROM months
    ),
    spend AS (
        SELECT tenant_id, if({account:String} = '', '', charged_to) AS account_id, day AS spend_day,
               sum(credits_micros) AS micros
        FROM mv_forecast_inputs
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND ({account:String} = '' OR charged_to = {account:String})
          AND day BETWEEN toStartOfMonth({from:Date}) - 13 AND {to:Date}
        GROUP BY tenant_id, account_id, spend_day
    )
SELECT
    s.tenant_id AS tenant_id,
    s.account_id AS account_id,
    p.month AS month,
    p.day AS day,
    p.as_of AS as_of,
    toDecimal128(sumIf(s.micros, s.spend_day >= p.month AND s.spend_day <= p.as_of), 6) / 1000000 AS month_to_date,
    toDecimal128(sumIf(s.micros, s.spend_day > p.as_of - 14 AND s.spend_day <= p.as_of), 6) / 14000000
        AS avg_daily_14d,
    dateDiff('day', p.as_of, toLastDayOfMonth(p.month)) AS days_left,
    month_to_date + avg_daily_14d * days_left AS formula,
    toDecimal128(sumIf(s.micros, s.spend_day >= p.month AND s.spend_day <= toLastDayOfMonth(p.month)), 6) / 1000000
        AS actual,
    if(actual > 0, round(toFloat64(formula - actual) / toFloat64(actual) * 100, 2), NULL) AS formula_error_pct
FROM spend AS s
CROSS JOIN points AS p
GROUP BY s.tenant_id, s.account_id, p.month, p.day, p.as_of
HAVING actual > 0 OR formula > 0
ORDER BY tenant_id, account_id, month, day
