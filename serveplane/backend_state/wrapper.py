"""``ReplicaActorWrapper``: the one place that makes Ray calls about a replica.

Observations (``check_*``, ``health_due``, ``stop_finished``, ``next_health_at``) only read
futures and local fields; actions (``start``, ``reconfigure``, ``send_health_check``,
``begin_stop``, ``kill``) call Ray. ``kill`` may block on Ray (the controller runs it off
its event loop); the others only submit. Replicas are named, detached actors with
``max_restarts=0``: the controller, not Ray, decides when to replace a dead replica.

Transient is not death: a health check that fails with ``ActorUnavailableError`` (the
actor is unreachable for now, e.g. its node is overloaded or reconnecting) counts as a
failed check and is retried after a short back-off; only ``ActorDiedError`` is DEAD.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import ray

from serveplane.backend_state.record import actor_max_concurrency
from serveplane.backend_state.replica import HealthStatus, ProbeStatus
from serveplane.records import replica_actor_name

logger = logging.getLogger(__name__)

UNAVAILABLE_RETRY_S = 0.5

_remote_cls: Any = None


def _replica_remote_class() -> Any:
    global _remote_cls
    if _remote_cls is None:
        from serveplane.replica.actor import ReplicaActor

        _remote_cls = ray.remote(ReplicaActor)
    return _remote_cls


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything needed to start one replica of one backend version. The controller fills
    in the blobs (by hash, from its store) just before the start action runs."""

    backend: str
    version: str
    config_version: str
    code_hash: str
    init_hash: str
    config: dict[str, Any]
    actor_options: dict[str, Any] = field(default_factory=dict)
    code_blob: bytes = b""
    init_blob: bytes = b""


def _probe(fut: Future | None) -> tuple[ProbeStatus, str | None]:
    if fut is None or not fut.done():
        return ProbeStatus.PENDING, None
    exc = fut.exception()
    if exc is None:
        return ProbeStatus.SUCCEEDED, None
    return ProbeStatus.FAILED, _describe(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    # RayTaskError strings carry the full traceback; keep the last line, which names the error.
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ray.exceptions.ActorUnavailableError)


def is_death(exc: BaseException) -> bool:
    return isinstance(exc, ray.exceptions.RayActorError) and not is_transient(exc)


class ReplicaActorWrapper:
    def __init__(self, backend: str, replica_tag: str, namespace: str) -> None:
        self.backend = backend
        self.replica_tag = replica_tag
        self.namespace = namespace
        self.actor_name = replica_actor_name(backend, replica_tag)
        self.actor_handle: Any = None
        self.version: str | None = None
        self.config_version: str | None = None
        self.node_id: str | None = None
        self._ready: Future | None = None
        self._reconfigure: Future | None = None
        self._health: Future | None = None
        self._health_sent_at = -math.inf
        self._next_health_at = 0.0
        self._health_failures = 0
        self._stop: Future | None = None
        self._stop_deadline = -math.inf
        self._health_period_s = 10.0
        self._health_timeout_s = 30.0
        self._health_threshold = 3

    @property
    def health_failures(self) -> int:
        """Health checks failed in a row (more than 0: unhealthy, not yet declared dead)."""
        return self._health_failures

    def set_health_options(self, period_s: float, timeout_s: float, threshold: int) -> None:
        if self._next_health_at > 0:
            self._next_health_at += period_s - self._health_period_s
        self._health_period_s = period_s
        self._health_timeout_s = timeout_s
        self._health_threshold = threshold

    # -- start / recover ---------------------------------------------------------
    def start(self, spec: ReplicaSpec) -> None:
        options = dict(spec.actor_options)
        options.setdefault("num_cpus", 0 if "num_gpus" in options else 1)
        self.version = spec.version
        self.config_version = spec.config_version
        mcq = int(spec.config.get("max_concurrent_queries", 100))
        self.actor_handle = _replica_remote_class().options(
            name=self.actor_name, namespace=self.namespace, lifetime="detached",
            max_restarts=0, max_concurrency=actor_max_concurrency(mcq), **options,
        ).remote(spec.backend, self.replica_tag, spec.code_blob, spec.init_blob, spec.config,
                 spec.version, spec.config_version, namespace=self.namespace)
        self._ready = self.actor_handle.ready.remote().future()

    def recover(self) -> bool:
        """Find the named actor again (a blocking GCS lookup; recovery runs before the loop)."""
        try:
            self.actor_handle = ray.get_actor(self.actor_name, namespace=self.namespace)
        except ValueError:
            return False
        self._ready = self.actor_handle.ready.remote().future()
        return True

    def check_ready(self) -> tuple[ProbeStatus, str | None]:
        status, err = _probe(self._ready)
        if status is ProbeStatus.SUCCEEDED and self._ready is not None:
            meta = self._ready.result()
            self.node_id = meta.get("node_id")
            if self.version is None:  # recovered: learn the versions from the replica
                self.version = meta.get("version")
                self.config_version = meta.get("config_version")
        return status, err

    # -- reconfigure -------------------------------------------------------------
    def reconfigure(self, config: dict[str, Any], config_version: str) -> None:
        self._reconfigure = self.actor_handle.reconfigure.remote(config, config_version).future()
        self.config_version = config_version

    def check_reconfigured(self) -> tuple[ProbeStatus, str | None]:
        return _probe(self._reconfigure)

    # -- health ------------------------------------------------------------------
    def next_health_at(self) -> float:
        return self._next_health_at if self._health is None else -math.inf

    def health_due(self, now: float) -> bool:
        return self._health is None and now >= self._next_health_at

    def send_health_check(self, now: float) -> None:
        self._health_sent_at = now
        self._next_health_at = now + self._health_period_s
        self._health = self.actor_handle.check_health.remote().future()

    def check_health(self, now: float) -> HealthStatus:
        if self._health is None:
            return HealthStatus.HEALTHY
        if not self._health.done():
            if now - self._health_sent_at > self._health_timeout_s:
                self._health.cancel()
                self._health = None
                logger.warning("health check of %s timed out after %.1fs", self.actor_name,
                               self._health_timeout_s)
                return HealthStatus.UNHEALTHY
            return HealthStatus.HEALTHY
        exc = self._health.exception()
        self._health = None
        if exc is None:
            self._health_failures = 0
            return HealthStatus.HEALTHY
        if is_death(exc):
            return HealthStatus.DEAD
        self._health_failures += 1
        if is_transient(exc):  # unreachable for now: look again soon, not after a whole period
            self._next_health_at = min(self._next_health_at,
                                       now + UNAVAILABLE_RETRY_S * 2 ** (self._health_failures - 1))
        logger.warning("health check of %s failed (%d/%d): %s", self.actor_name,
                       self._health_failures, self._health_threshold, _describe(exc))
        if self._health_failures >= self._health_threshold:
            return HealthStatus.UNHEALTHY
        return HealthStatus.HEALTHY

    def probe_now(self) -> None:
        """Check health on the next pass instead of waiting for the period (a router saw
        this replica fail)."""
        self._next_health_at = -math.inf

    # -- stop --------------------------------------------------------------------
    def begin_stop(self, graceful_timeout_s: float, now: float) -> None:
        self._stop_deadline = now + graceful_timeout_s
        if self.actor_handle is None or graceful_timeout_s <= 0:
            self._stop = None
            return
        self._stop = self.actor_handle.prepare_for_shutdown.remote(graceful_timeout_s).future()

    def stop_finished(self, now: float) -> bool:
        """Drained, dead, or past the graceful deadline: time to kill.

        The replica's drain answers only once nothing is in flight and its callers stopped
        coming (``replica/drain.py``). A drain call that failed otherwise (unreachable for
        now, or an error) proves nothing: the replica may still run requests, so the kill
        waits for the graceful deadline."""
        if self._stop is None or now >= self._stop_deadline:
            return True
        if not self._stop.done():
            return False
        exc = self._stop.exception()
        return exc is None or is_death(exc)

    def kill(self) -> None:
        """Blocking: the controller runs this off its event loop."""
        if self.actor_handle is None:
            try:
                self.actor_handle = ray.get_actor(self.actor_name, namespace=self.namespace)
            except ValueError:
                return  # never created, or already gone
        try:
            ray.kill(self.actor_handle, no_restart=True)
        except ValueError:
            pass  # already dead
