"""Prometheus metrics of ``proxyembed serve``: per-stage time, requests by route and status, gallery size.

Each service has its own registry (two apps in one process, as in the tests, do not share counters).
Stages are those of one query (decode, preprocess, encode, search) plus ``save`` for changes, so a
dashboard shows where a slow query spends its time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# From 0.1 ms (a search in a small gallery) to 10 s (a save with recall calibration at 1M items).
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The counters and histograms one service exports at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._stage = Histogram(
            "proxyembed_stage_seconds", "Time per stage of a request.", ["stage"], registry=self.registry, buckets=_BUCKETS
        )
        self._requests = Counter(
            "proxyembed_requests", "HTTP requests by route template, method and status.", ["route", "method", "status"], registry=self.registry
        )
        self._latency = Histogram(
            "proxyembed_request_seconds", "Time from request to response, by route template.", ["route"], registry=self.registry, buckets=_BUCKETS
        )
        self._items = Gauge("proxyembed_gallery_items", "Live items in the gallery.", registry=self.registry)

    def bind_count(self, count: Callable[[], int]) -> None:
        """Report the gallery size by calling ``count`` at each scrape."""
        self._items.set_function(lambda: float(count()))

    def observe_stage(self, stage: str, seconds: float) -> None:
        self._stage.labels(stage).observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
