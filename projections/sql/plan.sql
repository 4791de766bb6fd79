-- Allocation plan, its inputs: the children of {account} (default: each tenant's root) with the
-- usage charged inside each child's subtree (the child and every account below it; consume +
-- overage) from {from} to {to} (UTC days), and the parent's available credits as of the end of
-- {to}. `finops report plan` splits next month's budget over these children by --method
-- (flat: equal shares; usage: in proportion to usage; hybrid: keeps --reserve-pct % of the
-- budget at the parent and splits the rest by usage) and writes the allocate commands.
-- The tree comes from the latest balance_snapshots row per account (parent_id), walked as an
-- ancestors array built by a fixed-depth expansion of 16 levels, as in runway.sql.
-- Parameters: tenant, account ('' = all tenants / each tenant's root), from, to (Date).
WITH
    accounts AS (
        SELECT tenant_id, account_id,
               argMax(kind, (ts, kafka_offset)) AS kind,
               argMax(parent_id, (ts, kafka_offset)) AS parent_id,
               argMax(available_micros, (ts, kafka_offset)) AS available_micros
        FROM balance_snapshots
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND ts < toDateTime64({to:Date} + 1, 6, 'UTC')
        GROUP BY tenant_id, account_id
    ),
    parents AS (
        SELECT tenant_id, CAST((groupArray(account_id), groupArray(parent_id)), 'Map(String, String)') AS parent_of
        FROM accounts
        GROUP BY tenant_id
    ),
    tree AS (  -- path: the account, its parent, ... up to the tenant root
        SELECT a.tenant_id AS tenant_id, a.account_id AS account_id,
               p.parent_of[a.account_id] AS p1, p.parent_of[p1] AS p2, p.parent_of[p2] AS p3,
               p.parent_of[p3] AS p4, p.parent_of[p4] AS p5, p.parent_of[p5] AS p6, p.parent_of[p6] AS p7,
               p.parent_of[p7] AS p8, p.parent_of[p8] AS p9, p.parent_of[p9] AS p10, p.parent_of[p10] AS p11,
               p.parent_of[p11] AS p12, p.parent_of[p12] AS p13, p.parent_of[p13] AS p14, p.parent_of[p14] AS p15,
               arrayFilter(x -> x != '', [a.account_id, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13,
                                          p14, p15]) AS path
        FROM accounts AS a
        INNER JOIN parents AS p ON p.tenant_id = a.tenant_id
    ),
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
