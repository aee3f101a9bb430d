"""The controller's rollout RPCs (a part of ``ServeController``, see controller.py).

Every call goes through ``_commit_endpoint``: a rollout lives in its endpoint record, so a
step, a pause or an abort and the traffic it sets are one fenced write.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from serveplane.backend_state import BackendStateManager
from serveplane.controller.rollouts import RolloutDriver, with_rollout
from serveplane.endpoint_state import EndpointRecord, EndpointState
from serveplane.exceptions import BackendNotFoundError, DuplicateError, NotFoundError
from serveplane.rollout import FINAL, Rollout, RolloutState, validate_rollout


_GUARD_NAMES = ("max_error_rate", "max_latency_ratio", "min_shadow_agreement")


def breached_guard(reason: str) -> str:
    """The guard a roll-back's reason names: one counter label per guard, never per figure
    (the reason's readings would make a label, and a counter, per roll-back)."""
    if "never became ready" in reason:
        return "canary never ready"
    if "the canary cannot start" in reason:
        return "canary cannot start"
    for name in _GUARD_NAMES + ("progress_deadline_s",):
        if name in reason:
            return name
    return "other"


class RolloutRPCs:
    _backends: BackendStateManager
    _endpoints: EndpointState
    _lock: asyncio.Lock
    _rollouts: RolloutDriver
    _wall: Callable[[], float]
    rollbacks: Any
    _commit_endpoint: Callable[..., Awaitable[dict[str, str]]]

    def _rollouts_aborted_by_deleting(self, tag: str) -> dict[str, EndpointRecord]:
        """Endpoint records whose unfinished rollout of canary ``tag`` deleting it aborts:
        only while the rollout owns the traffic (once the operator set it by hand, their
        traffic stands, and deleting a backend it uses is refused as usual)."""
        out = {}
        for name, record in self._endpoints.records().items():
            rollout = record.rollout
            if rollout is not None and rollout.backend == tag and rollout.state not in FINAL \
                    and not rollout.operator_override:
                out[name] = with_rollout(record, rollout.abort(
                    self._wall(), f"its canary backend {tag!r} was deleted"))
        return out

    async def start_rollout(self, endpoint: str, backend: str, steps: Any, interval_s: Any = 60.0,
                            guards: Any = None, shadow_s: Any = 0.0,
                            shadow_proportion: Any = 1.0) -> dict[str, Any]:
        async with self._lock:
            record = self._endpoints.get(endpoint)
            if not self._backends.exists(backend):
                raise BackendNotFoundError(
                    f"canary backend {backend!r} does not exist; known backends: "
                    f"{', '.join(self._backends.tags()) or 'none'}")
            current = record.rollout
            if current is not None and current.state not in FINAL:
                raise DuplicateError(
                    f"endpoint {endpoint!r} already has a {current.state.value} rollout of "
                    f"{current.backend!r}; abort_rollout it first (one rollout per endpoint)")
            parsed = validate_rollout(endpoint, backend, dict(record.traffic), steps, interval_s, guards,
                                      shadow_s, shadow_proportion)
            steps_t, interval, guards_m, shadow, proportion = parsed
            now = self._wall()
            rollout = Rollout(
                endpoint=endpoint, backend=backend, source=dict(record.traffic),
                source_shadows=dict(record.shadows), steps=steps_t, interval_s=interval,
                guards=guards_m, shadow_s=shadow, shadow_proportion=proportion,
                state=RolloutState.SHADOWING if shadow > 0 else RolloutState.RUNNING,
                step=-1 if shadow > 0 else 0, step_started_at=now)
            rollout = rollout.note(now, "started: " + (f"shadow phase ({shadow:g}s)" if shadow > 0
                                                        else f"step 0 (weight {steps_t[0]:g})"))
            await self._commit_endpoint(with_rollout(record, rollout), endpoint)
            return self._rollout_view(endpoint)

    def _rollout_view(self, endpoint: str) -> dict[str, Any]:
        record = self._endpoints.get(endpoint)
        if record.rollout is None:
            raise NotFoundError(f"endpoint {endpoint!r} has no rollout; start one with start_rollout")
        view = record.rollout.public()
        verdict = self._rollouts.verdicts.get(endpoint)
        if record.rollout.active and verdict is not None:
            view["reason"] = verdict.reason
            view["readings"] = verdict.readings
        view["traffic"] = dict(record.traffic)
        return view

    async def get_rollout(self, endpoint: str) -> dict[str, Any]:
        return self._rollout_view(endpoint)

    async def wait_for_rollout(self, endpoint: str, timeout_s: float) -> dict[str, Any]:
        self._rollout_view(endpoint)  # raises for an unknown endpoint or no rollout
        await self._rollouts.wait(endpoint, timeout_s)
        return self._rollout_view(endpoint)

    async def _move_rollout(self, endpoint: str, move: Callable[[Rollout, float], Rollout]) -> dict[str, Any]:
        async with self._lock:
            record = self._endpoints.get(endpoint)
            if record.rollout is None:
                raise NotFoundError(f"endpoint {endpoint!r} has no rollout; start one with start_rollout")
            await self._commit_endpoint(with_rollout(record, move(record.rollout, self._wall())), endpoint)
            return self._rollout_view(endpoint)

    async def pause_rollout(self, endpoint: str) -> dict[str, Any]:
        return await self._move_rollout(endpoint, lambda r, now: r.pause(now, "paused by the operator"))

    async def resume_rollout(self, endpoint: str) -> dict[str, Any]:
        return await self._move_rollout(endpoint, lambda r, now: r.resume(now))

    async def abort_rollout(self, endpoint: str) -> dict[str, Any]:
        return await self._move_rollout(endpoint, lambda r, now: r.abort(now, "aborted by the operator"))

    def _canary_unready(self, backend: str) -> str | None:
        """Why ``backend`` cannot serve a request now (no serving replica), or None."""
        state = self._backends.get_any(backend)
        if state is None:
            return f"backend {backend!r} no longer exists"
        if state.serving_infos():
            return None
        status = state.status()
        replicas = ", ".join(f"{n} {s.lower()}" for s, n in sorted(status["replicas"].items()))
        failure = f"; last failure: {status['failure']}" if status["failure"] else ""
        return (f"backend {backend!r} has no serving replica of {status['target_replicas']} wanted "
                f"({replicas or 'none started'}){failure}")

    def _canary_failed(self, backend: str) -> str | None:
        """Why ``backend``'s version gave up starting while none of its replicas serves, or None."""
        state = self._backends.get_any(backend)
        if state is None or state.failed is None or state.serving_infos():
            return None
        return state.failed

    def _count_rollback(self, rollout: Rollout) -> None:
        self.rollbacks[(rollout.endpoint, breached_guard(rollout.reason))] += 1

    def _operator_wins(self, record: EndpointRecord, call: str) -> EndpointRecord:
        """A manual traffic change pauses the endpoint's active rollout, in the same write."""
        rollout = record.rollout
        if rollout is None or rollout.state in FINAL:
            return record
        return record.model_copy(update={"rollout": rollout.overridden(
            self._wall(), f"the operator changed the traffic by hand: {call}")})

