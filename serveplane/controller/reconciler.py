"""The control loop's step: decide, persist, commit, act.

1. **Decide** under the controller's lock, in plain code: autoscaling targets, then
   ``BackendState.update`` for the backends that are due (``BackendStateManager.due``),
   then which goals finish and which deleted backends (and their blobs) go away.
2. **Persist** every record that decision touched in one atomic, fenced store write.
3. **Commit** to memory only if the write succeeded: new replicas join their backend,
   goals finish, records change; then publish to long-poll.
4. **Act** outside the lock: start, reconfigure, probe, stop, kill. Destructive actions
   run only while this controller provably owns its epoch (the write just made, or a
   fresh ``check_epoch``). An action that raises is fed back as an outcome
   (``BackendState.action_failed``); a kill that went through removes its replica.

A failed write commits nothing and starts nothing (new names must be stored before their
actors exist), but the other decided actions still run: stopping a dead replica never
waits for the store. The next tick decides again and retries the write, because memory
still differs from what was stored.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Callable

from serveplane.backend_state import Action, BackendState, BackendStateManager, BackendUpdate
from serveplane.controller.autoscaler import Autoscaler
from serveplane.controller.goals import Goal, GoalManager
from serveplane.controller.persistence import Change, IORunner, Persistence
from serveplane.exceptions import StaleEpochError

logger = logging.getLogger(__name__)


@dataclass
class StepReport:
    """What one step did: for tests, the simulator and the tick benchmark."""

    visited: int = 0
    written: bool = False
    write_error: str | None = None
    actions: list[Action] = field(default_factory=list)
    deferred: bool = False  # destructive actions waited: ownership could not be proven


class Reconciler:
    def __init__(self, backends: BackendStateManager, goals: GoalManager, persistence: Persistence,
                 autoscaler: Autoscaler, lock: asyncio.Lock, run_ray: IORunner,
                 publish_replicas: Callable[[BackendState], None],
                 publish_removed: Callable[[str], None]) -> None:
        self._backends = backends
        self._goals = goals
        self._persistence = persistence
        self._autoscaler = autoscaler
        self._lock = lock
        self._run_ray = run_ray
        self._publish_replicas = publish_replicas
        self._publish_removed = publish_removed
        self._desired_targets: dict[str, int] = {}  # autoscaling decisions not yet stored

    async def step(self, now: float) -> StepReport:
        report = StepReport()
        async with self._lock:
            if self._persistence.stale is not None:
                raise self._persistence.stale
            self._autoscale(now)
            visited = self._backends.due(now)
            report.visited = len(visited)
            updates = [(state, state.update(now)) for state in visited]
            change, commit = self._decide(updates)
            commits: Callable[[], None] | None = commit
            try:
                await self._persistence.write(change)
                report.written = bool(change)
            except StaleEpochError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store is down: retry next tick
                report.write_error = str(exc)
                logger.warning("control step could not store its decision (%s); retrying next tick",
                               exc)
                commits = None
            if commits is not None:
                commits()
            for state, update in updates:
                if commits is None:
                    # nothing stored: proposed replicas never exist, and the backend stays due
                    update.actions = [a for a in update.actions if a.kind != "start"]
                    self._backends.mark_active(state.tag)
                if update.serving_changed and self._backends.get_any(state.tag) is state:
                    self._publish_replicas(state)
        actions = [(state, a) for state, update in updates for a in update.actions]
        if any(a.destructive for _, a in actions) and not report.written \
                and not await self._owns_epoch():
            for state, action in actions:  # kept decided: retried once ownership is proven
                if action.destructive:
                    state.action_deferred(action)
                    self._backends.mark_active(state.tag)
            actions = [(s, a) for s, a in actions if not a.destructive]
            report.deferred = True
        report.actions = [a for _, a in actions]
        await self._act(actions, now)
        for state, _ in updates:
            if self._backends.get_any(state.tag) is state:
                if state.needs_publish():  # an action's outcome changed the serving set
                    self._publish_replicas(state)
                self._backends.reschedule(state, now)
        return report

    async def _owns_epoch(self) -> bool:
        """Proof of ownership for destructive actions: raises ``StaleEpochError`` when a
        successor exists; False when the store cannot say (the actions wait)."""
        try:
            owned = await self._persistence.check_epoch()
        except Exception as exc:  # noqa: BLE001 - store unreachable: prove it later
            logger.warning("cannot check the epoch (%s); stops and kills wait for the store", exc)
            return False
        if not owned:
            raise self._persistence.stale or StaleEpochError("epoch lost")
        return True

    # -- decide ---------------------------------------------------------------------------
    def _autoscale(self, now: float) -> None:
        for state in self._backends.autoscaled():
            auto = state.record.config.autoscaling_config
            assert auto is not None
            running = len(state.serving_infos())
            current = self._desired_targets.get(state.tag, state.record.target_replicas)
            desired = self._autoscaler.decide(
                state.tag, auto, current, running, running,
                state.record.config.max_concurrent_queries, now)
            if desired is not None:
                self._desired_targets[state.tag] = desired
                logger.info("autoscaling %s to %d: %s", state.tag, desired,
                            self._autoscaler.events[-1].reason)
        for tag in list(self._desired_targets):
            if self._backends.get_any(tag) is None:
                del self._desired_targets[tag]
            else:
                self._backends.mark_active(tag)

    def _decide(self, updates: list[tuple[BackendState, BackendUpdate]]
                ) -> tuple[Change, Callable[[], None]]:
        change = Change()
        finished: list[Goal] = []
        removed: list[BackendState] = []
        targets = dict(self._desired_targets)
        for state, update in updates:
            tag = state.tag
            target = targets.pop(tag, None)
            if target is not None and target != state.record.target_replicas:
                base = update.record or state.record
                update.record = base.model_copy(update={"target_replicas": target})
            if update.converged and state.record.deleting:
                removed.append(state)
                change.records[f"backend/{tag}"] = None
                finished += GoalManager.finish(self._goals.pending_for(tag))
                for digest in self._persistence.refs.released(state.record.blob_hashes(), ()):
                    change.blobs[digest] = None
            else:
                if update.record is not None:
                    change.records[f"backend/{tag}"] = update.record.model_dump(mode="json")
                if update.converged and target is None:
                    finished += GoalManager.finish(self._goals.pending_for(tag))
                elif update.failure:
                    finished += GoalManager.finish(self._goals.pending_for(tag), update.failure)
        self._goals.persist(finished, change.records)

        def commit() -> None:
            for state, update in updates:
                state.commit(update)
                self._desired_targets.pop(state.tag, None)
            for state in removed:
                self._backends.remove(state.tag)
                self._persistence.refs.apply(state.record.blob_hashes(), ())
                self._publish_removed(state.tag)
            self._goals.commit(finished)

        return change, commit

    # -- act ------------------------------------------------------------------------------
    async def _act(self, actions: list[tuple[BackendState, Action]], now: float) -> None:
        blocking: list[tuple[BackendState, Action]] = []
        for state, action in actions:
            if action.kind == "kill":
                blocking.append((state, action))
                continue
            try:
                if action.kind == "start" and action.spec is not None:
                    spec = action.spec
                    action.spec = replace(spec, code_blob=await self._persistence.blob(spec.code_hash),
                                          init_blob=await self._persistence.blob(spec.init_hash))
                action.run(now)
            except Exception as exc:  # noqa: BLE001 - an outcome, seen by the next decision
                state.action_failed(action, exc, now)
        for state, action in blocking:
            try:
                await self._run_ray(action.run, now)
            except Exception as exc:  # noqa: BLE001 - an outcome, seen by the next decision
                state.action_failed(action, exc, now)
            else:
                state.action_done(action)
            self._backends.mark_active(state.tag)
