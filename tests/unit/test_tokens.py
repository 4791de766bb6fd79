"""The bearer token store of the HTTP API (finops/tokens.py) and `finops tokens`: no Kafka."""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import pytest
from typer.testing import CliRunner

from finops.cli import app
from finops.errors import FinopsError
from finops.tokens import ROLES, Principal, TokenStore


def _wait_for(condition, timeout: float, every: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds (monotonic) pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


@pytest.fixture
def store(tmp_path) -> TokenStore:
    return TokenStore(tmp_path / "state" / "tokens.json")


# ----------------------------------------------------------------------------- the store


@pytest.mark.parametrize("role", ROLES)
def test_add_then_verify_each_role(store, role):
    token_id, token = store.add("acme", role=role, note="ci")
    assert token.startswith(f"fo_{token_id}_")
    assert len(token_id) == 8 and all(c in "0123456789abcdef" for c in token_id)
    principal = store.verify(token)
    assert principal == Principal(token_id=token_id, tenant_id="acme", role=role)
    assert store.verify(token) is principal  # the second time from the cache
    assert store.list() == [{"token_id": token_id, "tenant_id": "acme", "role": role, "note": "ci",
                             "created": store.list()[0]["created"]}]


def test_admin_of_every_tenant(store):
    token_id, token = store.add(None, role="admin")
    assert store.verify(token) == Principal(token_id=token_id, tenant_id=None, role="admin")


def test_refused_tokens(store):
    token_id, token = store.add("acme", role="write")
    secret = token[len(f"fo_{token_id}_"):]
    other_id, _ = store.add("acme")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert store.verify(f"fo_{token_id}_{wrong}") is None  # wrong secret
    assert store.verify(f"fo_{other_id}_{secret}") is None  # the secret of another id
    assert store.verify(f"fo_00000000_{secret}" if token_id != "00000000" else f"fo_11111111_{secret}") is None
    for malformed in ["", "fo_", secret, f"fo_{token_id}", f"fo_{token_id}_", f"xx_{token_id}_{secret}",
                      f"fo_{token_id.upper()}_{secret}", f"fo_{token_id}_{secret} ", f"fo_{token_id}_{secret}\n",
                      f"fo_{token_id}_{secret}!", f"fo_{token_id}_{'a' * 10_000}", None, 42, b"fo_"]:
        assert store.verify(malformed) is None, malformed
    assert store.verify(token) is not None  # the cache holds successes only: still fine after failures
    assert store.revoke(token_id) is True
    assert store.verify(token) is None  # revoked, by this instance: at once
    assert store.revoke(token_id) is False
    assert [t["token_id"] for t in store.list()] == [other_id]


def test_file_holds_no_token_and_is_private(store):
    token_id, token = store.add("acme", role="admin", note="ops")
    secret = token[len(f"fo_{token_id}_"):]
    data = store.path.read_bytes()
    assert secret.encode() not in data and token.encode() not in data
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    doc = json.loads(data)
    assert doc["version"] == 1
    [entry] = doc["tokens"]
    assert {k: entry[k] for k in ("token_id", "tenant_id", "role", "note")} == {
        "token_id": token_id, "tenant_id": "acme", "role": "admin", "note": "ops"}
    assert entry["created"].endswith("Z")
    assert entry["scrypt"]["n"] == 2 ** 14 and entry["scrypt"]["r"] == 8 and entry["scrypt"]["p"] == 1
    assert len(bytes.fromhex(entry["scrypt"]["salt"])) == 16 and len(bytes.fromhex(entry["scrypt"]["hash"])) == 32
    assert all("scrypt" not in t and "hash" not in t for t in store.list())
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_missing_file_means_no_tokens(tmp_path):
    store = TokenStore(tmp_path / "nowhere" / "tokens.json")
    assert store.list() == []
    assert store.verify("fo_0123abcd_" + "x" * 43) is None
    assert store.revoke("0123abcd") is False
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("tenant, role, words", [
    ("acme", "owner", "unknown role"),
    (None, "read", "needs a tenant"),
    (None, "write", "needs a tenant"),
    ("", "read", "1 to 256"),
    ("x" * 257, "read", "1 to 256"),
])
def test_add_refuses(store, tenant, role, words):
    with pytest.raises(FinopsError, match=words) as info:
        store.add(tenant, role=role)
    assert "\n" not in str(info.value)
    assert not store.path.exists()


def test_tenant_of_256_characters(store):
    _id, token = store.add("x" * 256)
    assert store.verify(token).tenant_id == "x" * 256


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 2, "tokens": []}',
                                     b'{"version": 1, "tokens": {}}', b'{"version": 1, "tokens": [{"role": "read"}]}'])
def test_corrupt_file_is_one_line_naming_it(tmp_path, content):
    path = tmp_path / "tokens.json"
    path.write_bytes(content)
    store = TokenStore(path)
    for call in (store.list, lambda: store.verify("fo_0123abcd_" + "x" * 43), lambda: store.add("acme")):
        with pytest.raises(FinopsError) as info:
            call()
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_revoke_by_another_instance_is_seen_within_a_second(store):
    token_id, token = store.add("acme", role="write")
    kept_id, kept = store.add("acme", role="read")
    assert store.verify(token) is not None and store.verify(kept) is not None  # both now cached
    other = TokenStore(store.path)  # as another process would
    assert other.revoke(token_id) is True
    assert _wait_for(lambda: store.verify(token) is None, timeout=1.1)
    assert store.verify(kept) is not None


def test_add_by_another_instance_is_seen(store):
    store.add("acme")
    _id, token = TokenStore(store.path).add("globex", role="write")
    assert _wait_for(lambda: store.verify(token) is not None, timeout=1.1)


def test_verify_from_many_threads(store):
    tokens = [store.add(f"t{i}", role=ROLES[i % 3])[1] for i in range(3)]
    results: list = []

    def work():
        results.extend(store.verify(t).tenant_id for t in tokens * 50)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(results)) == ["t0", "t1", "t2"] and len(results) == 8 * 150


# ----------------------------------------------------------------------------- who may do what


def test_permission_matrix():
    reader = Principal("00000001", "acme", "read")
    writer = Principal("00000002", "acme", "write")
    admin = Principal("00000003", "acme", "admin")
    root = Principal("00000004", None, "admin")
    table = {  # principal: (read, write, admin) on acme, then the same on globex, then across all tenants
        reader: (True, False, False, False, False, False, False, False, False),
        writer: (True, True, False, False, False, False, False, False, False),
        admin: (True, True, True, False, False, False, False, False, False),
        root: (True, True, True, True, True, True, True, True, True),
    }
    for principal, expected in table.items():
        got = tuple(check(tenant) for tenant in ("acme", "globex", None)
                    for check in (principal.may_read, principal.may_write, principal.may_admin))
        assert got == expected, principal


@pytest.mark.parametrize("role", ["read", "write"])
def test_only_admin_may_lack_a_tenant(role):
    with pytest.raises(FinopsError):
        Principal("00000001", None, role)
    with pytest.raises(FinopsError):
        Principal("00000001", "acme", "owner")


# ----------------------------------------------------------------------------- finops tokens


@pytest.fixture
def cli(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("FINOPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["tokens", *args])


def test_cli_add_prints_only_the_token(cli, tmp_path):
    result = cli("add", "--tenant", "acme", "--role", "write", "--note", "billing job")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert token.startswith("fo_") and len(token.split("\n")) == 1
    token_id = token[3:11]
    assert "\n" not in result.stderr.strip()
    assert (f"token {token_id} for tenant acme (role write) stored hashed in {tmp_path / 'tokens.json'}"
            in result.stderr)
    assert "shown only now" in result.stderr
    assert TokenStore(tmp_path / "tokens.json").verify(token) == Principal(token_id, "acme", "write")


def test_cli_admin_of_all_tenants(cli, tmp_path):
    result = cli("add", "--role", "admin")
    assert result.exit_code == 0, result.output
    assert "all tenants" in result.stderr
    assert TokenStore(tmp_path / "tokens.json").verify(result.stdout.strip()).tenant_id is None


@pytest.mark.parametrize("args", [["add", "--role", "read"], ["add"], ["add", "--tenant", "acme", "--role", "root"]])
def test_cli_add_bad_usage_exits_2(cli, tmp_path, args):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tokens.json").exists()


def test_cli_list_and_revoke(cli, tmp_path):
    token = cli("add", "--tenant", "acme").stdout.strip()
    token_id = token[3:11]
    cli("add", "--role", "admin", "--note", "ops")
    result = cli("list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["tenant_id"], r["role"]) for r in rows] == [("acme", "read"), (None, "admin")]
    assert all(set(r) == {"token_id", "tenant_id", "role", "note", "created"} for r in rows)
    stored = json.loads((tmp_path / "tokens.json").read_text())["tokens"]
    for entry in stored:
        assert entry["scrypt"]["hash"] not in result.stdout and entry["scrypt"]["salt"] not in result.stdout
    assert token not in result.stdout

    table = cli("list")
    assert table.exit_code == 0 and token_id in table.stdout and "(all)" in table.stdout

    result = cli("revoke", token_id)
    assert result.exit_code == 0, result.output
    assert token_id not in [r["token_id"] for r in json.loads(cli("list", "--json").stdout)]
    assert TokenStore(tmp_path / "tokens.json").verify(token) is None

    result = cli("revoke", token_id)
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and token_id in result.stderr


def test_cli_revoke_unknown_exits_1(cli):
    result = cli("revoke", "deadbeef")
    assert result.exit_code == 1
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1


def test_cli_list_empty(cli):
    result = cli("list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
