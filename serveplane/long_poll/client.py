"""``LongPollClient``: keeps the keys a process subscribes to up to date from a ``LongPollHost``.

One shared client per (process, host actor name, namespace) via ``get_or_create``; the
constructor makes an independent one (tests and benchmarks use it to stand in for many
processes). Each client runs a daemon thread with its own event loop that keeps at most
one ``listen_for_change`` call open on the host.

Invariants:

- the ids sent are the snapshot ids of the values this client holds; a key whose last
  subscriber left is forgotten, so a later subscriber is sent ``None`` and answered at once;
- a subscription to a key the in-flight call does not cover (or covers with another id)
  cancels that call and sends a fresh one at once: it never waits for the host's timeout;
- when the host is unreachable (died, restarting, not found, call timed out) the client
  backs off (jittered, 50 ms doubling to 2 s), looks the named actor up again and resends
  its ids; a new host instance's ids differ, so it answers at once and no update is missed;
- callbacks run on the client thread only, one at a time; for each subscription values
  arrive in the host's order (superseded values may be skipped, never reordered) and the
  same snapshot is never delivered twice; a callback that raises is logged and ignored;
- the poll loop is one named task guarded by the thread: an unexpected crash is logged,
  kept in ``error`` and stops the client (``get_or_create`` then makes a new one).
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
from ray.exceptions import GetTimeoutError, RayActorError, TaskCancelledError

from serveplane.long_poll.host import LongPollTimeout, UpdatedObject, snapshot_at_least

logger = logging.getLogger(__name__)

_REGISTRY: dict[tuple[str, str | None], LongPollClient] = {}
_REGISTRY_LOCK = threading.Lock()
_subscription_ids = itertools.count(1)

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
STOP_JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True, eq=False)
class Subscription:
    """A callback registered for one key; compared by identity."""

    key: str
    callback: Callable[[Any], None]
    sub_id: int


class _Restart(Exception):
    """The in-flight listen no longer covers what is wanted (new key, or stopping)."""


class _HostUnavailable(Exception):
    """The host actor could not be found or did not answer; back off and look it up again."""


class LongPollClient:
    """Subscribes callbacks to keys of a named ``LongPollHost`` actor."""

    def __init__(self, host_actor_name: str, namespace: str | None = None,
                 listen_timeout_s: float = 120.0) -> None:
        """``listen_timeout_s`` bounds one call client-side, against a host that hangs."""
        if not ray.is_initialized():
            raise RuntimeError(f"long-poll client for host {host_actor_name!r} needs a connected Ray; "
                               "call ray.init() first")
        self.host_actor_name = host_actor_name
        self.namespace = namespace
        self.listen_timeout_s = listen_timeout_s
        self.error: BaseException | None = None
        self.reconnects = 0
        self._lock = threading.Lock()
        self._value_known = threading.Condition(self._lock)
        # Guarded by _lock.
        self._stopped = False
        self._subs: dict[str, list[Subscription]] = {}
        self._known: dict[str, UpdatedObject] = {}
        self._delivered: dict[Subscription, str] = {}
        # per key, the last snapshot whose callbacks have all run (what ``behind`` reads)
        self._applied: dict[str, str] = {}
        # Loop thread only.
        self._inflight_ids: dict[str, str | None] = {}
        self._answers = 0
        self._timeouts = 0
        self._restarts = 0
        self._callback_errors = 0
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                        name=f"serveplane-long-poll:{host_actor_name}")
        self._thread.start()

    # -- registry -------------------------------------------------------------------
    @classmethod
    def get_or_create(cls, host_actor_name: str, namespace: str | None = None) -> LongPollClient:
        """The process's shared client for this host; a stopped one is replaced."""
        with _REGISTRY_LOCK:
            client = _REGISTRY.get((host_actor_name, namespace))
            if client is None or client.stopped:
                client = cls(host_actor_name, namespace)
                _REGISTRY[(host_actor_name, namespace)] = client
            return client

    @staticmethod
    def existing(host_actor_name: str, namespace: str | None = None) -> LongPollClient | None:
        """The process's running shared client for this host, or ``None`` (never creates one)."""
        with _REGISTRY_LOCK:
            client = _REGISTRY.get((host_actor_name, namespace))
        return None if client is None or client.stopped else client

    @staticmethod
    def all_clients() -> list[LongPollClient]:
        with _REGISTRY_LOCK:
            return list(_REGISTRY.values())

    @staticmethod
    def stop_shared(host_actor_name: str, namespace: str | None) -> None:
        """Stop the process's shared client of one host (its controller was shut down);
        the clients of other hosts and namespaces keep running."""
        with _REGISTRY_LOCK:
            client = _REGISTRY.get((host_actor_name, namespace))
        if client is not None:
            client.stop()

    # -- public API -------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def subscribe(self, key: str, callback: Callable[[Any], None]) -> Subscription:
        """Call ``callback(value)`` on the client thread for every new value of ``key``.

        A value the client already holds is delivered promptly to the new subscriber.
        """
        sub = Subscription(key, callback, next(_subscription_ids))
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"long-poll client for host {self.host_actor_name!r} is stopped; "
                                   "use LongPollClient.get_or_create() for a new one")
            new_key = key not in self._subs
            self._subs.setdefault(key, []).append(sub)
            known = key in self._known
        if known:
            self._call_in_loop(self._deliver, sub)
        if new_key:
            self._call_in_loop(self._restart_if_uncovered)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop calling ``sub``; idempotent. The last subscriber of a key drops its value.

        Called from another thread while a delivery to ``sub`` is under way, that one
        delivery may still complete.
        """
        with self._lock:
            subs = self._subs.get(sub.key)
            if subs is None or not any(s is sub for s in subs):
                return
            subs.remove(sub)
            self._delivered.pop(sub, None)
            if not subs:
                del self._subs[sub.key]
                self._known.pop(sub.key, None)
                self._applied.pop(sub.key, None)

    def get(self, key: str) -> Any:
        """The value held for ``key``, or ``None`` if none is (yet) known."""
        with self._lock:
            obj = self._known.get(key)
        return None if obj is None else obj.value

    def wait_for_key(self, key: str, timeout: float) -> Any:
        """Block until a value of ``key`` is known and return it; ``TimeoutError`` after ``timeout``."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"wait_for_key({key!r}) called from a long-poll callback would block "
                               "the thread that delivers the value; subscribe instead")
        temporary = None
        with self._lock:
            if key in self._known:
                return self._known[key].value
            needs_subscription = key not in self._subs
        if needs_subscription:
            temporary = self.subscribe(key, _ignore)
        try:
            with self._value_known:
                self._value_known.wait_for(lambda: key in self._known or self._stopped, timeout)
                if key in self._known:
                    return self._known[key].value
                stopped = self._stopped
            if stopped:
                raise RuntimeError(f"long-poll client for host {self.host_actor_name!r} stopped while "
                                   f"waiting for key {key!r}")
            raise TimeoutError(f"long-poll key {key!r} got no value from host {self.host_actor_name!r} "
                               f"(namespace {self.namespace!r}) within {timeout:.1f}s; check that the "
                               "host actor is running and publishes this key")
        finally:
            if temporary is not None:
                self.unsubscribe(temporary)

    def behind(self, snapshot_ids: dict[str, str]) -> dict[str, str]:
        """The listed keys this client follows and holds no snapshot at least as new as
        the one given (``{key: the snapshot id it holds, or ""}``). A key nobody in this
        process subscribes to is never behind: a later subscriber is sent the latest value."""
        with self._lock:
            return self._behind_locked(snapshot_ids)

    def _behind_locked(self, snapshot_ids: dict[str, str]) -> dict[str, str]:
        out = {}
        for key, target in snapshot_ids.items():
            if key not in self._subs:
                continue
            held = self._applied.get(key)
            if not snapshot_at_least(held, target):
                out[key] = held or ""
        return out

    def wait_for_snapshots(self, snapshot_ids: dict[str, str], timeout: float) -> dict[str, str]:
        """Block until this client holds, for every listed key it follows, that snapshot or
        a later one, and its callbacks ran; returns the keys still behind after ``timeout``
        (empty: caught up). Used to make a change visible before the call that made it
        returns (read your writes)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("wait_for_snapshots called from a long-poll callback would block "
                               "the thread that delivers the values")
        with self._value_known:
            self._value_known.wait_for(lambda: self._stopped or not self._behind_locked(snapshot_ids),
                                       timeout)
            return self._behind_locked(snapshot_ids)

    def _mark_stopped(self) -> None:
        """Wake every waiter and leave the per-process registry."""
        with self._value_known:
            self._stopped = True
            self._value_known.notify_all()
        with _REGISTRY_LOCK:
            if _REGISTRY.get((self.host_actor_name, self.namespace)) is self:
                del _REGISTRY[(self.host_actor_name, self.namespace)]

    def stop(self) -> None:
        """Cancel the in-flight call, end the thread and leave the registry; idempotent."""
        self._mark_stopped()
        self._call_in_loop(self._stop_event.set)
        self._call_in_loop(self._wake.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=STOP_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                logger.warning("long-poll client thread for host %r did not stop within %.1fs",
                               self.host_actor_name, STOP_JOIN_TIMEOUT_S)

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            keys = len(self._subs)
            subscriptions = sum(len(subs) for subs in self._subs.values())
            known = len(self._known)
        return {"host": self.host_actor_name, "namespace": self.namespace, "keys": keys,
                "subscriptions": subscriptions, "known_values": known, "stopped": self._stopped,
                "reconnects": self.reconnects, "answers": self._answers, "timeouts": self._timeouts,
                "restarts": self._restarts, "callback_errors": self._callback_errors}

    def __repr__(self) -> str:
        s = self.statistics()
        state = "stopped" if s["stopped"] else "running"
        return (f"<LongPollClient {self.host_actor_name!r} ns={self.namespace!r} [{state} | keys: "
                f"{s['keys']} ({s['known_values']} known) | subs: {s['subscriptions']} | "
                f"reconnects: {s['reconnects']}]>")

    # -- thread and loop ----------------------------------------------------------------
    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: the client has stopped

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        task = self._loop.create_task(self._poll_forever(),
                                      name=f"long-poll-client:{self.host_actor_name}")
        try:
            self._loop.run_until_complete(task)
        except BaseException as exc:  # noqa: BLE001 - the guard: log, keep, stop
            self.error = exc
            logger.exception("long-poll client for host %r crashed; it is stopped", self.host_actor_name)
        finally:
            self._mark_stopped()
            try:
                leftovers = asyncio.all_tasks(self._loop)  # cancelled helpers not yet reaped
                for leftover in leftovers:
                    leftover.cancel()
                if leftovers:
                    self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            finally:
                self._loop.close()

    async def _poll_forever(self) -> None:
        host: Any = None
        failures = 0
        while not self._stopped:
            self._wake.clear()
            ids = self._listen_ids()
            if not ids:
                await self._wake.wait()
                continue
            try:
                if host is None:
                    host = self._lookup_host()
                result = await self._listen_once(host, ids)
            except _Restart:
                self._restarts += 1
                continue
            except _HostUnavailable as exc:
                host = None
                failures += 1
                self.reconnects += 1
                logger.info("long-poll host %r unavailable (%s); retrying", self.host_actor_name, exc)
                await self._pause(_backoff_delay(failures))
                continue
            except Exception:  # noqa: BLE001 - e.g. the host raised: log, back off, keep going
                host = None
                failures += 1
                logger.exception("long-poll call to host %r failed; retrying", self.host_actor_name)
                await self._pause(_backoff_delay(failures))
                continue
            failures = 0
            if isinstance(result, LongPollTimeout):
                self._timeouts += 1
                continue
            self._answers += 1
            self._apply(result)

    def _lookup_host(self) -> Any:
        if not ray.is_initialized():
            # e.g. Ray shut down at exit: a Ray call from this thread would start a new instance
            raise _HostUnavailable("ray is not initialized in this process")
        try:
            return ray.get_actor(self.host_actor_name, namespace=self.namespace)
        except ValueError as exc:  # Ray's "actor not found"
            raise _HostUnavailable(f"no actor named {self.host_actor_name!r}: {exc}") from exc

    async def _listen_once(self, host: Any, ids: dict[str, str | None]) -> Any:
        """One ``listen_for_change`` call; cancelled on ``_wake`` (raises ``_Restart``)."""
        try:
            ref = host.listen_for_change.remote(ids)
        except RayActorError as exc:
            raise _HostUnavailable(repr(exc)) from exc
        answer = asyncio.wrap_future(ref.future())
        woken = self._loop.create_task(self._wake.wait(), name="long-poll-client:wake")
        self._inflight_ids = ids
        try:
            done, _ = await asyncio.wait({answer, woken}, timeout=self.listen_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if answer in done:
                try:
                    return answer.result()
                except (RayActorError, GetTimeoutError, TaskCancelledError) as exc:
                    raise _HostUnavailable(repr(exc)) from exc
            if woken in done:
                raise _Restart()
            raise _HostUnavailable(f"no answer within {self.listen_timeout_s:.1f}s")
        finally:
            self._inflight_ids = {}
            woken.cancel()
            if not answer.done():
                answer.cancel()
                _cancel_quietly(ref)

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds unless the client is stopped meanwhile."""
        stopping = self._loop.create_task(self._stop_event.wait(), name="long-poll-client:backoff")
        try:
            await asyncio.wait({stopping}, timeout=delay)
        finally:
            stopping.cancel()

    def _listen_ids(self) -> dict[str, str | None]:
        with self._lock:
            return {key: (self._known[key].snapshot_id if key in self._known else None)
                    for key in self._subs}

    def _restart_if_uncovered(self) -> None:
        """On the loop: restart the in-flight call unless it already asks for exactly these ids."""
        wanted = self._listen_ids()
        if any(key not in self._inflight_ids or self._inflight_ids[key] != snapshot_id
               for key, snapshot_id in wanted.items()):
            self._wake.set()

    # -- delivery (loop thread only) --------------------------------------------------------
    def _apply(self, result: dict[str, UpdatedObject]) -> None:
        with self._value_known:
            targets: list[Subscription] = []
            for key, obj in result.items():
                subs = self._subs.get(key)
                if not subs:
                    continue  # unsubscribed while the call was in flight
                self._known[key] = obj
                targets.extend(subs)
            self._value_known.notify_all()
        for sub in targets:
            self._deliver(sub)
        with self._value_known:  # every callback of these snapshots ran: they are applied
            for key, obj in result.items():
                if key in self._subs and self._known.get(key) is obj:
                    self._applied[key] = obj.snapshot_id
            self._value_known.notify_all()

    def _deliver(self, sub: Subscription) -> None:
        """Give ``sub`` the value held for its key, unless it already has that snapshot."""
        with self._lock:
            obj = self._known.get(sub.key)
            subscribed = any(s is sub for s in self._subs.get(sub.key, ()))
            if obj is None or not subscribed or self._delivered.get(sub) == obj.snapshot_id:
                return
            self._delivered[sub] = obj.snapshot_id
        try:
            sub.callback(obj.value)
        except Exception:  # noqa: BLE001 - a bad callback must not stop updates
            self._callback_errors += 1
            logger.exception("long-poll callback for key %r (host %r) raised", sub.key,
                             self.host_actor_name)


def _backoff_delay(failures: int) -> float:
    """Jittered exponential backoff: 50 ms doubling per failure, capped at 2 s."""
    base = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** min(failures - 1, 16))
    return min(BACKOFF_MAX_S, base * random.uniform(0.5, 1.5))


def _cancel_quietly(ref: Any) -> None:
    """Ask the host to drop an abandoned call so its waiter does not linger until timeout."""
    try:
        ray.cancel(ref)
    except Exception as exc:  # noqa: BLE001 - host already gone or call already finished
        logger.debug("could not cancel abandoned long-poll call: %r", exc)


def _ignore(_value: Any) -> None:
    """Callback of ``wait_for_key``'s temporary subscription."""
