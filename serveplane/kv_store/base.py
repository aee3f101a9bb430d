"""The ``KVStore`` protocol and URL dispatch.

Every store raises ``KVStoreUnavailableError`` naming its URL and the operation when the
backing service fails; callers never see a bare socket or sqlite error.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from serveplane.exceptions import InvalidConfigError

SCHEMES = ("memory://", "ray://<namespace>", "sqlite:///path/state.db", "redis://host:port/db")


@runtime_checkable
class KVStore(Protocol):
    url: str

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool: ...
    def close(self) -> None: ...


def open_store(url: str) -> KVStore:
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
