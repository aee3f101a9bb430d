"""Ray GCS internal KV (``ray://<namespace>``); the default store on a cluster.

Keys live in the GCS KV namespace ``serveplane-<namespace>``, so a URL can never collide with
Ray's own namespaces (``fun``, ``session``, ``serve``...). A namespace may not contain ``:``:
the GCS splits its internal keys at the first ``:`` and would list wrong keys. The store needs Ray initialized in
the calling process (a driver after ``ray.init`` or any Ray worker); otherwise every operation
raises ``KVStoreUnavailableError``.

Compare-and-set, honestly: the GCS KV has none. Here it is

- for ``expected=None``: ``put(overwrite=False)``, which the GCS applies atomically, so of
  any number of writers in any processes exactly one creates the key;
- for an existing key: read, compare, write, serialized by a process-local lock. That is
  atomic among the threads of one process only. Two processes racing on one existing key can
  both "win".

``transact``, honestly: the GCS KV has no multi-key transaction either. Here it reads the
checks, then applies the writes one key at a time, all under the same process-local lock
(which the compare-and-sets above also take). So, weaker than on the other stores
(``atomic_transactions`` is false):

- across processes it is not isolated: another process may change a checked key between
  the check and the writes, and may read a transaction half applied;
- it is not crash-atomic: a failure (or a crash of the caller) between two writes leaves
  the earlier ones in place.

``RecordStore`` makes up for it with an undo log (see ``checkpoint.py``); the controller, the
only writer of its namespace, needs no more. Use SQLite or Redis where several processes must
race on the same keys.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, TypeVar

from serveplane.exceptions import InvalidConfigError, KVStoreUnavailableError
from serveplane.kv_store.base import check_changes, check_key, check_value, transaction_name

T = TypeVar("T")

GCS_NAMESPACE_PREFIX = "serveplane-"
# One lock per process, not per store: two stores on one URL must exclude each other.
_LOCK = threading.Lock()


class RayKVStore:
    atomic_transactions = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = url[len("ray://"):]
        if not self.namespace or ":" in self.namespace:
            raise InvalidConfigError(
                f"kv store url {url!r} must name a namespace without ':'; use ray://<namespace>")
        self.gcs_namespace = GCS_NAMESPACE_PREFIX + self.namespace

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url,))

    def __repr__(self) -> str:
        return f"<RayKVStore {self.url} [gcs namespace: {self.gcs_namespace}]>"

    def _run(self, operation: str, fn: Callable[[Any], T]) -> T:
        try:
            from ray.experimental import internal_kv

            if not internal_kv._internal_kv_initialized():
                raise RuntimeError("ray is not initialized in this process; call ray.init() first")
            return fn(internal_kv)
        except Exception as exc:  # noqa: BLE001 - any GCS failure means "unavailable"
            raise KVStoreUnavailableError(self.url, operation, exc) from None

    def get(self, key: str) -> bytes | None:
        check_key(key)
        return self._run(f"get {key!r}", lambda kv: kv._internal_kv_get(key, namespace=self.gcs_namespace))

    def put(self, key: str, value: bytes) -> None:
        value = check_value(check_key(key), value)
        self._run(f"put {key!r}", lambda kv: kv._internal_kv_put(
            key, value, overwrite=True, namespace=self.gcs_namespace))

    def delete(self, key: str) -> None:
        check_key(key)
        self._run(f"delete {key!r}", lambda kv: kv._internal_kv_del(key, namespace=self.gcs_namespace))

    def list(self, prefix: str) -> list[str]:
        keys = self._run(f"list {prefix!r}", lambda kv: kv._internal_kv_list(
            prefix, namespace=self.gcs_namespace))
        return sorted(k.decode() if isinstance(k, bytes) else k for k in keys)

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        new = check_value(check_key(key), new)
        expected = check_changes({key: expected})[key]

        def cas(kv: Any) -> bool:
            with _LOCK:  # put-if-absent needs no lock, but must not fall inside a transact here
                if expected is None:
                    # _internal_kv_put returns whether the key already existed (then nothing is written)
                    return not kv._internal_kv_put(key, new, overwrite=False, namespace=self.gcs_namespace)
                if kv._internal_kv_get(key, namespace=self.gcs_namespace) != expected:
                    return False
                kv._internal_kv_put(key, new, overwrite=True, namespace=self.gcs_namespace)
                return True

        return self._run(f"compare_and_set {key!r}", cas)

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        checked, written = check_changes(checks), check_changes(writes)
        ns = self.gcs_namespace

        def apply(kv: Any) -> bool:
            with _LOCK:
                for key, expected in checked.items():
                    if kv._internal_kv_get(key, namespace=ns) != expected:
                        return False
                for key, value in written.items():
                    if value is None:
                        kv._internal_kv_del(key, namespace=ns)
                    else:
                        kv._internal_kv_put(key, value, overwrite=True, namespace=ns)
                return True

        return self._run(transaction_name(checked, written), apply)

    def close(self) -> None:
        pass
