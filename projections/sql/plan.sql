-- Allocation plan, its inputs: the children of {account} (default: each tenant's root) with the
-- usage charged inside each child's subtree (the child and every account below it; consume +
-- overage) from {from} to {to} (UTC days), and the parent's available credits as of the end of
-- {to}. `finops report plan` splits next month's budget over these children by --method
-- (flat: equal shares; usage: in proportion to usage; hybrid: keeps --reserve-pct % of the
-- budget at the parent and splits the rest by usage) and writes the allocate commands.
-- The tree (accounts, parents, tree) is _account_tree.sql's, included below: the latest
-- balance_snapshots row per account as of {to}, each with its path up to the tenant root.
-- Parameters: tenant, account ('' = all tenants / each tenant's root), from, to (Date).
WITH
    -- include: _account_tree.sql  (accounts, parents, tree)
    spend AS (
        SELECT tenant_id, charged_to AS account_id, sum(credits_micros) AS micros
        FROM mv_forecast_inputs
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND day BETWEEN {from:Date} AND {to:Date}
        GROUP BY tenant_id, charged_to
    ),
    subtree AS (
        SELECT t.tenant_id AS tenant_id, arrayJoin(t.path) AS account_id, sum(s.micros) AS usage_micros
        FROM tree AS t
        LEFT JOIN spend AS s ON s.tenant_id = t.tenant_id AND s.account_id = t.account_id
        GROUP BY tenant_id, account_id
    )
SELECT
    c.tenant_id AS tenant_id,
    c.parent_id AS from_account,
    c.account_id AS to_account,
    c.kind AS kind,
    ifNull(u.usage_micros, 0) AS usage_micros,
    p.available_micros AS parent_available_micros
FROM accounts AS c
INNER JOIN accounts AS p ON p.tenant_id = c.tenant_id AND p.account_id = c.parent_id
LEFT JOIN subtree AS u ON u.tenant_id = c.tenant_id AND u.account_id = c.account_id
WHERE c.parent_id = if({account:String} = '', c.tenant_id, {account:String})
ORDER BY tenant_id, from_account, to_account
