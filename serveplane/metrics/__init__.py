"""Sliding-window metrics, summaries and Prometheus text exposition."""

from serveplane.metrics.prometheus import render_prometheus
from serveplane.metrics.summary import summarize

__all__ = ["render_prometheus", "summarize"]
