"""Drives progressive rollouts: reads the routers' figures, judges the guards, moves the
rollout and its traffic in one fenced write.

Invariants:
- a rollout is part of its endpoint record: a step and the traffic it sets are one store
  write (decide, persist, commit, publish, as every change); a failed write changes
  nothing and the next tick judges again, so an outage neither advances nor loses it;
- a step is judged only on figures from its own window: each router's counters are
  cumulative, and the window subtracts what each router had reported when the window
  opened (a router first heard of later counts whole if it started after the window
  opened, and from its first report otherwise). After a controller
  restart every window opens afresh, with a history entry that says so: no figure from
  before the restart is ever used, and no step is skipped;
- the operator wins: a manual ``set_traffic`` or ``shadow_traffic`` pauses the rollout (in
  the same write as the operator's traffic), and deleting the canary aborts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from serveplane.controller.persistence import Change, Persistence
from serveplane.endpoint_state import EndpointRecord, EndpointState
from serveplane.rollout import (
    FINAL,
    Rollout,
    RolloutState,
    ShadowWindow,
    Verdict,
    Window,
    evaluate,
    evaluate_shadow,
)

logger = logging.getLogger(__name__)

ROUTER_REPORT_FRESH_S = 10.0


@dataclass
class _StepWindow:
    opened_at: float                                        # wall clock
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # router id -> its stats then
    restarted: bool = False                                 # opened by a controller restart


_EMPTY: dict[str, Any] = {"backends": {}, "shadows": {}}


def _window_of(current: dict[str, Any], base: dict[str, Any] | None) -> Window:
    """One backend's figures in one router since ``base`` (its figures at the window start)."""
    window = Window(current["requests"], current["app_errors"], current["replica_failures"],
                    list(current["latency"]))
    if base is None or base["requests"] > current["requests"]:  # new, or the router restarted
        return window
    window.requests -= base["requests"]
    window.app_errors -= base["app_errors"]
    window.replica_failures -= base["replica_failures"]
    window.latency = [c - b for c, b in zip(window.latency, base["latency"])]
    return window


class RolloutDriver:
    def __init__(self, endpoints: EndpointState, persistence: Persistence, lock: asyncio.Lock,
                 router_stats: dict[str, tuple[float, dict[str, Any]]],
                 publish_endpoint: Callable[[str], None],
                 wall_clock: Callable[[], float] = time.time,
                 on_rollback: Callable[[Rollout], None] | None = None) -> None:
        self._endpoints = endpoints
        self._persistence = persistence
        self._lock = lock
        self._router_stats = router_stats
        self._publish_endpoint = publish_endpoint
        self._wall = wall_clock
        self._on_rollback = on_rollback
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
        now = time.monotonic()
        self._windows[name] = _StepWindow(self._wall(), {
            rid: stats for rid, (at, stats) in self._router_stats.items() if now - at <= ROUTER_REPORT_FRESH_S})

    def readings(self, rollout: Rollout) -> tuple[Window, Window, ShadowWindow]:
        """The canary's and the baseline's figures in the current step's window."""
        window = self._windows.setdefault(rollout.endpoint, _StepWindow(self._wall()))
        canary, baseline, shadow = Window(), Window(), ShadowWindow()
        fresh_since = time.monotonic() - ROUTER_REPORT_FRESH_S
        baseline_backends = {b for b in rollout.source if b != rollout.backend}
        for rid, (at, stats) in list(self._router_stats.items()):
            if at < fresh_since or stats.get("endpoint") != rollout.endpoint:
                continue
            base = window.baselines.get(rid)
            if base is None:  # first heard of in this window
                # born after the window opened: all its figures are in it; else count from now
                base = window.baselines[rid] = (_EMPTY if stats.get("started_at", 0.0) >= window.opened_at
                                                else stats)
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
        if rollout.state is RolloutState.SHADOWING:
            verdict = evaluate_shadow(rollout.guards, shadow, self._wall() - started >= rollout.shadow_s)
        else:
            verdict = evaluate(rollout.guards, canary, baseline, self._wall() - started >= rollout.interval_s)
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
