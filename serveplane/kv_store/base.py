"""The ``KVStore`` protocol and URL dispatch.

Invariants every store keeps (the conformance suite in ``tests/integration/kv`` checks them):

- keys are non-empty ``str``; values are ``bytes`` and come back byte-for-byte;
- ``compare_and_set`` writes only if the current value equals ``expected`` (``None`` means
  "the key is absent") and says whether it wrote;
- ``transact`` applies a set of writes only if every checked key holds its expected value,
  and says whether it wrote; where ``atomic_transactions`` is true no reader, writer or crash
  ever sees part of it;
- keys and values are validated before anything is sent: a bad one changes nothing;
- a failure of the backing service raises ``KVStoreUnavailableError`` naming the store's URL
  (credentials redacted) and the operation; callers never see a bare socket, sqlite or GCS
  error;
- ``repr`` never shows a credential of the URL (``serveplane.redact``);
- a store pickles as its URL, so any process (a Ray actor, a spawned child) re-opens the same
  store; ``open_store(url)`` works in any process.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

from serveplane.exceptions import InvalidConfigError, InvalidInputError

SCHEMES = ("memory://[name]", "ray://<namespace>", "sqlite:///abs/path/state.db", "redis://host:port/db")

# A transaction's checks or writes, validated: key -> bytes, or None (absent / delete).
Changes = dict[str, bytes | None]


@runtime_checkable
class KVStore(Protocol):
    url: str
    # True where ``transact`` is atomic across processes and across crashes.
    atomic_transactions: bool

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None`` when absent."""

    def put(self, key: str, value: bytes) -> None:
        """Write ``value`` under ``key`` unconditionally."""

    def delete(self, key: str) -> None:
        """Remove ``key``; a no-op when it is absent."""

    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (taken literally), sorted."""

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Atomically write ``new`` if the current value is ``expected`` (``None``: absent)."""

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        """Atomically: if every key in ``checks`` holds exactly its expected value (None: absent),
        apply every write (bytes: set; None: delete) and return True; else change nothing, return False."""

    def close(self) -> None:
        """Release connections; the store may be re-opened from its URL."""


def check_key(key: Any) -> str:
    """Refuse a key no store could hold the same way (before anything is sent)."""
    if not isinstance(key, str) or not key:
        raise InvalidInputError(f"kv key {key!r} is invalid; keys must be non-empty strings")
    return key


def check_value(key: str, value: Any) -> bytes:
    """Refuse a value that is not bytes-like; return it as ``bytes``."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidInputError(
            f"value for kv key {key!r} is a {type(value).__name__}; values must be bytes")
    return bytes(value)


def check_changes(changes: Mapping[str, bytes | None]) -> Changes:
    """Validate a transaction's checks or writes: every key, and every value that is not None."""
    return {check_key(key): None if value is None else check_value(key, value)
            for key, value in changes.items()}


def transaction_name(checks: Changes, writes: Changes) -> str:
    """How a failed ``transact`` is named in ``KVStoreUnavailableError``: its first keys."""
    keys = sorted(checks.keys() | writes.keys())
    shown = ", ".join(repr(k) for k in keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"transact {shown or 'of no keys'}{more}"


def open_store(url: str) -> KVStore:
    """Open the store a URL names; see ``SCHEMES``. A bad URL raises ``InvalidConfigError``."""
    from serveplane.redact import redact_url

    if not isinstance(url, str):
        raise InvalidConfigError(
            f"kv store url of type {type(url).__name__} is not a string; use one of {', '.join(SCHEMES)}")
    if url.startswith("memory://"):
        from serveplane.kv_store.memory import MemoryKVStore

        return MemoryKVStore(url)
    if url.startswith("ray://"):
        from serveplane.kv_store.ray_kv import RayKVStore

        return RayKVStore(url)
    if url.startswith("sqlite://"):
        from serveplane.kv_store.sqlite import SQLiteKVStore

        return SQLiteKVStore(url)
    if url.startswith("redis://"):
        from serveplane.kv_store.redis_kv import RedisKVStore

        return RedisKVStore(url)
    raise InvalidConfigError(
        f"kv store url {redact_url(url)!r} has an unknown scheme; use one of {', '.join(SCHEMES)}")
