"""Ray GCS internal KV, namespaced (``ray://<namespace>``); the default on a cluster.

The GCS KV has no compare-and-set. CAS here is put-if-absent (``overwrite=False``, atomic
in the GCS) for a missing key, and a read-compare-write under a process-local lock for an
existing one. That is atomic only among writers in one process; across processes the
epoch fencing in ``CheckpointStore`` still refuses a stale writer on its next write, and
the controller is the only writer of its namespace. Use SQLite or Redis where several
processes must race on one key.
"""

from __future__ import annotations

import threading

from serveplane.exceptions import InvalidConfigError, KVStoreUnavailableError

_LOCK = threading.Lock()


class RayKVStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = url[len("ray://"):]
        if not self.namespace:
            raise InvalidConfigError(f"kv store url {url!r} names no namespace; use ray://<namespace>")
        from ray.experimental import internal_kv

        self._kv = internal_kv

    def _run(self, operation: str, fn):  # type: ignore[no-untyped-def]
        try:
            if not self._kv._internal_kv_initialized():
                raise RuntimeError("ray is not initialized in this process")
            return fn()
        except Exception as exc:  # noqa: BLE001 - any GCS failure is "unavailable"
            raise KVStoreUnavailableError(self.url, operation, exc) from None

    def get(self, key: str) -> bytes | None:
        return self._run(f"get {key!r}", lambda: self._kv._internal_kv_get(key, namespace=self.namespace))

    def put(self, key: str, value: bytes) -> None:
        self._run(f"put {key!r}", lambda: self._kv._internal_kv_put(
            key, value, overwrite=True, namespace=self.namespace))

    def delete(self, key: str) -> None:
        self._run(f"delete {key!r}", lambda: self._kv._internal_kv_del(key, namespace=self.namespace))

    def list(self, prefix: str) -> list[str]:
        keys = self._run(f"list {prefix!r}", lambda: self._kv._internal_kv_list(prefix, namespace=self.namespace))
        return sorted(k.decode() if isinstance(k, bytes) else k for k in keys)

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        def cas() -> bool:
            if expected is None:
                # returns True when the key already existed (nothing written)
                existed = self._kv._internal_kv_put(key, new, overwrite=False, namespace=self.namespace)
                return not existed
            with _LOCK:
                if self._kv._internal_kv_get(key, namespace=self.namespace) != expected:
                    return False
                self._kv._internal_kv_put(key, new, overwrite=True, namespace=self.namespace)
                return True

        return self._run(f"compare_and_set {key!r}", cas)

    def close(self) -> None:
        pass
