-- Runway over the subtree: for each account, when the credits of the account and everything
-- below it run out at the rate its whole subtree spends.
--   capacity  = available credits of the account and of every account below it, as of the end of {to};
--   burn      = all usage charged to an account of the subtree (consume + overage: what the
--               subtree's users spend, whoever's grants paid) over the 14 days up to {to},
--               divided by those days, burn_days: fewer when the subtree started spending
--               inside them (its first spend in the 28 days up to {to} is in the last 14), so
--               the days before it existed do not dilute its rate;
--   runway    = capacity / daily burn, and the day it runs dry ({to} + whole days).
-- A tenant root's row is the whole tenant: everything purchased and still available
-- anywhere in its tree against all of the tenant's usage.
-- window_end: the earliest end still ahead of a grant the account received and the ledger
-- applied (ends_at/expires_at of an allocation, expires_at of a purchase for the root; a
-- monthly recurrence ends its period at the month's end); runs_out_before_window_end says
-- the subtree runs dry first. The own_* columns are the account's own grants alone: its
-- available and the average daily draw on them over the 14 days (which includes what
-- descendants drew from it through the cascade).
-- The tree (accounts, parents, tree) is _account_tree.sql's, included below: the latest
-- balance_snapshots row per account as of {to}, each with its path up to the tenant root.
-- Accounts with no burn have no runway date.
-- Parameters: tenant, account ('' = all), to (Date: "as of"); from is not used.
WITH
    -- include: _account_tree.sql  (accounts, parents, tree)
    spend AS (  -- usage charged to each account in the 14 days up to {to}; its first day of the 28
        SELECT tenant_id, charged_to AS account_id,
               sumIf(credits_micros, day > {to:Date} - 14) AS window_micros,
               min(day) AS first_day
        FROM mv_forecast_inputs
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND day BETWEEN {to:Date} - 27 AND {to:Date}
        GROUP BY tenant_id, charged_to
    ),
    subtree AS (  -- each account's figures added to itself and to every ancestor
        SELECT t.tenant_id AS tenant_id, arrayJoin(t.path) AS account_id,
               sum(t.available_micros) AS capacity_micros,
               sum(ifNull(s.window_micros, 0)) AS burn_micros,
               min(s.first_day) AS first_day
        FROM tree AS t
        LEFT JOIN spend AS s ON s.tenant_id = t.tenant_id AND s.account_id = t.account_id
        GROUP BY tenant_id, account_id
    ),
    own_burn AS (
        SELECT tenant_id, funded_by AS account_id, sum(credits_micros - overage_micros) / 14 AS daily_micros
        FROM mv_forecast_inputs
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND funded_by != ''
          AND ({account:String} = '' OR funded_by = {account:String})
          AND day BETWEEN {to:Date} - 13 AND {to:Date}
        GROUP BY tenant_id, funded_by
    ),
    windows AS (
        SELECT a.tenant_id, a.to_account AS account_id,
               minIf(toDate(coalesce(a.ends_at, a.expires_at)),
                     coalesce(a.ends_at, a.expires_at) IS NOT NULL
                     AND toDate(coalesce(a.ends_at, a.expires_at)) >= {to:Date}) AS window_end_fixed,
               max(a.recurrence_every = 'month') AS recurring
        FROM allocations AS a
        WHERE a.type IN ('allocate', 'purchase')
          AND ({tenant:String} = '' OR a.tenant_id = {tenant:String})
          AND (a.tenant_id, a.id) IN (SELECT tenant_id, cause_id FROM ledger_entries
                                      WHERE kind IN ('allocation_in', 'credit')
                                        AND cause_type IN ('allocate', 'purchase'))
        GROUP BY a.tenant_id, a.to_account
    )
SELECT
    a.tenant_id AS tenant_id,
    a.account_id AS account_id,
    a.kind AS kind,
    a.parent_id AS parent_id,
    toDecimal128(s.capacity_micros, 6) / 1000000 AS capacity,
    if(s.first_day IS NULL, 0, least(14, dateDiff('day', s.first_day, {to:Date}) + 1)) AS burn_days,
    if(burn_days > 0, toDecimal128(s.burn_micros, 6) / 1000000 / burn_days, toDecimal128(0, 6)) AS daily_burn,
    if(s.burn_micros > 0, round(toFloat64(s.capacity_micros) * burn_days / s.burn_micros, 2), NULL) AS runway_days,
    if(s.burn_micros > 0,
       {to:Date} + toIntervalDay(intDiv(toInt128(greatest(s.capacity_micros, 0)) * burn_days, s.burn_micros)),
       NULL) AS runs_out_on,
    multiIf(w.window_end_fixed > toDate(0) AND w.recurring = 1,
                least(w.window_end_fixed, toLastDayOfMonth({to:Date})),
            w.recurring = 1, toLastDayOfMonth({to:Date}),
            w.window_end_fixed > toDate(0), w.window_end_fixed,
            NULL) AS window_end,
    CAST(runs_out_on IS NOT NULL AND window_end IS NOT NULL AND runs_out_on < window_end AS Bool)
        AS runs_out_before_window_end,
    toDecimal128(a.available_micros, 6) / 1000000 AS own_available,
    toDecimal128(toInt64(ifNull(o.daily_micros, 0)), 6) / 1000000 AS own_daily_burn,
    if(ifNull(o.daily_micros, 0) > 0, round(a.available_micros / o.daily_micros, 2), NULL) AS own_runway_days,
    if(ifNull(o.daily_micros, 0) > 0, {to:Date} + toIntervalDay(floor(a.available_micros / o.daily_micros)), NULL)
        AS own_runs_out_on
FROM accounts AS a
INNER JOIN subtree AS s ON s.tenant_id = a.tenant_id AND s.account_id = a.account_id
LEFT JOIN own_burn AS o ON o.tenant_id = a.tenant_id AND o.account_id = a.account_id
LEFT JOIN windows AS w ON w.tenant_id = a.tenant_id AND w.account_id = a.account_id
WHERE {account:String} = '' OR a.account_id = {account:String}
ORDER BY runs_out_before_window_end DESC, runway_days IS NULL, runway_days, tenant_id, account_id
SETTINGS join_use_nulls = 1
