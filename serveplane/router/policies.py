"""Replica-choice policies. ``choose`` gets only replicas with free capacity.

Sessions never go through a policy: they always use rendezvous hashing of the session id
over the live replicas (``rendezvous_rank``), so every process picks the same replica and
a replica joining or leaving moves only its own sessions.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from serveplane.records import ReplicaInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestInfo:
    """What a policy may look at."""

    endpoint: str
    method_name: str
    key: str | None          # session id or shard key, when given
    args: tuple = ()


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def rendezvous_rank(key: str, replicas: Sequence[ReplicaInfo]) -> list[ReplicaInfo]:
    """Replicas ordered by highest random weight for ``key`` (stable across processes)."""
    return sorted(replicas, key=lambda r: stable_hash(f"{key}|{r.actor_name}"), reverse=True)


def rendezvous_pick(key: str, replicas: Sequence[ReplicaInfo]) -> ReplicaInfo:
    """``rendezvous_rank(key, replicas)[0]`` without sorting."""
    return max(replicas, key=lambda r: stable_hash(f"{key}|{r.actor_name}"))


NO_REQUEST = RequestInfo("", "", None)  # given to built-in policies that ignore the request


class Router:
    """Base class for replica-choice policies; subclass it and override ``choose``.

    ``choose(replicas, request)`` gets the replicas of the chosen backend that have a free
    slot (never an empty list) and a ``RequestInfo``; it returns one of them.
    ``self.load(replica)`` gives the requests this process has in flight on a replica.
    Requests with a session id never reach a policy (see the module docstring).
    """

    name = "custom"
    uses_request = True   # built-ins that ignore the request skip building a RequestInfo
    hashes_keys = False   # True: a request with a shard key must go to its rendezvous replica

    def __init__(self) -> None:
        self.load: Callable[[ReplicaInfo], int] = lambda replica: 0

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        raise NotImplementedError("a Router subclass must implement choose(replicas, request)")


class RoundRobinRouter(Router):
    name = "round_robin"
    uses_request = False

    def __init__(self) -> None:
        super().__init__()
        self._counter = itertools.count()

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        return replicas[next(self._counter) % len(replicas)]


class LeastLoadedRouter(Router):
    name = "least_loaded"
    uses_request = False

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        load = self.load
        best = min(load(r) for r in replicas)
        return random.choice([r for r in replicas if load(r) == best])


class PowerOfTwoRouter(Router):
    name = "power_of_two"
    uses_request = False

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        if len(replicas) == 1:
            return replicas[0]
        a, b = random.sample(list(replicas), 2)
        return a if self.load(a) <= self.load(b) else b


class ConsistentHashRouter(Router):
    """Rendezvous hashing on the session/shard key; least loaded without a key."""

    name = "consistent_hash"
    hashes_keys = True

    def __init__(self) -> None:
        super().__init__()
        self._fallback = LeastLoadedRouter()

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        if request.key is None:
            self._fallback.load = self.load
            return self._fallback.choose(replicas, request)
        return rendezvous_pick(request.key, replicas)


POLICIES: dict[str, type[Router]] = {
    cls.name: cls for cls in (RoundRobinRouter, LeastLoadedRouter, PowerOfTwoRouter, ConsistentHashRouter)
}


def make_policy(name: str, blob: bytes | None = None) -> Router:
    """The policy an endpoint names; an unusable one falls back to round robin (logged),
    so a bad update never stops the data path."""
    try:
        if blob is not None:
            import cloudpickle

            policy = cloudpickle.loads(blob)
            if isinstance(policy, type):
                policy = policy()
            if not callable(getattr(policy, "choose", None)):
                raise TypeError(f"{type(policy).__name__} has no choose(replicas, request) method")
            if not isinstance(policy, Router):
                # duck-typed user class: give it what the base class provides
                for attr, default in (("load", lambda replica: 0), ("uses_request", True),
                                      ("hashes_keys", False)):
                    if not hasattr(policy, attr):
                        setattr(policy, attr, default)
            return policy
        return POLICIES[name]()
    except Exception as exc:  # noqa: BLE001 - logged; requests keep flowing
        logger.error("router policy %r cannot be used (%s); using round_robin; known policies: %s",
                     name, exc, ", ".join(sorted(POLICIES)))
        return RoundRobinRouter()


def weighted_pick(traffic: dict[str, float], u: float) -> str:
    """The backend at position ``u`` in [0, 1) of the cumulative weights (sorted by tag)."""
    acc = 0.0
    last = None
    for tag in sorted(traffic):
        weight = traffic[tag]
        if weight <= 0:
            continue
        last = tag
        acc += weight
        if u < acc:
            return tag
    if last is None:
        raise ValueError(f"traffic {traffic!r} has no backend with a weight > 0")
    return last


def key_fraction(key: str) -> float:
    return stable_hash(f"backend|{key}") / 2**64
