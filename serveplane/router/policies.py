"""Replica-choice policies. ``choose`` gets only replicas with free capacity.

Sessions never go through a policy: they always use rendezvous hashing of the session id
over the live replicas (``rendezvous_rank``), so every process picks the same replica and
a replica joining or leaving moves only its own sessions.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from serveplane.records import ReplicaInfo


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


class Router:
    """Base class for replica-choice policies; subclass it and override ``choose``.

    ``self.load(replica)`` gives the requests this process has in flight on a replica.
    """

    name = "custom"

    def __init__(self) -> None:
        self.load: Callable[[ReplicaInfo], int] = lambda replica: 0

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        raise NotImplementedError("a Router subclass must implement choose(replicas, request)")


class RoundRobinRouter(Router):
    name = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self._counter = itertools.count()

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        return replicas[next(self._counter) % len(replicas)]


class LeastLoadedRouter(Router):
    name = "least_loaded"

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        load = self.load
        best = min(load(r) for r in replicas)
        return random.choice([r for r in replicas if load(r) == best])


class PowerOfTwoRouter(Router):
    name = "power_of_two"

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        if len(replicas) == 1:
            return replicas[0]
        a, b = random.sample(list(replicas), 2)
        return a if self.load(a) <= self.load(b) else b


class ConsistentHashRouter(Router):
    """Rendezvous hashing on the session/shard key; least loaded without a key."""

    name = "consistent_hash"

    def __init__(self) -> None:
        super().__init__()
        self._fallback = LeastLoadedRouter()

    def choose(self, replicas: Sequence[ReplicaInfo], request: RequestInfo) -> ReplicaInfo:
        if request.key is None:
            self._fallback.load = self.load
            return self._fallback.choose(replicas, request)
        return rendezvous_rank(request.key, replicas)[0]


POLICIES: dict[str, type[Router]] = {
    cls.name: cls for cls in (RoundRobinRouter, LeastLoadedRouter, PowerOfTwoRouter, ConsistentHashRouter)
}


def make_policy(name: str, blob: bytes | None = None) -> Router:
    if blob is not None:
        import cloudpickle

        cls: Any = cloudpickle.loads(blob)
        policy = cls()
        if not isinstance(policy, Router):
            # duck-typed user class: give it the same load accessor
            policy.load = lambda replica: 0
        return policy
    return POLICIES[name]()


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
    assert last is not None, "traffic has no backend with weight > 0"
    return last


def key_fraction(key: str) -> float:
    return stable_hash(f"backend|{key}") / 2**64
