"""Key-value stores, the checkpoint codec and epoch fencing."""

from serveplane.kv_store.base import KVStore, open_store
from serveplane.kv_store.checkpoint import (
    SCHEMA_VERSION,
    CheckpointStore,
    RecordStore,
    decode_checkpoint,
    encode_checkpoint,
)
from serveplane.kv_store.memory import MemoryKVStore
from serveplane.kv_store.ray_kv import RayKVStore
from serveplane.kv_store.redis_kv import RedisKVStore
from serveplane.kv_store.sqlite import SQLiteKVStore

__all__ = [
    "SCHEMA_VERSION", "CheckpointStore", "KVStore", "RecordStore", "MemoryKVStore", "RayKVStore", "RedisKVStore",
    "SQLiteKVStore", "decode_checkpoint", "encode_checkpoint", "open_store",
]
