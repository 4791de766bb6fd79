-- Showback: spend per team and project (from the usage labels), with each one's share of
-- the total, for {from} to {to} (UTC days). No money moves: it shows who used what.
-- Parameters: tenant, account ('' = all), from, to (Date).
SELECT
    tenant_id,
    team,
    project,
    toDecimal128(sum(credits_micros), 6) / 1000000 AS credits,
    sum(requests) AS requests,
    round(100 * sum(credits_micros) / sum(sum(credits_micros)) OVER (PARTITION BY tenant_id), 2) AS share_pct
FROM mv_credits_by_team
WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
  AND day BETWEEN {from:Date} AND {to:Date}
  AND ({account:String} = '' OR (tenant_id, team, cost_center, project, env) IN (
        SELECT tenant_id, team, cost_center, project, env FROM mv_forecast_inputs
        WHERE charged_to = {account:String} AND day BETWEEN {from:Date} AND {to:Date}))
GROUP BY tenant_id, team, project
ORDER BY tenant_id, credits DESC, team, project
