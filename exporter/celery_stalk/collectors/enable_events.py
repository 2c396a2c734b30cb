"""The --enable-events broadcasts (enable_events.py): how many were sent, how many failed."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric as Family

from .catalog import family


class EnableEventsCollector:
    name = "enable_events"

    def __init__(self, enabler):
        self.enabler = enabler

    def collect(self) -> Iterable[Family]:
        broadcasts = family("celery_stalk_enable_events_broadcasts_total")
        broadcasts.add_metric(["sent"], self.enabler.sent)
        broadcasts.add_metric(["failed"], self.enabler.failed)
        yield broadcasts
