"""Progressive rollouts, as pure code: guards (readings in, a verdict out), latency
histograms, and the rollout state machine. The controller persists and drives them
(``serveplane/controller/rollouts.py``)."""

from serveplane.rollout.guards import Guards, ShadowWindow, Verdict, Window, evaluate, evaluate_shadow, wilson
from serveplane.rollout.state import ACTIVE, FINAL, Rollout, RolloutState, split, validate_rollout

__all__ = ["ACTIVE", "FINAL", "Guards", "Rollout", "RolloutState", "ShadowWindow", "Verdict", "Window",
           "evaluate", "evaluate_shadow", "split", "validate_rollout", "wilson"]
