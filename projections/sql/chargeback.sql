-- Chargeback: spend per general-ledger account, from each usage's cost_center label and a
-- mapping cost center -> GL account ({cost_centers}[i] -> {gl_accounts}[i]; `finops report
-- chargeback --mapping FILE` reads it from a CSV with columns cost_center,gl_account).
-- Cost centers not in the mapping go to 'unmapped'. Period: {from} to {to} (UTC days).
-- Parameters: tenant ('' = all), account (charged account, '' = all), from, to, cost_centers, gl_accounts.
SELECT
    transform(cost_center, {cost_centers:Array(String)}, {gl_accounts:Array(String)}, 'unmapped') AS gl_account,
    cost_center,
    toDecimal128(sum(credits_micros), 6) / 1000000 AS credits,
    sum(requests) AS requests,
    round(100 * sum(credits_micros) / sum(sum(credits_micros)) OVER (), 2) AS share_pct
FROM mv_forecast_inputs
WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
  AND ({account:String} = '' OR charged_to = {account:String})
  AND day BETWEEN {from:Date} AND {to:Date}
GROUP BY gl_account, cost_center
ORDER BY gl_account, credits DESC, cost_center
