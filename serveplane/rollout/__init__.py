"""Progressive rollouts, as pure code: guards (readings in, a verdict out), latency
histograms, and the rollout state machine. The controller persists and drives them
(``serveplane/controller/rollouts.py``)."""

from serveplane.rollout.guards import (
    Guards,
    Progress,
    ShadowWindow,
    Verdict,
    Window,
    evaluate,
    evaluate_shadow,
    progress_deadline,
    wilson,
)
from serveplane.rollout.state import ACTIVE, FINAL, Rollout, RolloutState, split, validate_rollout

__all__ = ["ACTIVE", "FINAL", "Guards", "Progress", "Rollout", "RolloutState", "ShadowWindow", "Verdict", "Window",
           "evaluate", "evaluate_shadow", "progress_deadline", "split", "validate_rollout", "wilson"]
