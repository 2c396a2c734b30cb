"""The exporter's own health: events applied and refused, joins and caps, the event link."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric as Family

from ..model import Model
from ..sources import SourceState
from .catalog import labelled, single


class ExporterCollector:
    name = "exporter"

    def __init__(self, model: Model, source: SourceState):
        self.model = model
        self.source = source

    def collect(self) -> Iterable[Family]:
        health = self.model.health_snapshot()
        link = self.source.snapshot()
        yield labelled("celery_stalk_events_total", health.events)
        # Refused whole messages (the source) and single events (the model): one family.
        invalid = dict(health.invalid)
        for reason, count in link.invalid.items():
            invalid[reason] = invalid.get(reason, 0) + count
        yield labelled("celery_stalk_events_invalid_total", invalid)
        if health.last_event is not None:
            yield single("celery_stalk_last_event_timestamp_seconds", health.last_event)
        yield single("celery_stalk_task_metrics_from_events", 1 if self.model.counts_task_events else 0)
        yield single("celery_stalk_tracked_tasks", health.tracked_tasks)
        yield single("celery_stalk_tracked_tasks_evicted_total", health.evicted_tasks)
        yield labelled("celery_stalk_label_overflow_total", health.overflow)
        yield labelled("celery_stalk_label_forgotten_total", health.forgotten)
        yield single("celery_stalk_events_connected", 1 if link.connected else 0)
        yield single("celery_stalk_broker_reconnects_total", link.reconnects)
        yield single("celery_stalk_events_stalls_total", link.stalls)
