"""Sliding-window metrics, summaries and Prometheus text exposition."""

from serveplane.metrics.prometheus import render_prometheus
from serveplane.metrics.routers import merge_router_reports
from serveplane.metrics.summary import summarize

__all__ = ["merge_router_reports", "render_prometheus", "summarize"]
