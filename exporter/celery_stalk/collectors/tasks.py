"""Task metrics: lifecycle counters, exceptions, run time and queue wait by (task, queue)."""

from __future__ import annotations

from typing import Iterable

from prometheus_client.core import Metric as Family

from ..model import SENT_MISSING, TASK_EVENTS, Model
from ..exposition import SeriesCounter, SeriesHistogram
from .catalog import CATALOG, labelled, single, task_counter


class TaskCollector:
    name = "tasks"

    def __init__(self, model: Model):
        self.model = model

    def collect(self) -> Iterable[Family]:
        snap = self.model.task_snapshot()
        for event in TASK_EVENTS:
            yield _counter(task_counter(event).name, snap.counters[event])
        yield _counter("celery_stalk_task_sent_missing_total", snap.counters[SENT_MISSING])
        yield _counter("celery_task_exceptions_total", snap.exceptions)
        yield _histogram("celery_task_runtime_seconds", snap.runtime, snap.runtime_buckets)
        yield _histogram("celery_task_queue_wait_seconds", snap.wait, snap.wait_buckets)
        yield labelled("celery_stalk_task_name_unknown_total", snap.name_unknown)
        yield single("celery_stalk_queue_wait_clock_skew_total", snap.clock_skew)


def _counter(name: str, values: dict) -> Family:
    """A counter family with one series per label tuple (task and queue, ...)."""
    m = CATALOG[name]
    return SeriesCounter(name.removesuffix("_total"), m.help, m.labels, values)


def _histogram(name: str, hists: dict, bounds: tuple[float, ...]) -> Family:
    m = CATALOG[name]
    return SeriesHistogram(name, m.help, m.labels, hists, bounds)
