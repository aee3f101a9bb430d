"""Key-value stores, the checkpoint codec and epoch fencing.

``open_store(url)`` opens one of four stores behind the ``KVStore`` protocol: ``memory://``,
``ray://<namespace>`` (Ray GCS KV), ``sqlite:///path`` and ``redis://host:port/db``.
``RecordStore`` keeps fenced records and content-addressed blobs, authenticated under a
``StateKey``, on any of them, one change per transaction.
"""

from serveplane.kv_store.base import KVStore, open_store
from serveplane.kv_store.checkpoint import RecordStore
from serveplane.kv_store.auth import StateKey
from serveplane.kv_store.codec import SCHEMA_VERSION, RecordCodec
from serveplane.kv_store.memory import MemoryKVStore
from serveplane.kv_store.ray_kv import RayKVStore
from serveplane.kv_store.redis_kv import RedisKVStore
from serveplane.kv_store.sqlite import SQLiteKVStore

__all__ = [
    "SCHEMA_VERSION", "KVStore", "MemoryKVStore", "RayKVStore", "RecordCodec", "RecordStore",
    "RedisKVStore", "SQLiteKVStore", "StateKey", "open_store",
]
