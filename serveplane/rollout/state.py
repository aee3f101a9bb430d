"""The rollout state machine: one frozen record, pure transitions.

A rollout moves an endpoint from its *source* traffic to a canary backend step by step.
Its record lives inside the endpoint record, so a rollout step and the traffic it sets are
one atomic store write, fenced like every other (see controller/rollouts.py).

States: ``shadowing`` (the canary gets copies, answers compared) → ``running`` (step ``i``
gives the canary ``steps[i]`` of live traffic) → ``succeeded`` (the canary has it all);
``paused`` from either active state (an operator's pause, or their manual traffic change);
``rolled_back`` (a guard breached) and ``aborted`` (an operator, or the canary's deletion)
restore the source traffic exactly. Transitions are the only writers of the record, and each
appends to ``history``.
"""

from __future__ import annotations

import enum
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from serveplane.exceptions import InvalidConfigError
from serveplane.rollout.guards import Guards, Verdict, progress_deadline

MAX_HISTORY = 200


class RolloutState(str, enum.Enum):
    SHADOWING = "shadowing"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


ACTIVE = (RolloutState.SHADOWING, RolloutState.RUNNING)
FINAL = (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK, RolloutState.ABORTED)


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float
    step: int
    weight: float
    readings: dict[str, Any]
    decision: str


class Rollout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str
    backend: str
    source: dict[str, float]
    source_shadows: dict[str, float]
    steps: tuple[float, ...]
    interval_s: float
    guards: Guards
    shadow_s: float = 0.0
    shadow_proportion: float = 1.0
    state: RolloutState
    step: int = -1                      # -1: the shadow phase (or not started)
    reason: str = ""
    history: tuple[HistoryEntry, ...] = ()
    step_started_at: float = 0.0        # wall clock
    resume_to: RolloutState | None = None
    operator_override: bool = False     # paused, and the operator set the traffic by hand

    @property
    def weight(self) -> float:
        if self.state is RolloutState.SUCCEEDED:
            return 1.0
        if self.state in (RolloutState.ROLLED_BACK, RolloutState.ABORTED) or self.step < 0:
            return 0.0
        return self.steps[self.step]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def public(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "backend": self.backend, "source": dict(self.source),
                "state": self.state.value, "step": self.step, "weight": self.weight,
                "steps": list(self.steps), "interval_s": self.interval_s,
                "guards": self.guards.model_dump(exclude_none=True), "shadow_s": self.shadow_s,
                "progress_deadline_s": progress_deadline(  # the one in force for this phase
                    self.guards, self.shadow_s if self.step < 0 else self.interval_s),
                "reason": self.reason, "history": [h.model_dump() for h in self.history]}

    # -- what the endpoint serves ------------------------------------------------------------
    def routing(self) -> tuple[dict[str, float], dict[str, float]]:
        """The endpoint's traffic and shadows in this state."""
        others = {b: s for b, s in self.source_shadows.items() if b != self.backend}
        if self.state in (RolloutState.ROLLED_BACK, RolloutState.ABORTED):
            return dict(self.source), dict(self.source_shadows)
        if self.state is RolloutState.SUCCEEDED:
            return {self.backend: 1.0}, others
        paused_in_shadow = self.state is RolloutState.PAUSED and self.resume_to is RolloutState.SHADOWING
        if self.state is RolloutState.SHADOWING or paused_in_shadow:
            return dict(self.source), {**others, self.backend: self.shadow_proportion}
        return split(self.source, self.backend, self.weight), others

    # -- transitions -------------------------------------------------------------------------
    def _entry(self, now: float, decision: str, readings: dict[str, Any] | None = None) -> tuple[HistoryEntry, ...]:
        entry = HistoryEntry(at=now, step=self.step, weight=self.weight, readings=readings or {},
                             decision=decision)
        return (self.history + (entry,))[-MAX_HISTORY:]

    def _to(self, now: float, decision: str, readings: dict[str, Any] | None = None,
            **changes: Any) -> Rollout:
        moved = self.model_copy(update=changes)
        return moved.model_copy(update={"history": moved._entry(now, decision, readings)})

    def judge(self, verdict: Verdict, now: float) -> Rollout | None:
        """The record after ``verdict`` on an active rollout, or None when it stays as is."""
        if not self.active or verdict.kind == "wait":
            return None
        if verdict.kind == "breach":
            return self._to(now, f"rolled back: {verdict.reason}", verdict.readings,
                            state=RolloutState.ROLLED_BACK, reason=verdict.reason)
        if self.state is RolloutState.SHADOWING:
            return self._to(now, f"advanced to step 0 (weight {self.steps[0]:g}): {verdict.reason}",
                            verdict.readings, state=RolloutState.RUNNING, step=0, step_started_at=now,
                            reason="")
        if self.step + 1 >= len(self.steps):
            return self._to(now, "succeeded: the canary serves all traffic", verdict.readings,
                            state=RolloutState.SUCCEEDED, reason="every step passed its guards")
        nxt = self.step + 1
        return self._to(now, f"advanced to step {nxt} (weight {self.steps[nxt]:g}): {verdict.reason}",
                        verdict.readings, step=nxt, step_started_at=now, reason="")

    def pause(self, now: float, why: str) -> Rollout:
        if not self.active:
            raise InvalidConfigError(f"the rollout on endpoint {self.endpoint!r} is {self.state.value}; "
                                     "only a shadowing or running rollout can be paused")
        return self._to(now, f"paused: {why}", state=RolloutState.PAUSED, resume_to=self.state,
                        reason=why)

    def overridden(self, now: float, why: str) -> Rollout:
        """The operator changed the endpoint's traffic by hand: an active rollout pauses, and
        from now on their traffic stands until they resume or abort the rollout."""
        if self.active:
            paused = self.pause(now, why)
        elif self.state is RolloutState.PAUSED and not self.operator_override:
            paused = self._to(now, f"traffic changed by hand while paused: {why}", reason=why)
        else:
            return self
        return paused.model_copy(update={"operator_override": True})

    def resume(self, now: float) -> Rollout:
        if self.state is not RolloutState.PAUSED or self.resume_to is None:
            raise InvalidConfigError(f"the rollout on endpoint {self.endpoint!r} is {self.state.value}; "
                                     "only a paused rollout can be resumed")
        return self._to(now, "resumed: the step's window starts again", state=self.resume_to,
                        resume_to=None, step_started_at=now, reason="", operator_override=False)

    def abort(self, now: float, why: str) -> Rollout:
        if self.state in FINAL:
            raise InvalidConfigError(f"the rollout on endpoint {self.endpoint!r} already ended "
                                     f"({self.state.value}); nothing to abort")
        return self._to(now, f"aborted: {why}; the source traffic is restored",
                        state=RolloutState.ABORTED, resume_to=None, reason=why, operator_override=False)

    def note(self, now: float, decision: str) -> Rollout:
        """A history entry that changes nothing else (e.g. a controller restart)."""
        return self._to(now, decision)


def split(source: dict[str, float], canary: str, weight: float) -> dict[str, float]:
    """The canary gets ``weight``; the other source backends share the rest in proportion."""
    others = {b: w for b, w in source.items() if b != canary and w > 0}
    total = sum(others.values())
    if weight >= 1.0 or total <= 0:
        return {canary: 1.0}
    traffic = {b: w / total * (1.0 - weight) for b, w in others.items()}
    traffic[canary] = weight
    return traffic


def _problem(error: Any) -> str:
    """One pydantic error as 'field: rule' (a message that names its field stands alone)."""
    name, msg = ".".join(map(str, error["loc"])), str(error["msg"]).removeprefix("Value error, ")
    return msg if msg.startswith(name) else f"{name}: {msg}"


def validate_rollout(endpoint: str, backend: str, source: dict[str, float], steps: Any,
                     interval_s: Any, guards: Any, shadow_s: Any, shadow_proportion: Any) -> tuple[
                         tuple[float, ...], float, Guards, float, float]:
    """Every argument of ``start_rollout``, checked before anything changes."""
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        raise InvalidConfigError(f"steps {steps!r} is not a list; give increasing weights in (0, 1], "
                                 "e.g. [0.05, 0.25, 1.0]")
    out: list[float] = []
    for weight in steps:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or not 0 < weight <= 1:
            raise InvalidConfigError(f"rollout step {weight!r} for endpoint {endpoint!r} is invalid; "
                                     "every step is a weight in (0, 1]")
        if out and weight <= out[-1]:
            raise InvalidConfigError(f"rollout steps {list(steps)!r} for endpoint {endpoint!r} are not "
                                     "increasing; each step must give the canary more traffic")
        out.append(float(weight))
    if not out:
        raise InvalidConfigError(f"rollout steps for endpoint {endpoint!r} are empty; give at least one")
    if source.get(backend, 0.0) >= 1.0:
        raise InvalidConfigError(f"backend {backend!r} already serves all of endpoint {endpoint!r}; "
                                 "there is nothing to roll out")
    for name, value, low in (("interval_s", interval_s, 0.0), ("shadow_s", shadow_s, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low:
            raise InvalidConfigError(f"{name} is {value!r}; it must be a number of seconds >= 0")
    if isinstance(shadow_proportion, bool) or not isinstance(shadow_proportion, (int, float)) \
            or not 0 < shadow_proportion <= 1:
        raise InvalidConfigError(f"shadow_proportion is {shadow_proportion!r}; it must lie in (0, 1]")
    if guards is None:
        guards = {}
    if isinstance(guards, Guards):
        parsed = guards
    elif isinstance(guards, dict):
        unknown = sorted(set(guards) - set(Guards.model_fields))
        if unknown:
            raise InvalidConfigError(f"unknown rollout guard(s) {', '.join(map(repr, unknown))}; "
                                     f"use {', '.join(sorted(Guards.model_fields))}")
        try:
            parsed = Guards(**guards)
        except ValidationError as exc:
            problems = "; ".join(_problem(e) for e in exc.errors())
            raise InvalidConfigError(f"rollout guards {guards!r} are invalid: {problems}") from None
    else:
        raise InvalidConfigError(f"guards is {guards!r}; give a dict such as "
                                 "{'max_error_rate': 0.01, 'min_requests': 200}")
    return tuple(out), float(interval_s), parsed, float(shadow_s), float(shadow_proportion)
