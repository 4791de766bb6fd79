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
    moved AS (  -- one pass over the entries: each moves the balances of the account it names
                -- (available, overage) and of the account it was charged to (reserved, consumed);
                -- purchases and expiries are carried along for the tenant's totals
        SELECT tenant_id, side.1 AS account_id,
               sum(side.2) AS available_micros, sum(side.3) AS reserved_micros,
               sum(side.4) AS consumed_micros, sum(side.5) AS overage_micros,
               sum(side.6) AS purchased_micros, sum(side.7) AS expire_micros
        FROM (
            SELECT tenant_id,
                   arrayJoin([
                       (account_id,
                        multiIf(kind IN ('credit', 'allocation_in', 'release', 'refund'), amount_micros,
                                kind IN ('allocation_out', 'reserve', 'reclaim', 'expire'), -amount_micros,
                                kind = 'consume' AND hold_id = '', -amount_micros,
                                0),
                        0, 0,
                        if(kind = 'overage', amount_micros, 0),
                        if(kind = 'credit' AND cause_type = 'purchase', amount_micros, 0),
                        if(kind = 'expire', amount_micros, 0)),
                       (if(charged_to = '', account_id, charged_to),
                        0,
                        multiIf(kind = 'reserve', amount_micros,
                                kind IN ('release', 'consume') AND hold_id != '', -amount_micros,
                                0),
                        if(kind IN ('consume', 'overage'), amount_micros, 0),
                        0, 0, 0)]) AS side
            FROM ledger_entries
            WHERE ({tenant:String} = '' OR tenant_id = {tenant:String})
              AND ts < toDateTime64({to:Date} + 1, 6, 'UTC')
        )
        GROUP BY tenant_id, account_id
    ),
    checked AS (  -- per tenant: the totals, and how many accounts' snapshots differ from their entries
        SELECT if(s.tenant_id = '', m.tenant_id, s.tenant_id) AS tenant_id,
               count() AS accounts,
               countIf((s.available_micros, s.reserved_micros, s.consumed_micros, s.overage_micros)
                       != (m.available_micros, m.reserved_micros, m.consumed_micros, m.overage_micros))
                   AS accounts_differing,
               sum(s.available_micros) AS available_micros, sum(s.reserved_micros) AS reserved_micros,
               sum(m.consumed_micros) AS consumed_micros, sum(m.overage_micros) AS overage_micros,
               sum(m.purchased_micros) AS purchased_micros, sum(m.expire_micros) AS expire_micros
        FROM snapshots AS s
        FULL OUTER JOIN moved AS m ON m.tenant_id = s.tenant_id AND m.account_id = s.account_id
        GROUP BY tenant_id
    ),
    returned AS (  -- expired credits that went back to an account: the credit right after the expire
        SELECT e.tenant_id AS tenant_id, sum(e.amount_micros) AS micros
        FROM (SELECT tenant_id, cause_id, amount_micros,
                     concat(cause_id, '#', toString(toUInt64(substring(entry_id, length(cause_id) + 2)) + 1)) AS next_id
              FROM ledger_entries
              WHERE kind = 'expire'
                AND ({tenant:String} = '' OR tenant_id = {tenant:String})
                AND ts < toDateTime64({to:Date} + 1, 6, 'UTC')) AS e
        INNER JOIN (SELECT tenant_id, cause_id, entry_id
                    FROM ledger_entries
                    WHERE kind = 'credit' AND cause_type != 'purchase'
                      AND ({tenant:String} = '' OR tenant_id = {tenant:String})
                      AND ts < toDateTime64({to:Date} + 1, 6, 'UTC')) AS c
            ON c.tenant_id = e.tenant_id AND c.cause_id = e.cause_id AND c.entry_id = e.next_id
        GROUP BY e.tenant_id
    )
SELECT
    c.tenant_id AS tenant_id,
    toDecimal128(c.purchased_micros, 6) / 1000000 AS purchased,
    toDecimal128(c.available_micros, 6) / 1000000 AS available,
    toDecimal128(c.reserved_micros, 6) / 1000000 AS reserved,
    toDecimal128(c.consumed_micros, 6) / 1000000 AS consumed,
    toDecimal128(c.overage_micros, 6) / 1000000 AS overage,
    toDecimal128(c.expire_micros - r.micros, 6) / 1000000 AS expired,
    toDecimal128(c.purchased_micros - (c.available_micros + c.reserved_micros + c.consumed_micros
                                       - c.overage_micros + c.expire_micros - r.micros), 6) / 1000000 AS difference,
    CAST(difference = 0 AS Bool) AS balanced,
    c.accounts AS accounts,
    c.accounts_differing AS accounts_differing,
    CAST(c.accounts_differing = 0 AS Bool) AS matches_ledger
FROM checked AS c
LEFT JOIN returned AS r ON r.tenant_id = c.tenant_id
ORDER BY balanced, matches_ledger, tenant_id
