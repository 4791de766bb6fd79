-- The account tree as of the end of {to}, for the WITH clause of a report (runway.sql and
-- plan.sql include it where they say `-- include: _account_tree.sql`; `finops report NAME --sql`
-- prints the report with it in place). Parameters: tenant ('' = all), to (Date).
--   accounts: each account's latest balance_snapshots row up to the end of {to} (kind,
--             parent_id, available_micros);
--   parents:  per tenant, a map from each account to its parent;
--   tree:     each account with its path: the account, its parent, ... up to the tenant root,
--             walked by a fixed-depth expansion (a map lookup per level, 16 levels: tenant ->
--             org -> workspace -> team -> user is 5), not a recursive CTE, so the reports run
--             on ClickHouse versions without WITH RECURSIVE.
accounts AS (  -- each account's latest published state up to the end of {to}
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
    SELECT a.tenant_id AS tenant_id, a.account_id AS account_id, a.available_micros AS available_micros,
           p.parent_of[a.account_id] AS p1, p.parent_of[p1] AS p2, p.parent_of[p2] AS p3,
           p.parent_of[p3] AS p4, p.parent_of[p4] AS p5, p.parent_of[p5] AS p6, p.parent_of[p6] AS p7,
           p.parent_of[p7] AS p8, p.parent_of[p8] AS p9, p.parent_of[p9] AS p10, p.parent_of[p10] AS p11,
           p.parent_of[p11] AS p12, p.parent_of[p12] AS p13, p.parent_of[p13] AS p14, p.parent_of[p14] AS p15,
           arrayFilter(x -> x != '', [a.account_id, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13,
                                      p14, p15]) AS path
    FROM accounts AS a
    INNER JOIN parents AS p ON p.tenant_id = a.tenant_id
),
