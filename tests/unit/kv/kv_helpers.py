"""Helpers shared by the key-value tests (unit and integration)."""

from __future__ import annotations

import threading
from typing import Callable

from hypothesis import strategies as st

from serveplane.kv_store import KVStore, open_store

# Any JSON value the codec must carry unchanged (finite floats: JSON has no NaN).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
json_payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


class InterleavingStore:
    """Delegates to ``inner``, but runs ``hook`` once, right before the first
    compare-and-set on ``key``: a deterministic way to put another writer's step between a
    writer's read and its CAS."""

    def __init__(self, inner: KVStore, key: str, hook: Callable[[], None]) -> None:
        self.inner = inner
        self.url = inner.url
        self.atomic_transactions = inner.atomic_transactions
        self.key = key
        self._hook: Callable[[], None] | None = hook
        self.hook_ran = False

    def get(self, key: str) -> bytes | None:
        return self.inner.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.inner.put(key, value)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def transact(self, checks, writes):
        return self.inner.transact(checks, writes)

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        if key == self.key and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()
            self.hook_ran = True
        return self.inner.compare_and_set(key, expected, new)

    def close(self) -> None:
        self.inner.close()


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
