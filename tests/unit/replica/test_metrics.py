"""Replica metrics keep meaningful figures in bounded memory (no Ray)."""

from __future__ import annotations

import tracemalloc

from serveplane.replica.metrics import MAX_SESSIONS, ReplicaMetrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def serve(metrics: ReplicaMetrics, session_id: str | None, latency_s: float = 0.01, ok: bool = True) -> None:
    metrics.begin()
    metrics.end(ok, latency_s, session_id)


def grown_bytes(warm_up, work) -> int:
    """Bytes still held after ``work`` beyond what ``warm_up`` left (both traced)."""
    tracemalloc.start()
    try:
        warm_up()
        before = tracemalloc.take_snapshot()
        work()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # only what the metrics and this test allocated (the session ids): other threads of the
    # test process allocate meanwhile
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")
               if stat.traceback[0].filename.endswith(("replica/metrics.py", "test_metrics.py")))


def test_memory_stays_bounded_after_100k_sessions_and_requests():
    metrics = ReplicaMetrics()

    def fill_to_the_cap():  # what follows must not grow
        for i in range(MAX_SESSIONS):
            serve(metrics, f"warm-{i:032d}")

    def many():
        for i in range(100_000):
            serve(metrics, f"sess-{i:032d}")

    # the table of 10,000 sessions may be resized meanwhile (a few hundred KiB); keeping
    # the 100,000 new ones would take over 10 MiB
    assert grown_bytes(fill_to_the_cap, many) < 1024 * 1024
    snapshot = metrics.snapshot()
    assert snapshot["total_requests"] == MAX_SESSIONS + 100_000
    assert snapshot["assigned_sessions"] == MAX_SESSIONS  # the most recently seen ones
    assert metrics.footprint()["buckets"] <= 11


def test_sessions_are_those_seen_within_the_window_most_recent_kept_first():
    clock = FakeClock()
    metrics = ReplicaMetrics(session_window_s=60.0, max_sessions=3, clock=clock)
    for session in ("a", "b", "a"):
        serve(metrics, session)
    assert metrics.snapshot()["assigned_sessions"] == 2  # distinct sessions
    clock.now += 30
    serve(metrics, "c")
    serve(metrics, "d")   # over the cap of 3: the least recently seen ("b") goes
    serve(metrics, "b")   # ... and comes back as new; now "a" (seen longest ago) went
    assert metrics.snapshot()["assigned_sessions"] == 3
    clock.now += 45       # "a" would be 75 s old; c, d, b are 45 s old
    serve(metrics, None)
    assert metrics.snapshot()["assigned_sessions"] == 3
    clock.now += 20       # all three are now older than 60 s
    assert metrics.snapshot()["assigned_sessions"] == 0


def test_rate_and_latency_cover_the_last_window():
    clock = FakeClock()
    metrics = ReplicaMetrics(window_s=10.0, clock=clock)
    for _ in range(20):
        serve(metrics, None, latency_s=0.1)
    serve(metrics, None, latency_s=0.4, ok=False)
    snapshot = metrics.snapshot()
    assert snapshot["request_rate"] == 2.1
    assert abs(snapshot["avg_latency_s"] - 2.4 / 21) < 1e-9
    assert (snapshot["successful_requests"], snapshot["failed_requests"]) == (20, 1)
    clock.now += 11
    snapshot = metrics.snapshot()
    assert (snapshot["request_rate"], snapshot["avg_latency_s"], snapshot["total_requests"]) == (0.0, 0.0, 21)
