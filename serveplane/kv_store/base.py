"""The ``KVStore`` protocol and URL dispatch.

Invariants every store keeps (the conformance suite in ``tests/integration/kv`` checks them):

- keys are non-empty ``str``; values are ``bytes`` and come back byte-for-byte;
- ``compare_and_set`` writes only if the current value equals ``expected`` (``None`` means
  "the key is absent") and says whether it wrote;
- a failure of the backing service raises ``KVStoreUnavailableError`` naming the store's URL
  and the operation; callers never see a bare socket, sqlite or GCS error;
- a store pickles as its URL, so any process (a Ray actor, a spawned child) re-opens the same
  store; ``open_store(url)`` works in any process.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from serveplane.exceptions import InvalidConfigError, InvalidInputError

SCHEMES = ("memory://[name]", "ray://<namespace>", "sqlite:///abs/path/state.db", "redis://host:port/db")


@runtime_checkable
class KVStore(Protocol):
    url: str

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


def open_store(url: str) -> KVStore:
    """Open the store a URL names; see ``SCHEMES``. A bad URL raises ``InvalidConfigError``."""
    if not isinstance(url, str):
        raise InvalidConfigError(f"kv store url {url!r} is not a string; use one of {', '.join(SCHEMES)}")
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
    raise InvalidConfigError(f"kv store url {url!r} has an unknown scheme; use one of {', '.join(SCHEMES)}")
