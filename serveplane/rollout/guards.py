"""Guards: what a canary must show before it may take more traffic, and what rolls it back.

Pure: readings in, a verdict out. The rules:

- **advance** only when the step's ``interval_s`` has passed, at least ``min_requests``
  reached the canary in the step, and every guard holds on the step's own figures;
- **breach** (roll back at once, mid-step) only when the figures say so with confidence,
  never on a handful of samples: at least ``min(min_requests, 10)`` samples, and 99 %
  Wilson intervals (the guards are looked at after every report, so each look must be
  strict for the whole step to rarely roll back a good canary):
  - error rate: the lower end of the interval of failed/total exceeds ``max_error_rate``
    (so 1 failure in 20 requests does not roll back a 1 % guard, while 20 in 64 rolls back a
    5 % one);
  - latency: the canary's p99 is above ``max_latency_ratio`` times the baseline's p99 with
    confidence: the lower end of the Wilson interval of the share of canary requests slower
    than that limit exceeds 1 % (one cold first call among 30 requests is not a slow
    canary; most requests 3x slower are), with at least ``min(min_requests, 50)`` samples
    on each side. A baseline p99 under ``latency_floor_s`` (5 ms) counts as that floor, so the
    jitter of a sub-millisecond model never rolls back a canary just as fast;
  - shadow agreement (shadow phase only): the upper end of the Wilson interval of
    agreed/compared is below ``min_shadow_agreement``;
  - progress: the step (or the shadow phase) has run ``progress_deadline_s`` and still has
    fewer than ``min_requests`` answers; the reason says whether the canary never became
    ready, or where its other requests went;
  - start-up: the canary's version gave up starting (its backend's start failures) and no
    replica of it serves: at once, whatever the figures;
- otherwise **wait**, saying why (too few requests, interval not over).

What counts: ``requests`` are the canary's answers (and replica failures), the only
requests that count towards ``min_requests``. Requests that never answered count as
failures of the canary in its error rate, each kind named in the reason: ``timed_out``
(deadline passed while running), ``expired`` (queued past its deadline, never ran) and
``refused`` (back-pressure). ``cancelled`` (the caller gave up) is counted and shown, but is
neither a failure nor an answer. A router that does not report a counter reports 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serveplane.rollout.histogram import BOUNDS, N_BUCKETS, quantile

Z = 2.576  # 99 %
LATENCY_MIN_SAMPLES = 50
BREACH_MIN_SAMPLES = 10
DEFAULT_PROGRESS_DEADLINE_S = 600.0


class Guards(BaseModel):
    """The guard names of ``start_rollout(guards=...)``; any other name is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_latency_ratio: float | None = Field(None, gt=0)
    min_shadow_agreement: float | None = Field(None, ge=0, le=1)
    min_requests: int = Field(100, ge=1)
    latency_floor_s: float = Field(0.005, ge=0)
    # how long a step may run without min_requests answers; None: the larger of
    # DEFAULT_PROGRESS_DEADLINE_S and twice the step's interval (see progress_deadline)
    progress_deadline_s: float | None = None

    @field_validator("progress_deadline_s", mode="before")
    @classmethod
    def _check_progress_deadline(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"progress_deadline_s is {value!r}; it must be a finite number of seconds "
                             "> 0 (how long a step may run before min_requests answers reach the "
                             "canary), or left out for the default")
        return value


def progress_deadline(guards: Guards, interval_s: float) -> float:
    """How long a step whose interval is ``interval_s`` may wait for ``min_requests``."""
    if guards.progress_deadline_s is not None:
        return guards.progress_deadline_s
    return max(DEFAULT_PROGRESS_DEADLINE_S, 2.0 * interval_s)


def wilson(successes: int, total: int) -> tuple[float, float]:
    """The 99 % Wilson score interval of a proportion (0, 1 with no samples)."""
    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + Z * Z / total
    centre = (p + Z * Z / (2 * total)) / denominator
    half = Z * math.sqrt(p * (1 - p) / total + Z * Z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


COUNTERS = ("requests", "app_errors", "replica_failures", "timed_out", "cancelled", "expired", "refused")


@dataclass
class Window:
    """What the routers saw for one backend (or a group) during one step."""

    requests: int = 0          # answered, plus replica failures
    app_errors: int = 0
    replica_failures: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    timed_out: int = 0         # deadline passed while running
    cancelled: int = 0         # the caller cancelled or disconnected: not a failure
    expired: int = 0           # queued past its deadline, never ran
    refused: int = 0           # back-pressure (max_queued_requests)

    @classmethod
    def from_report(cls, outcome: Mapping[str, Any]) -> Window:
        """One backend's entry of a router's ``outcomes`` (a missing counter is 0: older routers)."""
        latency = list(outcome.get("latency") or [0] * N_BUCKETS)
        return cls(latency=latency, **{k: int(outcome.get(k, 0) or 0) for k in COUNTERS})

    @property
    def unanswered_failures(self) -> int:
        return self.timed_out + self.expired + self.refused

    @property
    def failures(self) -> int:
        return self.app_errors + self.replica_failures + self.unanswered_failures

    @property
    def judged(self) -> int:
        """Requests whose outcome judges the canary: answers and failures, not cancels."""
        return self.requests + self.unanswered_failures

    def add(self, other: Window) -> None:
        for key in COUNTERS:
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for i, n in enumerate(other.latency):
            self.latency[i] += n

    def minus(self, before: Window) -> Window:
        """The figures since ``before`` (an earlier report of the same router)."""
        return Window(latency=[c - b for c, b in zip(self.latency, before.latency)],
                      **{k: getattr(self, k) - getattr(before, k) for k in COUNTERS})

    def went_back(self, before: Window) -> bool:
        """Whether a counter is lower than ``before``'s: a new router under an old id."""
        return any(getattr(self, k) < getattr(before, k) for k in COUNTERS)

    def unanswered(self) -> str:
        """Where the requests that did not answer went, e.g. '57 timed out, 2 cancelled'."""
        parts = [f"{n} {what}" for n, what in ((self.timed_out, "timed out"),
                                               (self.expired, "expired before they ran"),
                                               (self.refused, "refused by back-pressure"),
                                               (self.cancelled, "cancelled by their callers")) if n]
        return ", ".join(parts)


@dataclass(frozen=True)
class Progress:
    """How far into its progress deadline a step is (for the progress guard)."""

    step: int                     # -1: the shadow phase
    elapsed_s: float
    deadline_s: float
    canary_unready: str | None = None   # why the canary cannot serve now, or None
    canary_failed: str | None = None    # why the canary's version cannot start (it gave up), or None

    @property
    def over(self) -> bool:
        return self.elapsed_s >= self.deadline_s

    @property
    def subject(self) -> str:
        return "the shadow phase" if self.step < 0 else f"step {self.step}"

    def late(self) -> str:
        return f"in {self.elapsed_s:.0f} s (progress_deadline_s {_fmt(self.deadline_s)})"


@dataclass
class ShadowWindow:
    compared: int = 0
    agreed: int = 0
    errors: int = 0


@dataclass(frozen=True)
class Verdict:
    kind: Literal["advance", "wait", "breach"]
    reason: str
    readings: dict[str, Any]


def _slower_share_low(latency: list[int], limit_s: float) -> float:
    """Lower end of the Wilson interval of the share of samples certainly slower than
    ``limit_s`` (only buckets whose lower bound is at least the limit count)."""
    total = sum(latency)
    slower = sum(n for i, n in enumerate(latency) if i > 0 and BOUNDS[i - 1] >= limit_s)
    return wilson(slower, total)[0]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _cannot_start(progress: Progress | None) -> str | None:
    """A canary whose version failed to start, with no replica serving: no figure can save it."""
    if progress is None or progress.canary_failed is None:
        return None
    return f"{progress.subject}: the canary cannot start: {progress.canary_failed}"


def _stalled(progress: Progress | None, reached: str, extra: str) -> str | None:
    """The progress breach's reason, or None while the deadline has not passed."""
    if progress is None or not progress.over:
        return None
    if progress.canary_unready is not None:
        return f"{progress.subject}: the canary never became ready {progress.late()}: {progress.canary_unready}"
    return f"{progress.subject} {reached} {progress.late()}; " + (extra or "no other request reached the canary")


def evaluate(guards: Guards, canary: Window, baseline: Window, interval_over: bool,
             progress: Progress | None = None) -> Verdict:
    """The verdict on a live step (the canary takes a share of real traffic)."""
    readings: dict[str, Any] = {"canary_requests": canary.requests,
                                "canary_failures": canary.failures,
                                "canary_app_errors": canary.app_errors,
                                "canary_replica_failures": canary.replica_failures,
                                "canary_timed_out": canary.timed_out,
                                "canary_expired": canary.expired,
                                "canary_refused": canary.refused,
                                "canary_cancelled": canary.cancelled,
                                "baseline_requests": baseline.requests}
    judged = canary.judged
    error_rate = canary.failures / judged if judged else None
    readings["error_rate"] = error_rate
    failed = _cannot_start(progress)
    if failed is not None:
        return Verdict("breach", failed, readings)
    enough = judged >= min(guards.min_requests, BREACH_MIN_SAMPLES)
    if guards.max_error_rate is not None and error_rate is not None and enough:
        low, _ = wilson(canary.failures, judged)
        if low > guards.max_error_rate:
            how = canary.unanswered()
            return Verdict("breach", f"canary error rate {_fmt(error_rate)} > max_error_rate "
                           f"{_fmt(guards.max_error_rate)} over {judged} requests"
                           + (f" ({how})" if how else ""), readings)
    canary_p99, baseline_p99 = quantile(canary.latency, 0.99), quantile(baseline.latency, 0.99)
    readings["canary_p99_s"], readings["baseline_p99_s"] = canary_p99, baseline_p99
    ratio = (canary_p99 / max(baseline_p99, guards.latency_floor_s, 1e-9)
             if canary_p99 is not None and baseline_p99 is not None else None)
    readings["latency_ratio"] = ratio
    enough_latency = min(guards.min_requests, LATENCY_MIN_SAMPLES)
    latency_known = (ratio is not None and sum(canary.latency) >= enough_latency
                     and sum(baseline.latency) >= enough_latency)
    if guards.max_latency_ratio is not None and latency_known and ratio is not None \
            and ratio > guards.max_latency_ratio and baseline_p99 is not None \
            and _slower_share_low(canary.latency, guards.max_latency_ratio
                                  * max(baseline_p99, guards.latency_floor_s)) > 0.01:
        return Verdict("breach", f"canary p99 latency {_fmt(ratio)}x the baseline's > max_latency_ratio "
                       f"{_fmt(guards.max_latency_ratio)} ({_fmt(canary_p99 or 0)}s vs "
                       f"{_fmt(baseline_p99 or 0)}s)", readings)
    if canary.requests < guards.min_requests:
        stalled = _stalled(progress, f"reached {canary.requests} of min_requests {guards.min_requests}",
                           canary.unanswered())
        if stalled is not None:
            return Verdict("breach", stalled, readings)
        return Verdict("wait", f"{canary.requests} of min_requests {guards.min_requests} requests "
                       "reached the canary in this step", readings)
    if guards.max_error_rate is not None and error_rate is not None and error_rate > guards.max_error_rate:
        return Verdict("wait", f"canary error rate {_fmt(error_rate)} is above max_error_rate "
                       f"{_fmt(guards.max_error_rate)}; not advancing", readings)
    if guards.max_latency_ratio is not None and ratio is not None and ratio > guards.max_latency_ratio:
        return Verdict("wait", f"canary latency ratio {_fmt(ratio)} is above max_latency_ratio "
                       f"{_fmt(guards.max_latency_ratio)}; not advancing", readings)
    if not interval_over:
        return Verdict("wait", "guards hold; the step's interval_s has not passed", readings)
    return Verdict("advance", "every guard holds", readings)


def evaluate_shadow(guards: Guards, shadow: ShadowWindow, interval_over: bool,
                    progress: Progress | None = None) -> Verdict:
    """The verdict on the shadow phase (the canary sees copies, answers are compared)."""
    agreement = shadow.agreed / shadow.compared if shadow.compared else None
    readings: dict[str, Any] = {"shadow_compared": shadow.compared, "shadow_agreed": shadow.agreed,
                                "shadow_errors": shadow.errors, "shadow_agreement": agreement}
    limit = guards.min_shadow_agreement
    failed = _cannot_start(progress)
    if failed is not None:
        return Verdict("breach", failed, readings)
    if limit is not None and agreement is not None and \
            shadow.compared >= min(guards.min_requests, BREACH_MIN_SAMPLES):
        _, high = wilson(shadow.agreed, shadow.compared)
        if high < limit:
            return Verdict("breach", f"shadow agreement {_fmt(agreement)} < min_shadow_agreement "
                           f"{_fmt(limit)} over {shadow.compared} compared answers", readings)
    if shadow.compared < guards.min_requests:
        stalled = _stalled(progress, f"compared {shadow.compared} of min_requests {guards.min_requests} answers",
                           f"{shadow.errors} shadow requests failed" if shadow.errors else "")
        if stalled is not None:
            return Verdict("breach", stalled, readings)
        return Verdict("wait", f"{shadow.compared} of min_requests {guards.min_requests} shadow "
                       "answers compared", readings)
    if limit is not None and agreement is not None and agreement < limit:
        return Verdict("wait", f"shadow agreement {_fmt(agreement)} is below min_shadow_agreement "
                       f"{_fmt(limit)}; not advancing", readings)
    if not interval_over:
        return Verdict("wait", "guards hold; shadow_s has not passed", readings)
    return Verdict("advance", "the shadow phase passed", readings)
