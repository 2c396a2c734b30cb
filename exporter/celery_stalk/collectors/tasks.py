"""Task metrics: lifecycle counters, exceptions, run time and queue wait by (task, queue)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric as Family

from ..exposition import SeriesCounter, SeriesHistogram
from ..model import SENT_MISSING, TASK_EVENTS, Model
from .catalog import CATALOG, labelled, single, task_counter


class TaskCollector:
    """The task series of a model, or of one instrumented worker's counts.

    ``worker``: the worker's name, put first on every task series as a ``worker`` label.
    A worker serves only its own tasks, one target per worker, so the label adds no series;
    it keeps the workers' series apart where the rules and dashboards take one of each
    exporter HA pair (``max without (instance, pod)``), so their sums add the workers up
    instead of taking the busiest one. The exporter's series carry no worker (its task
    series are per task and queue, whichever worker ran them)."""

    name = "tasks"

    def __init__(self, model: Model, worker: str | None = None):
        self.model = model
        self.worker = worker

    def collect(self) -> Iterable[Family]:
        snap = self.model.task_snapshot()
        for event in TASK_EVENTS:
            yield self._counter(task_counter(event).name, snap.counters[event])
        yield self._counter("celery_stalk_task_sent_missing_total", snap.counters[SENT_MISSING])
        yield self._counter("celery_task_exceptions_total", snap.exceptions)
        yield self._histogram("celery_task_runtime_seconds", snap.runtime, snap.runtime_buckets)
        yield self._histogram("celery_task_queue_wait_seconds", snap.wait, snap.wait_buckets)
        yield labelled("celery_stalk_task_name_unknown_total", snap.name_unknown)
        yield single("celery_stalk_queue_wait_clock_skew_total", snap.clock_skew)

    def _labelled(self, name: str, series: dict) -> tuple[tuple[str, ...], dict]:
        labels = CATALOG[name].labels
        if self.worker is None:
            return labels, series
        worker = self.worker
        return ("worker", *labels), {(worker, *key): value for key, value in series.items()}

    def _counter(self, name: str, values: dict) -> Family:
        """A counter family with one series per label tuple (task and queue, ...)."""
        labels, values = self._labelled(name, values)
        return SeriesCounter(name.removesuffix("_total"), CATALOG[name].help, labels, values)

    def _histogram(self, name: str, hists: dict, bounds: tuple[float, ...]) -> Family:
        labels, hists = self._labelled(name, hists)
        return SeriesHistogram(name, CATALOG[name].help, labels, hists, bounds)
