-- Daily spend per account (the account each usage was charged to), one row per day with
-- spend, from {from} to {to} (UTC days, both included). Used by the forecast's smoothing and
-- the burn-down plots. Amounts are credits (Decimal, 6 places).
-- Parameters: tenant, account ('' = all), from, to (Date).
SELECT
    tenant_id,
    if({account:String} = '', '', charged_to) AS account_id,
    day,
    toDecimal128(sum(credits_micros), 6) / 1000000 AS credits
FROM mv_forecast_inputs
WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
  AND ({account:String} = '' OR charged_to = {account:String})
  AND day BETWEEN {from:Date} AND {to:Date}
GROUP BY tenant_id, account_id, day
ORDER BY tenant_id, account_id, day
