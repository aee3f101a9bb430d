"""``LongPollClient``: one per (process, host actor); keeps subscribed keys up to date.

A daemon thread runs its own event loop and keeps one ``listen_for_change`` call open on
the host. A new subscription restarts the call so the key is included at once. When the
host dies the client backs off (jittered, 50 ms to 2 s), finds the named actor again and
re-sends its ids; since a new host instance's ids differ, it is answered at once: no
update is missed. Callbacks run on the client thread; one that raises is logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable

import ray

from serveplane.long_poll.host import LongPollTimeout

logger = logging.getLogger(__name__)

_REGISTRY: dict[tuple[str, str | None], LongPollClient] = {}
_REGISTRY_LOCK = threading.Lock()
_ids = itertools.count()


@dataclass(frozen=True)
class Subscription:
    key: str
    callback: Callable[[Any], None]
    sub_id: int


class LongPollClient:
    def __init__(self, host_actor_name: str, namespace: str | None = None) -> None:
        self.host_actor_name = host_actor_name
        self.namespace = namespace
        self._subs: dict[str, list[Subscription]] = {}
        self._snapshot: dict[str, tuple[str, Any]] = {}  # key -> (snapshot id, value)
        self._lock = threading.Lock()
        self._known = threading.Condition(self._lock)
        self._loop = asyncio.new_event_loop()
        self._wakeup: asyncio.Event | None = None
        self._stopped = False
        self.reconnects = 0
        self._thread = threading.Thread(target=self._thread_main, name=f"long-poll-{host_actor_name}",
                                        daemon=True)
        self._thread.start()

    # -- registry -------------------------------------------------------------------
    @classmethod
    def get_or_create(cls, host_actor_name: str, namespace: str | None = None) -> LongPollClient:
        with _REGISTRY_LOCK:
            client = _REGISTRY.get((host_actor_name, namespace))
            if client is None or client._stopped:
                client = cls(host_actor_name, namespace)
                _REGISTRY[(host_actor_name, namespace)] = client
            return client

    @staticmethod
    def all_clients() -> list[LongPollClient]:
        with _REGISTRY_LOCK:
            return list(_REGISTRY.values())

    # -- public API -----------------------------------------------------------------
    def subscribe(self, key: str, callback: Callable[[Any], None]) -> Subscription:
        sub = Subscription(key, callback, next(_ids))
        with self._lock:
            new_key = key not in self._subs
            self._subs.setdefault(key, []).append(sub)
            known = self._snapshot.get(key)
        if known is not None:
            self._loop.call_soon_threadsafe(self._deliver_one, sub, known[1])
        if new_key:
            self._poke()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.key, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(sub.key, None)

    def get(self, key: str) -> Any:
        with self._lock:
            known = self._snapshot.get(key)
        return None if known is None else known[1]

    def wait_for_key(self, key: str, timeout: float) -> Any:
        with self._known:
            ok = self._known.wait_for(lambda: key in self._snapshot, timeout=timeout)
            if not ok:
                raise TimeoutError(f"long-poll key {key!r} got no value from "
                                   f"{self.host_actor_name!r} within {timeout:.1f}s")
            return self._snapshot[key][1]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with _REGISTRY_LOCK:
            if _REGISTRY.get((self.host_actor_name, self.namespace)) is self:
                del _REGISTRY[(self.host_actor_name, self.namespace)]
        self._poke()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # -- internals --------------------------------------------------------------------
    def _poke(self) -> None:
        def set_wakeup() -> None:
            if self._wakeup is not None:
                self._wakeup.set()

        try:
            self._loop.call_soon_threadsafe(set_wakeup)
        except RuntimeError:
            pass  # loop closed

    def _deliver_one(self, sub: Subscription, value: Any) -> None:
        try:
            sub.callback(value)
        except Exception:  # noqa: BLE001 - a bad callback must not stop updates
            logger.exception("long-poll callback for %r raised", sub.key)

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except Exception:  # noqa: BLE001 - logged, never silent
            logger.exception("long-poll client for %r crashed", self.host_actor_name)
        finally:
            self._loop.close()

    def _find_host(self) -> Any:
        return ray.get_actor(self.host_actor_name, namespace=self.namespace)

    async def _run(self) -> None:
        self._wakeup = asyncio.Event()
        host = None
        backoff = 0.05
        while not self._stopped:
            with self._lock:
                ids = {key: (self._snapshot[key][0] if key in self._snapshot else None)
                       for key in self._subs}
            if not ids:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                if host is None:
                    host = self._find_host()
                fut = asyncio.wrap_future(host.listen_for_change.remote(ids).future())
                wake = asyncio.ensure_future(self._wakeup.wait())
                done, _ = await asyncio.wait({fut, wake}, return_when=asyncio.FIRST_COMPLETED)
                if fut not in done:
                    fut.cancel()  # abandon this call: a key was added or we are stopping
                    self._wakeup.clear()
                    continue
                wake.cancel()
                result = fut.result()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - host down / not found: back off and retry
                if self._stopped:
                    return
                logger.debug("long-poll host %r unavailable (%r); retrying", self.host_actor_name, exc)
                host = None
                self.reconnects += 1
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(2.0, backoff * 2)
                continue
            if isinstance(result, LongPollTimeout):
                continue
            self._apply(result)

    def _apply(self, result: dict[str, Any]) -> None:
        deliveries = []
        with self._lock:
            for key, obj in result.items():
                self._snapshot[key] = (obj.snapshot_id, obj.value)
                deliveries.extend((sub, obj.value) for sub in self._subs.get(key, ()))
            self._known.notify_all()
        for sub, value in deliveries:
            self._deliver_one(sub, value)
