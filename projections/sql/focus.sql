-- FOCUS export (FinOps Open Cost and Usage Specification column names): one charge row per
-- UTC day, account, model, operation and labels, from {from} to {to}. Costs are credits x
-- {credit_price} in {currency} (what a credit is worth). Extra columns carry the x_ prefix.
-- Parameters: tenant, account ('' = all), from, to (Date), currency (String), credit_price (Decimal).
SELECT
    toDecimal128(toDecimal128(sum(credits_micros), 6) / 1000000 * {credit_price:Decimal(18, 6)}, 6) AS BilledCost,
    BilledCost AS EffectiveCost,
    BilledCost AS ListCost,
    BilledCost AS ContractedCost,
    {currency:String} AS BillingCurrency,
    tenant_id AS BillingAccountId,
    tenant_id AS BillingAccountName,
    concat(toString(toStartOfMonth(day)), 'T00:00:00Z') AS BillingPeriodStart,
    concat(toString(toStartOfMonth(day) + toIntervalMonth(1)), 'T00:00:00Z') AS BillingPeriodEnd,
    concat(toString(day), 'T00:00:00Z') AS ChargePeriodStart,
    concat(toString(day + 1), 'T00:00:00Z') AS ChargePeriodEnd,
    'Usage' AS ChargeCategory,
    'Usage-Based' AS PricingCategory,
    concat(toString(model_name), ' ', toString(operation_type), ' requests') AS ChargeDescription,
    sum(requests) AS ConsumedQuantity,
    'Requests' AS ConsumedUnit,
    'finops' AS ProviderName,
    'finops' AS PublisherName,
    'finops' AS InvoiceIssuerName,
    'AI and Machine Learning' AS ServiceCategory,
    toString(model_name) AS ServiceName,
    concat(toString(model_name), '/', toString(operation_type)) AS SkuId,
    charged_to AS SubAccountId,
    charged_to AS SubAccountName,
    toJSONString(mapFilter((k, v) -> v != '',
        map('team', toString(team), 'cost_center', toString(cost_center), 'project', toString(project),
            'env', toString(env)))) AS Tags,
    toDecimal128(toDecimal128(sum(overage_micros), 6) / 1000000 * {credit_price:Decimal(18, 6)}, 6) AS x_OverageCost,
    toDecimal128(sum(credits_micros), 6) / 1000000 AS x_Credits
FROM mv_forecast_inputs
WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
  AND ({account:String} = '' OR charged_to = {account:String})
  AND day BETWEEN {from:Date} AND {to:Date}
GROUP BY tenant_id, day, charged_to, model_name, operation_type, team, cost_center, project, env
ORDER BY day, BillingAccountId, SubAccountId, SkuId, Tags
