"""Bearer tokens of the HTTP API (``finops serve``): a small file of scrypt hashes.

A token is the text ``fo_<token_id>_<secret>``: ``token_id`` is 8 lowercase hex characters
(public: it names the token in ``finops tokens list`` and ``revoke``), ``secret`` is
``secrets.token_urlsafe(32)`` (43 characters). The token is shown once, when it is created;
the file keeps only a salted scrypt hash of it, so a leaked file grants nothing.

Each token has one role of :data:`ROLES` and is bound to one tenant; only an ``admin``
token may be created without a tenant, and then acts on every tenant.

The file (default ``<data_dir>/tokens.json``) is JSON::

    {"version": 1, "tokens": [{"token_id": "3f9c0a1b", "tenant_id": "acme", "role": "write",
                               "note": "billing job", "created": "2026-11-30T12:00:00Z",
                               "scrypt": {"n": 16384, "r": 8, "p": 1,
                                          "salt": "<32 hex>", "hash": "<64 hex>"}}]}

It is replaced atomically (temporary file with mode 0o600 in the same directory, fsync,
``os.replace``); a missing file means no tokens. Revoking a token removes its entry.

:meth:`TokenStore.verify` costs one scrypt (~50 ms) the first time a token is seen, then a
dictionary look-up: successful verifications are cached in memory under the SHA-256 of the
token. The cache is dropped whenever the file changes (its mtime, size or inode; looked at
no more than once a second), so a revocation by another process takes effect within ~1 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import FinopsError
from .schemas.wire import format_time

ROLES = ("read", "write", "admin")
"""read: GET endpoints; write: read plus POST of usage and commands; admin: everything."""

VERSION = 1
PREFIX = "fo_"
TENANT_MAX = 256
CHECK_EVERY_S = 1.0
"""At most this often (wall time, seconds) :meth:`TokenStore.verify` looks whether the file changed."""

_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAXMEM = 64 * 1024 * 1024  # n=2**14, r=8 needs 16 MiB; OpenSSL's default limit is 32 MiB
# What an unknown token id is checked against (it never matches: no key has this hash's preimage known).
_DUMMY = {**_SCRYPT, "salt": "00" * 16, "hash": "00" * _KEY_BYTES}
_REFUSED_FOR_S = 60.0  # a refused token is refused again without a scrypt for this long
_REFUSED_MAX = 10_000
_TOKEN = re.compile(r"fo_([0-9a-f]{8})_([A-Za-z0-9_-]{16,128})")
_PUBLIC = ("token_id", "tenant_id", "role", "note", "created")


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for.

    ``tenant_id`` None means every tenant (only an ``admin`` token created without a tenant).
    The ``may_*`` methods take the tenant a request acts on; None there means an action across
    all tenants, which only a principal of every tenant may do.
    """

    token_id: str
    tenant_id: str | None
    role: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise FinopsError(f"unknown token role {self.role!r}; one of {', '.join(ROLES)}")
        if self.tenant_id is None and self.role != "admin":
            raise FinopsError(f"a {self.role} token needs a tenant; only an admin token may act on every tenant")

    def _covers(self, tenant_id: str | None) -> bool:
        return self.tenant_id is None or (tenant_id is not None and tenant_id == self.tenant_id)

    def may_read(self, tenant_id: str | None) -> bool:
        """True when this principal may use the GET endpoints of ``tenant_id`` (every role may)."""
        return self._covers(tenant_id)

    def may_write(self, tenant_id: str | None) -> bool:
        """True when this principal may POST usage and commands for ``tenant_id`` (roles write, admin)."""
        return self.role in ("write", "admin") and self._covers(tenant_id)

    def may_admin(self, tenant_id: str | None) -> bool:
        """True when this principal may do anything for ``tenant_id`` (role admin)."""
        return self.role == "admin" and self._covers(tenant_id)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_KEY_BYTES)


def _parse(token: object) -> tuple[str, str] | None:
    """(token_id, secret) of a well-formed token text, else None."""
    if not isinstance(token, str):
        return None
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


class TokenStore:
    """The bearer tokens in one JSON file (see the module docstring for its format).

    Thread-safe: one instance may serve many threads. Several processes may share the file:
    :meth:`add` and :meth:`revoke` hold an advisory lock (``<file>.lock``, where ``fcntl``
    exists) while they read, change and replace it.
    """

    def __init__(self, path: Path) -> None:
        """``path``: the token file; it and its directory are created by the first :meth:`add`."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}  # token_id -> entry, as of the last load
        self._signature: tuple[int, int, int] | None = None  # (mtime_ns, size, inode); None: no file
        self._error: FinopsError | None = None  # the file is corrupt: verify raises this
        self._cache: dict[bytes, Principal] = {}  # sha256(token) -> Principal
        self._refused: dict[bytes, float] = {}  # sha256(token) -> when refused (monotonic): no second scrypt
        self._scrypt_slot = threading.Lock()  # one scrypt at a time: a flood of bad tokens queues, not the CPU
        self._next_check = float("-inf")  # time.monotonic() of the next look at the file

    # ----------------------------------------------------------------- reading

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FinopsError(f"cannot read token file {self.path}: {exc.strerror}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> list[dict]:
        """The entries of the file (with their hashes); [] when it is missing. FinopsError when corrupt."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise FinopsError(f"cannot read token file {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ValueError(f"not a version {VERSION} token file")
            tokens = doc.get("tokens")
            if not isinstance(tokens, list):
                raise ValueError('"tokens" is not a list')
            for entry in tokens:
                self._check_entry(entry)
        except (ValueError, TypeError, KeyError) as exc:
            detail = " ".join(str(exc).split())
            raise FinopsError(f"corrupt token file {self.path}: {detail}") from None
        return tokens

    @staticmethod
    def _check_entry(entry: object) -> None:
        if not isinstance(entry, dict):
            raise ValueError("an entry is not an object")
        if not (isinstance(entry.get("token_id"), str) and re.fullmatch(r"[0-9a-f]{8}", entry["token_id"])):
            raise ValueError(f"bad token_id {entry.get('token_id')!r}")
        if entry.get("role") not in ROLES:
            raise ValueError(f"token {entry['token_id']}: bad role {entry.get('role')!r}")
        tenant = entry.get("tenant_id")
        if not (tenant is None and entry["role"] == "admin" or isinstance(tenant, str) and tenant):
            raise ValueError(f"token {entry['token_id']}: bad tenant_id {tenant!r}")
        kdf = entry.get("scrypt")
        if not isinstance(kdf, dict):
            raise ValueError(f"token {entry['token_id']}: no scrypt hash")
        for name in ("n", "r", "p"):
            if not isinstance(kdf.get(name), int) or kdf[name] < 1:
                raise ValueError(f"token {entry['token_id']}: bad scrypt {name}")
        if not isinstance(kdf.get("salt"), str) or not isinstance(kdf.get("hash"), str):
            raise ValueError(f"token {entry['token_id']}: no scrypt salt or hash")
        bytes.fromhex(kdf["salt"])
        if len(bytes.fromhex(kdf["hash"])) != _KEY_BYTES:
            raise ValueError(f"token {entry['token_id']}: bad scrypt hash length")

    def _refresh(self) -> None:
        """Reload the file when it changed, at most once per CHECK_EVERY_S; raise while it is corrupt."""
        if time.monotonic() >= self._next_check:
            with self._lock:
                now = time.monotonic()
                if now >= self._next_check:
                    self._next_check = now + CHECK_EVERY_S
                    signature = self._stat()
                    if signature != self._signature or self._error is not None:
                        self._load(signature)
        if self._error is not None:
            raise self._error

    def _load(self, signature: tuple[int, int, int] | None) -> None:
        """Replace the in-memory entries and drop the caches. Call with the lock held."""
        self._cache = {}
        self._refused = {}
        try:
            entries = {e["token_id"]: e for e in self._read()}
        except FinopsError as exc:  # fail closed: no token is valid until the file is readable again
            self._entries, self._signature, self._error = {}, None, exc
            return
        self._entries, self._signature, self._error = entries, signature, None

    # ----------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _exclusive(self):
        """This thread and, where fcntl exists, this process alone change the file."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                import fcntl
            except ImportError:  # not POSIX: threads of this process only
                yield
                return
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _write(self, tokens: list[dict]) -> None:
        """Replace the file atomically with ``tokens``, then reload it. Call inside ``_exclusive``."""
        text = json.dumps({"version": VERSION, "tokens": tokens}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._load(self._stat())
        self._next_check = time.monotonic() + CHECK_EVERY_S

    # ----------------------------------------------------------------- API

    def add(self, tenant_id: str | None, role: str = "read", note: str = "") -> tuple[str, str]:
        """Create a token; return ``(token_id, token)``. The token text exists only in the result.

        ``tenant_id``: the tenant it acts on (1 to 256 characters), or None for an admin token
        of every tenant. ``role``: one of :data:`ROLES`. ``note``: free text shown by :meth:`list`.
        Raises FinopsError (one line) for a bad role or tenant, or when the file cannot be
        read or written.
        """
        if role not in ROLES:
            raise FinopsError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if tenant_id is None:
            if role != "admin":
                raise FinopsError(f"a {role} token needs a tenant; only an admin token may act on every tenant")
        elif not isinstance(tenant_id, str) or not 1 <= len(tenant_id) <= TENANT_MAX:
            raise FinopsError(f"a tenant id is 1 to {TENANT_MAX} characters")
        if not isinstance(note, str):
            raise FinopsError("a token note is text")
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(_SALT_BYTES)
        key = _scrypt(secret, salt, **_SCRYPT)
        with self._exclusive():
            tokens = self._read()
            taken = {e["token_id"] for e in tokens}
            token_id = secrets.token_hex(4)
            while token_id in taken:
                token_id = secrets.token_hex(4)
            tokens.append({"token_id": token_id, "tenant_id": tenant_id, "role": role, "note": note,
                           "created": format_time(time.time(), "seconds"),
                           "scrypt": {**_SCRYPT, "salt": salt.hex(), "hash": key.hex()}})
            self._write(tokens)
        return token_id, f"{PREFIX}{token_id}_{secret}"

    def verify(self, token: str) -> Principal | None:
        """The :class:`Principal` of a bearer token; None when it is malformed, unknown, revoked or
        its secret is wrong.

        ~50 ms (one scrypt) the first time a token is seen, then microseconds from the cache
        until the file changes. Raises FinopsError (one line) while the file is corrupt or
        unreadable: no token is valid then.
        """
        parsed = _parse(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        self._refresh()
        digest = hashlib.sha256(token.encode()).digest()
        principal = self._cache.get(digest)
        if principal is not None:
            return principal
        refused_at = self._refused.get(digest)
        if refused_at is not None and time.monotonic() - refused_at < _REFUSED_FOR_S:
            return None
        entries = self._entries  # this generation: a reload replaces the dict, never changes it
        entry = entries.get(token_id)
        # an unknown id costs a scrypt too, so the time of an answer tells nothing of which ids exist
        kdf = entry["scrypt"] if entry is not None else _DUMMY
        with self._scrypt_slot:
            key = _scrypt(secret, bytes.fromhex(kdf["salt"]), kdf["n"], kdf["r"], kdf["p"])
        if entry is None or not hmac.compare_digest(key, bytes.fromhex(kdf["hash"])):
            with self._lock:
                if len(self._refused) >= _REFUSED_MAX:
                    self._refused.clear()
                self._refused[digest] = time.monotonic()
            return None
        principal = Principal(token_id=token_id, tenant_id=entry["tenant_id"], role=entry["role"])
        with self._lock:
            if self._entries is entries:  # not reloaded meanwhile (a revocation must not be cached)
                self._cache[digest] = principal
        return principal

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before (microseconds, no scrypt), else None: then call
        :meth:`verify` where a ~50 ms wait is fine (not on an event loop)."""
        self._refresh()
        return self._cache.get(hashlib.sha256(token.encode()).digest())

    def list(self) -> list[dict]:
        """Every stored token, oldest first: dicts of token_id, tenant_id (None: every tenant), role,
        note and created (UTC ISO 8601); never the hash. Raises FinopsError when the file is corrupt."""
        return [{k: e.get(k) for k in _PUBLIC} for e in self._read()]

    def revoke(self, token_id: str) -> bool:
        """Remove the token ``token_id``; False when there is none. Other processes verifying with
        the same file stop accepting it within ~1 s. Raises FinopsError when the file is corrupt."""
        if not self.path.exists():
            return False
        with self._exclusive():
            tokens = self._read()
            kept = [e for e in tokens if e["token_id"] != token_id]
            if len(kept) == len(tokens):
                return False
            self._write(kept)
        return True
