-- Reconcile: per tenant, as of the end of {to} (UTC), the ledger's identity
--     purchased = available + reserved + consumed - overage + expired
-- with each term read from ClickHouse on its own:
--   purchased  credit entries of purchases (ledger_entries);
--   available, reserved  the latest balance_snapshots row of every account, summed;
--   consumed   consume + overage entries: usage charged, funded or not (as the balances' consumed);
--   overage    overage entries: the part of usage nobody's grants paid;
--   expired    expire entries, less those that went back to an account: an expiry that returns
--              (on_expiry "return", a released hold of an ended grant) is booked expire #n then
--              credit #n+1 of the same cause, and those credits stay in the ledger.
-- difference = purchased - (available + reserved + consumed - overage + expired): 0 when the
-- books balance. Then the ledger's balances: each account's latest snapshot (available,
-- reserved, consumed, overage) against the sum of its ledger entries' movements:
--   available  + credit, allocation_in, release, refund; - allocation_out, reserve, reclaim,
--              expire, consume (a consume from a hold, hold_id set, was taken at reserve time);
--   reserved   of the account a hold is for (charged_to): + reserve; - release and consume of a hold;
--   consumed   of the charged account: consume + overage;  overage: overage.
-- accounts_differing counts accounts where any of the four differ; matches_ledger = none do.
-- As of a past day, usage that arrived late (stamped before the snapshots it came after) can
-- differ there; as of today every published movement is counted.
-- Parameters: tenant ('' = all), to (Date: "as of"); account and from are not used.
WITH
    entries AS (
        SELECT tenant_id, account_id, if(charged_to = '', account_id, charged_to) AS charged, entry_id, cause_id,
               cause_type, kind, amount_micros, hold_id
        FROM ledger_entries
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND ts < toDateTime64({to:Date} + 1, 6, 'UTC')
    ),
    snapshots AS (  -- each account's latest published state (a tenant's balances keep Kafka's order)
        SELECT tenant_id, account_id,
               argMax(available_micros, kafka_offset) AS available_micros,
               argMax(reserved_micros, kafka_offset) AS reserved_micros,
               argMax(consumed_micros, kafka_offset) AS consumed_micros,
               argMax(overage_micros, kafka_offset) AS overage_micros
        FROM balance_snapshots
        WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
          AND ts < toDateTime64({to:Date} + 1, 6, 'UTC')
        GROUP BY tenant_id, account_id
    ),
    returned AS (  -- expired credits that went back to an account: the credit right after the expire
        SELECT e.tenant_id AS tenant_id, sum(e.amount_micros) AS micros
        FROM (SELECT tenant_id, cause_id, amount_micros,
                     concat(cause_id, '#', toString(toUInt64(substring(entry_id, length(cause_id) + 2)) + 1)) AS next_id
              FROM entries WHERE kind = 'expire') AS e
        INNER JOIN (SELECT tenant_id, cause_id, entry_id, amount_micros FROM entries WHERE kind = 'credit') AS c
            ON c.tenant_id = e.tenant_id AND c.cause_id = e.cause_id AND c.entry_id = e.next_id
        GROUP BY e.tenant_id
    ),
    totals AS (
        SELECT tenant_id,
               sumIf(amount_micros, kind = 'credit' AND cause_type = 'purchase') AS purchased_micros,
               sumIf(amount_micros, kind IN ('consume', 'overage')) AS consumed_micros,
               sumIf(amount_micros, kind = 'overage') AS overage_micros,
               sumIf(amount_micros, kind = 'expire') AS expire_micros
        FROM entries
        GROUP BY tenant_id
    ),
    moved AS (  -- each account's balances as the sum of its entries' movements
        SELECT tenant_id, account_id,
               sum(available) AS available_micros, sum(reserved) AS reserved_micros,
               sum(consumed) AS consumed_micros, sum(overage) AS overage_micros
        FROM (
            SELECT tenant_id, account_id,
                   multiIf(kind IN ('credit', 'allocation_in', 'release', 'refund'), amount_micros,
                           kind IN ('allocation_out', 'reserve', 'reclaim', 'expire'), -amount_micros,
                           kind = 'consume' AND hold_id = '', -amount_micros,
                           0) AS available,
                   0 AS reserved, 0 AS consumed,
                   if(kind = 'overage', amount_micros, 0) AS overage
            FROM entries
            UNION ALL
            SELECT tenant_id, charged AS account_id, 0 AS available,
                   multiIf(kind = 'reserve', amount_micros,
                           kind IN ('release', 'consume') AND hold_id != '', -amount_micros,
                           0) AS reserved,
                   if(kind IN ('consume', 'overage'), amount_micros, 0) AS consumed,
                   0 AS overage
            FROM entries
        )
        GROUP BY tenant_id, account_id
    ),
    compared AS (
        SELECT if(s.tenant_id = '', m.tenant_id, s.tenant_id) AS tenant_id,
               (s.available_micros, s.reserved_micros, s.consumed_micros, s.overage_micros)
                   != (m.available_micros, m.reserved_micros, m.consumed_micros, m.overage_micros) AS differs
        FROM snapshots AS s
        FULL OUTER JOIN moved AS m ON m.tenant_id = s.tenant_id AND m.account_id = s.account_id
    ),
    checked AS (
        SELECT tenant_id, count() AS accounts, countIf(differs) AS accounts_differing
        FROM compared
        GROUP BY tenant_id
    ),
    held AS (
        SELECT tenant_id, sum(available_micros) AS available_micros, sum(reserved_micros) AS reserved_micros
        FROM snapshots
        GROUP BY tenant_id
    )
SELECT
    c.tenant_id AS tenant_id,
    toDecimal128(t.purchased_micros, 6) / 1000000 AS purchased,
    toDecimal128(h.available_micros, 6) / 1000000 AS available,
    toDecimal128(h.reserved_micros, 6) / 1000000 AS reserved,
    toDecimal128(t.consumed_micros, 6) / 1000000 AS consumed,
    toDecimal128(t.overage_micros, 6) / 1000000 AS overage,
    toDecimal128(t.expire_micros - r.micros, 6) / 1000000 AS expired,
    toDecimal128(t.purchased_micros - (h.available_micros + h.reserved_micros + t.consumed_micros
                                       - t.overage_micros + t.expire_micros - r.micros), 6) / 1000000 AS difference,
    CAST(difference = 0 AS Bool) AS balanced,
    c.accounts AS accounts,
    c.accounts_differing AS accounts_differing,
    CAST(c.accounts_differing = 0 AS Bool) AS matches_ledger
FROM checked AS c
LEFT JOIN totals AS t ON t.tenant_id = c.tenant_id
LEFT JOIN held AS h ON h.tenant_id = c.tenant_id
LEFT JOIN returned AS r ON r.tenant_id = c.tenant_id
ORDER BY balanced, matches_ledger, tenant_id
