"""Helpers shared by the key-value tests (unit and integration)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Callable, Mapping, TypeVar

from hypothesis import strategies as st

from serveplane.exceptions import KVStoreUnavailableError
from serveplane.kv_store import KVStore, open_store

T = TypeVar("T")

# Any JSON value the codec must carry unchanged (finite floats: JSON has no NaN).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
json_payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


class WrappedStore:
    """Delegates every ``KVStore`` call to ``inner``; subclasses step in where they need to."""

    def __init__(self, inner: KVStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.atomic_transactions = inner.atomic_transactions

    def get(self, key: str) -> bytes | None:
        return self.inner.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.inner.put(key, value)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        return self.inner.compare_and_set(key, expected, new)

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        return self.inner.transact(checks, writes)

    def close(self) -> None:
        self.inner.close()


class InterleavingStore(WrappedStore):
    """Runs ``hook`` once, right before the first ``method`` call: a deterministic way to put
    another writer's step between a writer's read and its write."""

    def __init__(self, inner: KVStore, hook: Callable[[], object], method: str = "transact") -> None:
        super().__init__(inner)
        self._hook: Callable[[], object] | None = hook
        self._method = method
        self.hook_ran = False

    def _maybe_hook(self, method: str) -> None:
        if method == self._method and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()
            self.hook_ran = True

    def put(self, key: str, value: bytes) -> None:
        self._maybe_hook("put")
        self.inner.put(key, value)

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        self._maybe_hook("transact")
        return self.inner.transact(checks, writes)


class CountingStore(WrappedStore):
    """Counts every call by method name."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def get(self, key: str) -> bytes | None:
        self.calls["get"] += 1
        return self.inner.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.calls["put"] += 1
        self.inner.put(key, value)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        self.calls["list"] += 1
        return self.inner.list(prefix)

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        self.calls["compare_and_set"] += 1
        return self.inner.compare_and_set(key, expected, new)

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        self.calls["transact"] += 1
        return self.inner.transact(checks, writes)


class InjectedFault(KVStoreUnavailableError):
    """The error ``FaultyStore`` raises: a store failure (or the caller crashing) at that step."""


class WriterCrash(BaseException):
    """The writer's process dies at this step (``FaultyStore(..., crash=True)``): no code of
    the writer runs after it, so only the next writer can settle what it left."""


class FaultyStore(WrappedStore):
    """Fails the ``fail_at``-th single-key mutation (1-based) before it reaches the store;
    with ``lost_reply`` after it applied (the writer sees an error for a write that landed);
    with ``crash`` the writer dies there instead of seeing an error.

    With ``atomic=False`` a ``transact`` is applied the way the Ray GCS store applies it:
    checks read first, then one key at a time, each write a mutation that can fail. So a
    fault can fall between two writes of one transaction, as a crash of the caller would.
    With ``atomic=True`` a ``transact`` is one mutation that fails whole.
    """

    def __init__(self, inner: KVStore, fail_at: int | None, atomic: bool | None = None,
                 lost_reply: bool = False, crash: bool = False) -> None:
        super().__init__(inner)
        self.fail_at = fail_at
        self.lost_reply = lost_reply
        self.crash = crash
        self.mutations = 0
        if atomic is not None:
            self.atomic_transactions = atomic

    @property
    def faulted(self) -> bool:
        return self.fail_at is not None and self.mutations >= self.fail_at

    def _mutation(self, operation: str, apply: Callable[[], T]) -> T:
        self.mutations += 1
        if self.mutations != self.fail_at:
            return apply()
        if self.crash:
            raise WriterCrash(operation)
        if self.lost_reply:
            apply()
            raise InjectedFault(self.url, operation, "reply lost after the write applied (injected)")
        raise InjectedFault(self.url, operation, "injected fault")

    def put(self, key: str, value: bytes) -> None:
        self._mutation(f"put {key!r}", lambda: self.inner.put(key, value))

    def delete(self, key: str) -> None:
        self._mutation(f"delete {key!r}", lambda: self.inner.delete(key))

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        return self._mutation(f"compare_and_set {key!r}", lambda: self.inner.compare_and_set(key, expected, new))

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        if self.atomic_transactions:
            return self._mutation("transact", lambda: self.inner.transact(checks, writes))
        if any(self.inner.get(key) != expected for key, expected in checks.items()):
            return False
        for key, value in writes.items():
            if value is None:
                self.delete(key)
            else:
                self.put(key, value)
        return True


def cas_increment(store: KVStore, key: str, times: int) -> int:
    """Add ``times`` to the decimal counter at ``key`` by CAS; return how many CASes won."""
    wins = 0
    while wins < times:
        current = store.get(key)
        new = str((int(current) if current is not None else 0) + 1).encode()
        if store.compare_and_set(key, current, new):
            wins += 1
    return wins


def increment_in_child(url: str, key: str, times: int) -> None:
    """Entry point of a spawned process: re-open the store from its URL and increment."""
    cas_increment(open_store(url), key, times)


def transact_increment(store: KVStore, times: int, who: str) -> int:
    """Raise the twin counters ``a`` and ``b`` together ``times`` times by ``transact`` (each
    time also creating ``log/<new value>``); return how many transactions won.

    If transactions interleave, two of them pass their checks on the same value: then the
    counters end below the number of wins, and one ``log/`` key was written twice."""
    wins = 0
    while wins < times:
        current = store.get("a")
        new = str((int(current) if current is not None else 0) + 1).encode()
        if store.transact({"a": current, "b": current},
                          {"a": new, "b": new, f"log/{int(new):06d}": who.encode()}):
            wins += 1
    return wins


def transact_increment_in_child(url: str, times: int, who: str) -> None:
    """Entry point of a spawned process: re-open the store from its URL and increment."""
    transact_increment(open_store(url), times, who)


def run_threads(n: int, target: Callable[[int], object], timeout_s: float = 30.0) -> None:
    """Run ``target(i)`` in threads ``i = 0..n-1``, join them with a timeout and re-raise
    the first error any of them hit."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), name=f"kv-test-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
        if t.is_alive():
            raise AssertionError(f"thread {t.name} did not finish within {timeout_s} s")
    if errors:
        raise errors[0]
