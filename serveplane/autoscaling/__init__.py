"""Pure autoscaling policy: metrics in, desired replica count out."""

from serveplane.autoscaling.policy import AutoscalingPolicy, ScalingDecision, ScalingMetrics

__all__ = ["AutoscalingPolicy", "ScalingDecision", "ScalingMetrics"]
