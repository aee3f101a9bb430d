"""What a replica has in flight, and when its drain may end.

In flight: admitted slots (calls, stream calls, batch items), handed-off ``StreamingResponse``
bodies not yet pulled to their end (or expired), and worker-pool calls still running (the
thread of a sync call whose caller cancelled runs on until user code returns).

A drain ends when nothing is in flight **and** no caller has arrived, admitted or refused,
for ``quiet_s``. Routers learn that a replica left by long poll, a little later than the
controller decided it; until then they still send to it (each refused as draining, then
routed elsewhere). A request on its way to a killed replica fails with ``ReplicaDiedError``,
and with ``idempotent=False`` it cannot be retried: so the replica is killed only once the
callers stopped coming. ``quiet_s`` is longer than a router's back-off after a refusal
(0.25 s at most), so a router that still retries this replica keeps the drain open.

The decision (``drain_wait_s``) is pure over the injected clock; ``wait_drained`` is the
loop around it.
"""

from __future__ import annotations

import asyncio
import math

from serveplane.clock import SYSTEM_CLOCK, Clock

DRAIN_QUIET_S = 1.0


class InFlight:
    __slots__ = ("admitted", "bodies", "pool", "draining", "_clock", "_quiet_s",
                 "_last_arrival", "_drain_started", "_changed")

    def __init__(self, clock: Clock = SYSTEM_CLOCK, quiet_s: float = DRAIN_QUIET_S) -> None:
        self.admitted = 0   # slots taken, by every router together (admission)
        self.bodies = 0     # handed-off bodies kept or being pulled
        self.pool = 0       # worker-pool calls submitted and not yet finished
        self.draining = False
        self._clock = clock
        self._quiet_s = quiet_s
        self._last_arrival = -math.inf
        self._drain_started = -math.inf
        self._changed: asyncio.Event | None = None

    def busy(self) -> int:
        """Everything the drain waits for."""
        return self.admitted + self.bodies + self.pool

    # -- changes (each wakes a waiting drain) -------------------------------------------
    def arrived(self) -> None:
        """A caller reached the replica (admitted or refused)."""
        self._last_arrival = self._clock.monotonic()
        self._poke()

    def take(self, n: int = 1) -> None:
        self.admitted += n

    def leave(self, n: int = 1) -> None:
        self.admitted -= n
        self._poke()

    def body_kept(self) -> None:
        self.bodies += 1

    def body_ended(self) -> None:
        self.bodies -= 1
        self._poke()

    def pool_started(self) -> None:
        self.pool += 1

    def pool_done(self) -> None:
        self.pool -= 1
        self._poke()

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self._drain_started = self._clock.monotonic()

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # -- decision ------------------------------------------------------------------------
    def drain_wait_s(self, now: float) -> float | None:
        """``None``: drained. Otherwise how long until it may be (``inf``: until something
        in flight ends)."""
        if self.busy():
            return math.inf
        quiet_since = max(self._last_arrival, self._drain_started)
        left = quiet_since + self._quiet_s - now
        return None if left <= 0 else left

    async def wait_drained(self, timeout_s: float) -> int:
        """Begin draining and wait until drained or ``timeout_s`` passed; returns what was
        still in flight (0 when drained)."""
        self.begin_drain()
        deadline = self._clock.monotonic() + timeout_s
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed
        while True:
            now = self._clock.monotonic()
            wait = self.drain_wait_s(now)
            if wait is None or now >= deadline:
                return self.busy()
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(wait, deadline - now))
            except asyncio.TimeoutError:
                pass
