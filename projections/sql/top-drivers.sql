-- Top cost drivers: the models, operations and API keys that spent the most from {from}
-- to {to} (UTC days), ten of each, with the cost per inference (credits per request).
-- Parameters: tenant ('' = all), from, to (Date); account is not used (keys name callers).
SELECT
    multiIf(grouping(model_name) = 0, 'model', grouping(operation_type) = 0, 'operation', 'api_key') AS driver,
    multiIf(grouping(model_name) = 0, toString(model_name), grouping(operation_type) = 0,
            toString(operation_type), api_key_id) AS value,
    toDecimal128(sum(credits_micros), 6) / 1000000 AS credits,
    sum(requests) AS requests,
    if(requests > 0, toDecimal128(sum(credits_micros), 6) / 1000000 / requests, NULL) AS cost_per_request,
    round(100 * sum(credits_micros) / sum(sum(credits_micros)) OVER (PARTITION BY driver), 2) AS share_pct
FROM mv_model_costs
WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
  AND day BETWEEN {from:Date} AND {to:Date}
GROUP BY GROUPING SETS ((model_name), (operation_type), (api_key_id))
ORDER BY driver, credits DESC, value
LIMIT 10 BY driver
