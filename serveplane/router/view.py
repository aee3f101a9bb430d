"""``RouterView``: what one router knows of its endpoint, and the picking it does with it.

It holds the endpoint's config (traffic, shadows, batching, policy), each backend's
replicas and config, the replicas seen dead or backed off, the slot table and the
session table. It is plain data with no lock and no I/O: its router calls it under the
router's lock. Picking is synchronous (``pick``): a backend by weight (or by the hash of
a session or shard key), then a replica by the endpoint's policy among those with a free
slot, or the one replica a session or hashed shard key is pinned to.

Invariants:
- a replica seen dead is never picked again, even if a later update still lists it; it is
  forgotten once the controller stops listing it;
- a pinned request (session, or shard key under a hashing policy) waits for its own
  replica while that replica is listed and alive: a replica that is full, or refuses as
  full, is waited for, never swapped for another (its state lives there);
- a backend gets no request until its config is known (its limit is not guessed).
"""

from __future__ import annotations

import collections
import random
from typing import TYPE_CHECKING, Any, Callable

from serveplane.config import BackendConfig
from serveplane.records import EndpointInfo, ReplicaInfo
from serveplane.router.backoff import ReplicaBackoff
from serveplane.router.policies import (
    NO_REQUEST,
    RequestInfo,
    Router,
    key_fraction,
    make_policy,
    rendezvous_pick,
    weighted_pick,
)
from serveplane.router.slots import SlotTable

if TYPE_CHECKING:
    from serveplane.router.request import RoutedRequest

DEFAULT_CONFIG = BackendConfig()
MAX_TRACKED_SESSIONS = 100_000


class RouterView:
    def __init__(self, endpoint: str, clock: Callable[[], float], backoff: ReplicaBackoff | None = None) -> None:
        self.endpoint = endpoint
        self.info: EndpointInfo | None = None
        self.deleted = False  # the controller published this endpoint as gone
        self.only_backend: str | None = None  # the one backend with weight > 0, if so
        self.policy: Router = make_policy("round_robin")
        self.policy_key: tuple[str, bytes | None] = ("round_robin", None)
        self.policy.load = self.load
        self.replicas: dict[str, tuple[ReplicaInfo, ...]] = {}
        self.configs: dict[str, BackendConfig] = {}
        self.slots = SlotTable(clock)
        self.dead: set[str] = set()
        self.backoff = backoff if backoff is not None else ReplicaBackoff(clock=clock)
        self._live_cache: dict[str, list[ReplicaInfo]] = {}
        self.sessions: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.session_moves = 0

    # -- updates ------------------------------------------------------------------------------
    def set_endpoint(self, info: EndpointInfo | None, policy: Router | None) -> set[str]:
        """The endpoint's new config; returns the backends it uses (traffic and shadows)."""
        self.info = info
        self.deleted = info is None  # a value of None is published only for a deleted endpoint
        weighted = [b for b, w in info.traffic.items() if w > 0] if info is not None else []
        self.only_backend = weighted[0] if len(weighted) == 1 else None
        if info is not None and policy is not None:
            policy.load = self.load
            self.policy = policy
            self.policy_key = (info.router, info.router_blob)
        self._live_cache.clear()
        return set(info.traffic) | set(info.shadows) if info is not None else set()

    def forget(self, backend: str) -> None:
        """A backend that left the endpoint is no longer followed (bounded memory)."""
        self.replicas.pop(backend, None)
        self.configs.pop(backend, None)
        self._forget_unlisted()

    def set_replicas(self, backend: str, replicas: tuple[ReplicaInfo, ...]) -> None:
        self.replicas[backend] = replicas
        self._forget_unlisted()

    def _forget_unlisted(self) -> None:
        listed = {r.actor_name for rs in self.replicas.values() for r in rs}
        self.dead &= listed  # forget the dead the controller dropped; hide the others
        self.backoff.keep_only(listed)
        self.slots.keep_only(listed)
        self._live_cache.clear()

    def set_config(self, backend: str, config: BackendConfig | None) -> None:
        if config is None:
            self.configs.pop(backend, None)
        else:
            self.configs[backend] = config

    def mark_dead(self, replica: ReplicaInfo) -> bool:
        """True if ``replica`` is listed and was not known dead yet."""
        listed = any(r.actor_name == replica.actor_name for r in self.replicas.get(replica.backend, ()))
        if not listed or replica.actor_name in self.dead:
            return False
        self.dead.add(replica.actor_name)
        self._live_cache.clear()
        return True

    def changed(self) -> None:
        """A backoff or refusal hold began or ended."""
        self._live_cache.clear()

    # -- reading --------------------------------------------------------------------------------
    def config(self, backend: str) -> BackendConfig:
        return self.configs.get(backend, DEFAULT_CONFIG)

    def load(self, replica: ReplicaInfo) -> int:
        return self.slots.load(replica.actor_name)

    def listed(self, replica: ReplicaInfo) -> bool:
        return replica.actor_name not in self.dead and any(
            r.actor_name == replica.actor_name for r in self.replicas.get(replica.backend, ()))

    def live(self, backend: str) -> list[ReplicaInfo]:
        """Listed, not dead, not backed off, not held back after a refusal."""
        live = self._live_cache.get(backend)
        if live is None:
            dead = self.dead
            held = self.backoff.blocked() | self.slots.full.blocked()
            live = [r for r in self.replicas.get(backend, ()) if r.actor_name not in dead
                    and r.actor_name not in held]
            if not held:  # a hold ends with time: not cached while one runs
                self._live_cache[backend] = live
        return live

    def _reachable(self, backend: str) -> list[ReplicaInfo]:
        """Listed and not dead (backed-off and held replicas included): a pin's candidates."""
        dead = self.dead
        return [r for r in self.replicas.get(backend, ()) if r.actor_name not in dead]

    # -- picking --------------------------------------------------------------------------------
    def backend_for(self, request: RoutedRequest) -> str | None:
        if request.backend is not None:
            info = self.info
            if info is None or request.backend in info.traffic:
                return request.backend
            request.backend = None  # traffic moved while it waited
        if self.only_backend is not None:
            request.backend = self.only_backend
            return request.backend
        info = self.info
        if info is None or not info.traffic:
            return None
        key = request.session_id or request.shard_key
        request.backend = weighted_pick(info.traffic, key_fraction(key) if key is not None else random.random())
        return request.backend

    def pinned(self, request: RoutedRequest, backend: str) -> ReplicaInfo | None:
        """The one replica a keyed request must use (sessions; shard keys under a hashing
        policy), chosen among listed, live replicas; a hold does not move it."""
        key = request.session_id
        if key is None and request.shard_key is not None and self.policy.hashes_keys:
            key = request.shard_key
        if key is None:
            return None
        reachable = self._reachable(backend)
        return rendezvous_pick(key, reachable) if reachable else None

    def pick(self, request: RoutedRequest) -> ReplicaInfo | None:
        """A replica with a free slot for ``request`` (not yet claimed), or ``None``: wait."""
        backend = request.backend
        if backend is None and self.only_backend is not None:
            backend = request.backend = self.only_backend
        else:
            backend = self.backend_for(request)
        if backend is None:
            return None
        config = self.configs.get(backend)
        if config is None:
            return None  # its max_concurrent_queries is not known yet: wait for the config
        limit = config.max_concurrent_queries
        slots = self.slots
        if request.session_id is not None or request.shard_key is not None:
            pinned = self.pinned(request, backend)
            if pinned is not None:
                name = pinned.actor_name
                held = name in self.backoff.blocked() or name in slots.full.blocked()
                if held or not slots.has_room(name, limit):
                    return None  # wait for its own replica
                if request.session_id is not None:
                    self._track_session(request.session_id, pinned)
                return pinned
        replicas = self.live(backend)
        free = [r for r in replicas if slots.has_room(r.actor_name, limit)]
        if not free:
            return None
        if len(free) == 1:
            return free[0]
        policy = self.policy
        return policy.choose(free, self._request_info(request) if policy.uses_request else NO_REQUEST)

    def fits(self, request: RoutedRequest, replica: ReplicaInfo) -> bool:
        """May ``request`` (queued) take a freed slot of ``replica``?"""
        if self.backend_for(request) != replica.backend or replica.backend not in self.configs:
            return False
        if request.session_id is not None or request.shard_key is not None:
            pinned = self.pinned(request, replica.backend)
            if pinned is not None:
                if pinned.actor_name != replica.actor_name:
                    return False
                if request.session_id is not None:
                    self._track_session(request.session_id, replica)
        return True

    def free_slot_taker_allowed(self, replica: ReplicaInfo) -> bool:
        """Whether a freed slot of ``replica`` may go to a queued request now."""
        name = replica.actor_name
        if name in self.dead or name in self.slots.full.blocked() or name in self.backoff.blocked():
            return False
        if not self.slots.has_room(name, self.config(replica.backend).max_concurrent_queries):
            return False  # the limit went down meanwhile
        return any(r.actor_name == name for r in self.replicas.get(replica.backend, ()))

    def _request_info(self, request: RoutedRequest) -> RequestInfo:
        return RequestInfo(self.endpoint, request.method_name, request.session_id or request.shard_key,
                           request.args)

    def _track_session(self, session_id: str, replica: ReplicaInfo) -> None:
        previous = self.sessions.get(session_id)
        if previous != replica.actor_name:
            if previous is not None:
                self.session_moves += 1
            self.sessions[session_id] = replica.actor_name
        self.sessions.move_to_end(session_id)
        if len(self.sessions) > MAX_TRACKED_SESSIONS:
            self.sessions.popitem(last=False)

    def shadow_replica(self, backend: str) -> ReplicaInfo | None:
        """The least loaded replica of ``backend`` with a free slot (not claimed)."""
        limit = self.config(backend).max_concurrent_queries
        if backend not in self.configs:
            return None
        free = [r for r in self.live(backend) if self.slots.has_room(r.actor_name, limit)]
        return min(free, key=self.load) if free else None

    def fanout_targets(self) -> list[ReplicaInfo]:
        info = self.info
        if info is None:
            return []
        return [r for backend, weight in sorted(info.traffic.items()) if weight > 0 for r in self.live(backend)]

    def policy_for(self, info: EndpointInfo) -> Any:
        """A new policy object when ``info`` names another one (user code: call unlocked)."""
        if (info.router, info.router_blob) == self.policy_key:
            return None
        return make_policy(info.router, info.router_blob)
