"""The HTTP server's own counters: connections and requests turned away, password checks."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric as Family

from ..webstats import WebStats
from .catalog import labelled, single


class WebCollector:
    name = "http"

    def __init__(self, stats: WebStats):
        self.stats = stats

    def collect(self) -> Iterable[Family]:
        rejected, failures, throttled = self.stats.snapshot()
        yield single("celery_stalk_http_connections", self.stats.open_connections())
        yield labelled("celery_stalk_http_rejected_total", rejected)
        yield single("celery_stalk_http_auth_failures_total", failures)
        yield labelled("celery_stalk_http_auth_throttled_total", throttled)
