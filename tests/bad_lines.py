"""Good lines and bad lines with the reason each is refused for (reliability.md row 11): read by
tests/unit/test_bad_input.py and tests/integration/test_reliability.py."""

from __future__ import annotations

T = '"tenant_id":"acme","ts":"2026-11-01T10:00:00Z"'
GOOD = [
    f'{{"type":"purchase","id":"g1",{T},"credits":100}}',
    f'{{"type":"open_account","id":"g2",{T},"account_id":"team","kind":"team","parent_id":"acme"}}',
    f'{{"type":"allocate","id":"g3",{T},"from_account":"acme","to_account":"team","credits":"40.5"}}',
    f'{{"type":"usage","id":"g4",{T},"account_id":"team","api_key_id":"k","model_name":"m","operation_type":"chat",'
    f'"units_consumed":3,"credits_consumed":0.5,"unknown_extra":{{"kept":"in raw history"}}}}',
    '{"type":"purchase","id":"g5","tenant_id":"globex","ts":"2026-11-01T10:00:00Z","credits":7}',
]
USAGE = '"api_key_id":"k","model_name":"m","operation_type":"chat","units_consumed":1'
BAD = [  # (line, reason)
    ("this is not json", "not_json"),
    ('{"type":"purchase","id":"cut-off', "not_json"),
    ('["a", "list"]', "not_object"),
    (f'{{"id":"b1",{T}}}', "missing_type"),
    (f'{{"type":"refund_everything","id":"b2",{T}}}', "unknown_type"),
    (f'{{"type":"tick","id":"b3",{T},"schema_version":2}}', "unknown_version"),
    ('{"type":"tick","tenant_id":"acme","ts":"2026-11-01T10:00:00Z"}', "missing_id"),
    ('{"type":"tick","id":"b4","ts":"2026-11-01T10:00:00Z"}', "missing_tenant"),
    (f'{{"type":"purchase","id":"b5",{T}}}', "missing_field"),
    ('{"type":"tick","id":"b6","tenant_id":"acme","ts":"yesterday"}', "invalid_timestamp"),
    ('{"type":"tick","id":"b7","tenant_id":"acme","ts":"2026-11-01T10:00:00"}', "invalid_timestamp"),
    (f'{{"type":"purchase","id":"b8",{T},"credits":"1.0000001"}}', "invalid_amount"),
    (f'{{"type":"purchase","id":"b9",{T},"credits":-5}}', "invalid_amount"),
    (f'{{"type":"purchase","id":"b10",{T},"credits":"ten"}}', "invalid_amount"),
    (f'{{"type":"purchase","id":"b11",{T},"credits":true}}', "invalid_amount"),
    (f'{{"type":"usage","id":"b12",{T},{USAGE.replace("1", "[1]")}}}', "wrong_type"),
    (f'{{"type":"purchase","id":42,{T},"credits":1}}', "wrong_type"),
    (f'{{"type":"allocate","id":"b13",{T},"from_account":"acme","to_account":"team","credits":1,"cap":"medium"}}',
     "invalid"),
    (f'{{"type":"usage","id":"b14",{T},"account_id":"ghost",{USAGE},"credits_consumed":1}}', "unknown_account"),
    (f'{{"type":"allocate","id":"b15",{T},"from_account":"globex","to_account":"team","credits":1}}',
     "unknown_account"),  # another tenant's root account
    (f'{{"type":"allocate","id":"b16",{T},"from_account":"acme","to_account":"team","credits":1000}}',
     "insufficient_funds"),
    (f'{{"type":"reclaim","id":"b17",{T},"from_account":"team","to_account":"acme","credits":41}}',
     "insufficient_funds"),
    (f'{{"type":"open_account","id":"b18",{T},"account_id":"team","kind":"team","parent_id":"acme"}}',
     "account_exists"),
    (f'{{"type":"open_account","id":"b19",{T},"account_id":"x","kind":"team","parent_id":"nowhere"}}',
     "unknown_parent"),
    (f'{{"type":"allocate","id":"b20",{T},"from_account":"team","to_account":"acme","credits":1}}', "not_parent"),
    (f'{{"type":"allocate","id":"b21",{T},"from_account":"acme","to_account":"team","credits":1,'
     '"ends_at":"2026-10-01T00:00:00Z"}', "invalid_window"),
    (f'{{"type":"purchase","id":"g1",{T},"credits":99}}', "duplicate_id_conflict"),
    (f'{{"type":"settle","id":"b22",{T},"reservation_id":"never","credits":1}}', "unknown_reservation"),
    (f'{{"type":"override_cap","id":"b23",{T},"account_id":"team","until":"2026-12-01T00:00:00Z",'
     '"approvals":["cfo","cfo"]}', "approvals_required"),
    (f'{{"type":"usage","id":"b24",{T},"account_id":"team",{USAGE}}}', "no_rate"),
]
