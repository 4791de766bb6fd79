-- Month-end forecast, the seed's formula: month-to-date spend + the average daily spend
-- of the last 14 days x the days left in the month after {to}. Per tenant, or per account
-- with {account}. (`finops report forecast` adds Holt's exponential smoothing, with a 90 %
-- interval, computed from daily-spend.sql.)
-- Parameters: tenant, account ('' = all), to (Date: "as of"); from is not used.
SELECT
    tenant_id,
    if({account:String} = '', '', charged_to) AS account_id,
    toStartOfMonth({to:Date}) AS month,
    toDecimal128(sumIf(credits_micros, day >= toStartOfMonth({to:Date})), 6) / 1000000 AS month_to_date,
    toDecimal128(sumIf(credits_micros, day > {to:Date} - 14), 6) / 14000000 AS avg_daily_14d,
    dateDiff('day', {to:Date}, toLastDayOfMonth({to:Date})) AS days_left,
    month_to_date + avg_daily_14d * days_left AS forecast_month_end
FROM mv_forecast_inputs
WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
  AND ({account:String} = '' OR charged_to = {account:String})
  AND day BETWEEN least(toStartOfMonth({to:Date}), {to:Date} - 13) AND {to:Date}
GROUP BY tenant_id, account_id
ORDER BY forecast_month_end DESC, tenant_id, account_id
