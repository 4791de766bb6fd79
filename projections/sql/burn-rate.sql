-- Burn rate: spend on the last day, and the average daily spend over the last 7 and 14
-- days up to {to} (calendar days: a day with no spend counts as 0), per account and per
-- tenant (scope = 'tenant', account_id = ''). Spend is what the ledger booked for usage
-- (consume + overage), charged to the account that used it.
-- Parameters: tenant, account ('' = all), from, to (Date); {from} bounds the total column.
SELECT
    tenant_id,
    if(grouping(charged_to) = 1, 'tenant', 'account') AS scope,
    if(grouping(charged_to) = 1, '', charged_to) AS account_id,
    toDecimal128(sumIf(credits_micros, day = {to:Date}), 6) / 1000000 AS last_day,
    toDecimal128(sumIf(credits_micros, day > {to:Date} - 7), 6) / 7000000 AS avg_7d,
    toDecimal128(sumIf(credits_micros, day > {to:Date} - 14), 6) / 14000000 AS avg_14d,
    toDecimal128(sumIf(credits_micros, day >= {from:Date}), 6) / 1000000 AS total,
    toDecimal128(sumIf(credits_micros, day >= {from:Date}), 6) / 1000000 / (dateDiff('day', {from:Date}, {to:Date}) + 1) AS avg_period
FROM mv_forecast_inputs
WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
  AND ({account:String} = '' OR charged_to = {account:String})
  AND day BETWEEN least({from:Date}, {to:Date} - 13) AND {to:Date}
GROUP BY GROUPING SETS ((tenant_id, charged_to), (tenant_id))
ORDER BY tenant_id, scope DESC, avg_7d DESC, account_id
