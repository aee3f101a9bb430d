"""Drives progressive rollouts: reads the routers' figures, judges the guards, moves the
rollout and its traffic in one fenced write.

Invariants:
- a rollout is part of its endpoint record: a step and the traffic it sets are one store
  write (decide, persist, commit, publish, as every change); a failed write changes
  nothing and the next tick judges again, so an outage neither advances nor loses it;
- a step is judged only on figures from its own window: each router's counters are
  cumulative, and the window subtracts what each router had reported when the window
  opened (a router first heard of later counts whole if it started after the window
  opened, and from its first report otherwise). New figures come from fresh reports only
  (``RouterReports``' one rule); a router that falls silent during the step (idle, or it
  died) keeps what it counted in it. A window holds at most ``MAX_ROUTERS`` routers (the
  longest silent are forgotten first). After a controller
  restart every window opens afresh, with a history entry that says so: no figure from
  before the restart is ever used, and no step is skipped;
- a step that has not reached ``min_requests`` answers by its progress deadline
  (``guards.progress_deadline``) breaches, saying whether the canary never became ready
  (no serving replica) or where its requests went (timed out, expired, refused, cancelled);
  a canary whose version gave up starting, with no replica serving, breaches at once;
- time comes from the one injected clock: ``time()`` for persisted instants (step starts,
  history), which survive a controller restart;
- the operator wins: a manual ``set_traffic`` or ``shadow_traffic`` pauses the rollout (in
  the same write as the operator's traffic), and deleting the canary aborts it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from serveplane.clock import SYSTEM_CLOCK, Clock
from serveplane.controller.persistence import Change, Persistence
from serveplane.controller.router_reports import MAX_ROUTERS, RouterReports
from serveplane.endpoint_state import EndpointRecord, EndpointState
from serveplane.rollout import (
    FINAL,
    Progress,
    Rollout,
    RolloutState,
    ShadowWindow,
    Verdict,
    Window,
    evaluate,
    evaluate_shadow,
    progress_deadline,
)

logger = logging.getLogger(__name__)


@dataclass
class _StepWindow:
    opened_at: float                                        # wall clock
    baselines: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # router id -> its stats then
    last: dict[str, Mapping[str, Any]] = field(default_factory=dict)       # router id -> its latest
    restarted: bool = False                                 # opened by a controller restart
    truncated: bool = False                                 # routers were forgotten past MAX_ROUTERS


_EMPTY: dict[str, Any] = {"backends": {}, "shadows": {}}


def _window_of(current: Mapping[str, Any], base: Mapping[str, Any] | None) -> Window:
    """One backend's figures in one router since ``base`` (its figures at the window start)."""
    window = Window.from_report(current)
    if base is None:
        return window
    before = Window.from_report(base)
    if window.went_back(before):  # the router restarted under the same id
        return window
    return window.minus(before)


class RolloutDriver:
    def __init__(self, endpoints: EndpointState, persistence: Persistence, lock: asyncio.Lock,
                 reports: RouterReports, publish_endpoint: Callable[[str], None],
                 clock: Clock = SYSTEM_CLOCK,
                 on_rollback: Callable[[Rollout], None] | None = None,
                 canary_unready: Callable[[str], str | None] = lambda backend: None,
                 canary_failed: Callable[[str], str | None] = lambda backend: None) -> None:
        self._endpoints = endpoints
        self._persistence = persistence
        self._lock = lock
        self._reports = reports
        self._publish_endpoint = publish_endpoint
        self._wall = clock.time
        self._on_rollback = on_rollback
        self._canary_unready = canary_unready  # why a backend cannot serve now, or None
        self._canary_failed = canary_failed    # why its version gave up starting, or None
        self._windows: dict[str, _StepWindow] = {}
        self._active: set[str] = set()  # endpoints whose rollout is shadowing or running
        self.verdicts: dict[str, Verdict] = {}
        self._finished: dict[str, asyncio.Event] = {}

    # -- windows -------------------------------------------------------------------------
    def recovered(self) -> None:
        """After a controller restart: every active rollout's window opens afresh."""
        for name, record in self._endpoints.records().items():
            if record.rollout is not None and record.rollout.active:
                self._windows[name] = _StepWindow(self._wall(), restarted=True)
                self._active.add(name)

    def open_window(self, name: str) -> None:
        # what each router had counted when the window opens: its latest fresh report, or
        # for one silent now, the last figures the previous step saw from it
        before = self._windows.get(name)
        baselines = dict(before.last) if before is not None else {}
        baselines.update((rid, stats) for rid, stats in self._reports.statistics_of()
                         if stats.get("endpoint") == name)
        self._windows[name] = _StepWindow(self._wall(), baselines)

    def readings(self, rollout: Rollout) -> tuple[Window, Window, ShadowWindow]:
        """The canary's and the baseline's figures in the current step's window."""
        window = self._windows.setdefault(rollout.endpoint, _StepWindow(self._wall()))
        canary, baseline, shadow = Window(), Window(), ShadowWindow()
        baseline_backends = {b for b in rollout.source if b != rollout.backend}
        for rid, stats in self._reports.statistics_of():
            if stats.get("endpoint") != rollout.endpoint:
                continue
            if rid not in window.baselines:  # first heard of in this window
                # born after the window opened: all its figures are in it; else count from now
                born_after = stats.get("started_at", 0.0) >= window.opened_at and not window.truncated
                window.baselines[rid] = _EMPTY if born_after else stats
            window.last.pop(rid, None)
            window.last[rid] = stats  # latest last: the longest silent come first
        while len(window.last) > MAX_ROUTERS:  # bounded: forget the longest silent
            rid = next(iter(window.last))
            del window.last[rid]
            window.baselines.pop(rid, None)
            window.truncated = True
        # a router gone silent (idle, or it died) keeps what it counted in this step
        for rid, stats in window.last.items():
            base = window.baselines.get(rid, _EMPTY)
            backends, base_backends = stats.get("backends", {}), base.get("backends", {})
            if rollout.backend in backends:
                canary.add(_window_of(backends[rollout.backend], base_backends.get(rollout.backend)))
            for b in baseline_backends & set(backends):
                baseline.add(_window_of(backends[b], base_backends.get(b)))
            sh, base_sh = stats.get("shadows", {}).get(rollout.backend), base.get("shadows", {}).get(rollout.backend)
            if sh is not None:
                shadow.compared += sh["compared"] - (base_sh["compared"] if base_sh else 0)
                shadow.agreed += sh["agreed"] - (base_sh["agreed"] if base_sh else 0)
                shadow.errors += sh["errors"] - (base_sh["errors"] if base_sh else 0)
        return canary, baseline, shadow

    def judge(self, rollout: Rollout) -> Verdict:
        window = self._windows.setdefault(rollout.endpoint, _StepWindow(self._wall()))
        started = max(rollout.step_started_at, window.opened_at)
        canary, baseline, shadow = self.readings(rollout)
        elapsed = self._wall() - started
        shadowing = rollout.state is RolloutState.SHADOWING
        interval = rollout.shadow_s if shadowing else rollout.interval_s
        deadline = progress_deadline(rollout.guards, interval)
        progress = Progress(step=rollout.step, elapsed_s=elapsed, deadline_s=deadline,
                            canary_unready=self._canary_unready(rollout.backend) if elapsed >= deadline
                            else None, canary_failed=self._canary_failed(rollout.backend))
        if shadowing:
            verdict = evaluate_shadow(rollout.guards, shadow, elapsed >= interval, progress)
        else:
            verdict = evaluate(rollout.guards, canary, baseline, elapsed >= interval, progress)
        self.verdicts[rollout.endpoint] = verdict
        return verdict

    # -- the tick --------------------------------------------------------------------------
    async def step(self) -> int:
        """Judge every active rollout; persist and apply the ones that move. Returns how many
        moved. A failed write raises, with nothing changed."""
        async with self._lock:
            if self._persistence.stale is not None:
                raise self._persistence.stale
            moved: dict[str, EndpointRecord] = {}
            now = self._wall()
            for name in sorted(self._active):
                record = self._endpoints.get(name) if self._endpoints.exists(name) else None
                rollout = record.rollout if record is not None else None
                if record is None or rollout is None or not rollout.active:
                    self._active.discard(name)
                    continue
                window = self._windows.get(name)
                if window is not None and window.restarted:
                    rollout = rollout.note(now, "controller restarted: the step's window starts again "
                                                "(no figure from before the restart is used)")
                    moved[name] = with_rollout(record, rollout)
                    continue
                judged = rollout.judge(self.judge(rollout), now)
                if judged is not None:
                    moved[name] = with_rollout(record, judged)
            if not moved:
                return 0
            await self._persistence.write(Change(records={
                f"endpoint/{name}": record.model_dump(mode="json") for name, record in moved.items()}))
            for name, record in moved.items():
                self.commit(record)
                self._publish_endpoint(name)
            return len(moved)

    def commit(self, record: EndpointRecord) -> None:
        """``record`` (with its rollout) was persisted: make it current (the caller publishes)."""
        before = self._endpoints.get(record.name).rollout if self._endpoints.exists(record.name) else None
        self._endpoints.put(record)
        rollout = record.rollout
        if rollout is not None and rollout.active:
            self._active.add(record.name)
        else:
            self._active.discard(record.name)
        if rollout is not None:
            window = self._windows.get(record.name)
            if (before is None or before.step != rollout.step or before.state != rollout.state
                    or (window is not None and window.restarted)):
                self.open_window(record.name)
                self.verdicts.pop(record.name, None)  # it judged the last step, not this one
            if rollout.state in FINAL:
                self._windows.pop(record.name, None)
                self._event(record.name).set()
                if rollout.state is RolloutState.ROLLED_BACK and self._on_rollback is not None:
                    self._on_rollback(rollout)
            logger.info("rollout on %s: %s", record.name,
                        rollout.history[-1].decision if rollout.history else rollout.state.value)

    def _event(self, name: str) -> asyncio.Event:
        return self._finished.setdefault(name, asyncio.Event())

    async def wait(self, name: str, timeout_s: float) -> None:
        event = self._event(name)
        record = self._endpoints.get(name)
        if record.rollout is None or record.rollout.state in FINAL:
            return
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass


def with_rollout(record: EndpointRecord, rollout: Rollout) -> EndpointRecord:
    """The endpoint record serving what ``rollout`` says."""
    traffic, shadows = rollout.routing()
    return record.model_copy(update={"rollout": rollout, "traffic": traffic, "shadows": shadows})
