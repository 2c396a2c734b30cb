"""The metric catalog and the collectors that render it at scrape time.

Every metric the exporter emits is named, typed and documented once, in
CATALOG. Collectors are views: each scrape builds fresh metric families from
a model snapshot or one broker read; nothing here keeps state between scrapes
except the last queue read's outcome.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric as Family,
)

from .brokers import QueueReader
from .exposition import SeriesCounter, SeriesHistogram
from .model import TASK_EVENTS, HistogramView, Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed, counters with their _total
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


_TASK = ("task", "queue")


def _task_counter(event: str) -> Metric:
    verb = event.removeprefix("task-")
    return Metric(
        f"celery_task_{verb}_total", "counter", _TASK,
        f"Tasks {verb}: count of {event} events. Task name and queue joined on the task id.",
    )


CATALOG: dict[str, Metric] = {
    m.name: m
    for m in [
        *(_task_counter(event) for event in TASK_EVENTS),
        Metric("celery_task_exceptions_total", "counter", _TASK + ("exception",),
               "Failed tasks by exception class name (never the message), from task-failed events."),
        Metric("celery_task_runtime_seconds", "histogram", _TASK,
               "Task run time in seconds, from the runtime field of task-succeeded events."),
        Metric("celery_task_queue_wait_seconds", "histogram", _TASK,
               "Seconds from task-sent (or the task's ETA/countdown, if later) to task-started; "
               "observed only for tasks whose task-sent event was seen."),
        Metric("celery_queue_messages", "gauge", ("queue",),
               "Ready messages in the broker queue: Redis LLEN of the list and its priority "
               "sub-lists, RabbitMQ passive queue.declare."),
        Metric("celery_queue_consumers", "gauge", ("queue",),
               "Consumers of the broker queue, from RabbitMQ passive queue.declare "
               "(not emitted on Redis, which cannot tell)."),
        Metric("celery_worker_up", "gauge", ("worker",),
               "1 if the worker's heartbeat was received within the timeout and it has not "
               "sent worker-offline, else 0. Judged by the exporter's own clock."),
        Metric("celery_worker_offline", "gauge", ("worker",),
               "1 if the worker's last event was worker-offline (a clean shutdown, as in a "
               "deploy or scale-down), else 0. A worker with celery_worker_up 0 and "
               "celery_worker_offline 0 was lost."),
        Metric("celery_worker_last_heartbeat_timestamp_seconds", "gauge", ("worker",),
               "When the exporter last received a worker-online/heartbeat/offline event from "
               "the worker (exporter's clock)."),
        Metric("celery_worker_tasks_active", "gauge", ("worker",),
               "Tasks the worker is executing, from the active field of its last heartbeat."),
        Metric("celery_workers", "gauge", (),
               "Workers currently up (celery_worker_up == 1)."),
        Metric("celery_worker_lost_total", "counter", (),
               "Workers that stopped heartbeating without a worker-offline event (crash, "
               "SIGKILL, network loss). A clean shutdown does not count. Kept when the "
               "worker's own series are forgotten."),
        Metric("celery_stalk_build_info", "gauge", ("version",),
               "Always 1; the exporter's version in the label."),
        Metric("celery_stalk_events_total", "counter", ("type",),
               "Celery events applied, by event type (other: types this version does not know)."),
        Metric("celery_stalk_events_invalid_total", "counter", ("reason",),
               "Messages or events that could not be applied and were skipped, by reason: "
               "not_json, content_type, bad_envelope (not a kombu message), not_an_object, "
               "missing_type, missing_field (absent or wrongly typed), bad_value (empty, longer "
               "than 300 characters or not UTF-8), internal_error (a bug: see the log)."),
        Metric("celery_stalk_last_event_timestamp_seconds", "gauge", (),
               "When the exporter last applied an event (exporter's clock)."),
        Metric("celery_stalk_task_name_unknown_total", "counter", ("type",),
               "Task events whose task name could not be joined on the task id (the event "
               "carries none and no task-sent/received was seen); counted under task=\"unknown\"."),
        Metric("celery_stalk_queue_wait_clock_skew_total", "counter", (),
               "Queue waits that came out negative (observed as 0) or longer than 30 days (not "
               "observed) because producer and worker clocks disagree."),
        Metric("celery_stalk_tracked_tasks", "gauge", (),
               "Tasks in flight kept for joining events (bounded by --max-tracked-tasks)."),
        Metric("celery_stalk_tracked_tasks_evicted_total", "counter", (),
               "Tasks in flight dropped to stay within --max-tracked-tasks; their later "
               "events count as task name unknown."),
        Metric("celery_stalk_label_overflow_total", "counter", ("label",),
               "Values past the cap of distinct label values (--max-task-names, --max-queues, "
               "--max-exceptions, --max-workers), reported as \"other\"."),
        Metric("celery_stalk_broker_up", "gauge", (),
               "1 if this scrape's queue depth read from the broker succeeded, else 0."),
        Metric("celery_stalk_events_connected", "gauge", (),
               "1 if the event consumer is connected to the broker and consuming, else 0."),
        Metric("celery_stalk_broker_reconnects_total", "counter", (),
               "Times the event consumer reconnected to the broker after losing it (an error, "
               "or a stall)."),
        Metric("celery_stalk_events_stalls_total", "counter", (),
               "Times no event at all arrived for --events-stall-timeout while workers were up "
               "(a half-open connection or a pub/sub subscription lost in a broker failover), "
               "so the event consumer reconnected."),
        Metric("celery_stalk_collector_success", "gauge", ("collector",),
               "1 if the collector succeeded in this scrape, else 0."),
        Metric("celery_stalk_collector_duration_seconds", "gauge", ("collector",),
               "Seconds the collector took in this scrape."),
    ]
}


def family(name: str) -> Family:
    """An empty metric family for a catalog entry."""
    m = CATALOG[name]
    if m.kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), m.help, labels=m.labels)
    if m.kind == "histogram":
        return HistogramMetricFamily(name, m.help, labels=m.labels)
    return GaugeMetricFamily(name, m.help, labels=m.labels)


def _histogram(name: str, hists: dict[tuple[str, str], HistogramView], bounds: tuple[float, ...],
               cache: dict) -> Family:
    m = CATALOG[name]
    return SeriesHistogram(name, m.help, m.labels, hists, bounds, cache)


def _counter(name: str, values: dict[tuple[str, ...], int], cache: dict) -> Family:
    """A counter family with one series per label tuple (task and queue, ...)."""
    m = CATALOG[name]
    return SeriesCounter(name.removesuffix("_total"), m.help, m.labels, values, cache)


class ModelCollector:
    """Task, worker and exporter-health metrics from one model snapshot."""

    name = "events"

    def __init__(self, model: Model, clock: Callable[[], float] = time.time):
        self.model = model
        self.clock = clock
        self.lines_cache: dict = {}  # series lines from the last scrape (exposition.py)

    def collect(self) -> Iterable[Family]:
        snap = self.model.snapshot(self.clock())
        for event in TASK_EVENTS:
            yield _counter(_task_counter(event).name, snap.counters[event], self.lines_cache)
        yield _counter("celery_task_exceptions_total", snap.exceptions, self.lines_cache)
        yield _histogram("celery_task_runtime_seconds", snap.runtime, snap.runtime_buckets,
                         self.lines_cache)
        yield _histogram("celery_task_queue_wait_seconds", snap.wait, snap.wait_buckets,
                         self.lines_cache)

        up, offline, heartbeat, active = (
            family("celery_worker_up"),
            family("celery_worker_offline"),
            family("celery_worker_last_heartbeat_timestamp_seconds"),
            family("celery_worker_tasks_active"),
        )
        for worker, view in sorted(snap.workers.items()):
            up.add_metric([worker], 1 if view.up else 0)
            offline.add_metric([worker], 1 if view.offline else 0)
            heartbeat.add_metric([worker], view.last_heartbeat)
            active.add_metric([worker], view.active)
        yield from (up, offline, heartbeat, active)
        yield _single("celery_workers", sum(1 for v in snap.workers.values() if v.up))
        yield _single("celery_worker_lost_total", snap.workers_lost)

        yield _labelled("celery_stalk_events_total", snap.events)
        yield _labelled("celery_stalk_events_invalid_total", snap.invalid)
        if snap.last_event is not None:
            yield _single("celery_stalk_last_event_timestamp_seconds", snap.last_event)
        yield _labelled("celery_stalk_task_name_unknown_total", snap.name_unknown)
        yield _single("celery_stalk_queue_wait_clock_skew_total", snap.clock_skew)
        yield _single("celery_stalk_tracked_tasks", snap.tracked_tasks)
        yield _single("celery_stalk_tracked_tasks_evicted_total", snap.evicted_tasks)
        yield _labelled("celery_stalk_label_overflow_total", snap.overflow)
        yield _single("celery_stalk_events_connected", 1 if snap.consumer_connected else 0)
        yield _single("celery_stalk_broker_reconnects_total", snap.reconnects)
        yield _single("celery_stalk_events_stalls_total", snap.stalls)


class QueueCollector:
    """Queue depth and consumers from one broker read, plus celery_stalk_broker_up."""

    name = "queues"

    def __init__(self, model: Model, reader: QueueReader):
        self.model = model
        self.reader = reader

    def collect(self) -> Iterable[Family]:
        queues = self.model.known_queues()
        try:
            depths = self.reader.read(queues)
        except Exception as exc:
            log.warning("cannot read queue depths from the broker: %s: %s", type(exc).__name__, exc)
            yield _single("celery_stalk_broker_up", 0)
            raise CollectorFailed from exc
        messages, consumers = family("celery_queue_messages"), family("celery_queue_consumers")
        for queue, depth in sorted(depths.items()):
            messages.add_metric([queue], depth.messages)
            if depth.consumers is not None:
                consumers.add_metric([queue], depth.consumers)
        yield messages
        if consumers.samples:
            yield consumers
        yield _single("celery_stalk_broker_up", 1)


class CollectorFailed(Exception):
    """A collector yielded what it could and failed; its success metric says 0."""


class Exporter:
    """The one collector registered: runs each part, timing it and noting success."""

    def __init__(self, parts: list, version: str, clock: Callable[[], float] = time.perf_counter):
        self.parts = parts
        self.version = version
        self.clock = clock

    def collect(self) -> Iterable[Family]:
        success, duration = family("celery_stalk_collector_success"), family(
            "celery_stalk_collector_duration_seconds"
        )
        for part in self.parts:
            started, ok = self.clock(), 1
            try:
                yield from part.collect()
            except CollectorFailed:
                ok = 0
            except Exception:
                log.exception("collector %s failed", part.name)
                ok = 0
            success.add_metric([part.name], ok)
            duration.add_metric([part.name], self.clock() - started)
        build = family("celery_stalk_build_info")
        build.add_metric([self.version], 1)
        yield build
        yield success
        yield duration

    def describe(self) -> Iterable[Family]:
        return []  # families are dynamic: don't let the registry collect at registration


def _single(name: str, value: float) -> Family:
    fam = family(name)
    fam.add_metric([], value)
    return fam


def _labelled(name: str, values: dict[str, int]) -> Family:
    fam = family(name)
    for label, value in sorted(values.items()):
        fam.add_metric([label], value)
    return fam


def catalog_markdown() -> str:
    """The README's metric table, generated from CATALOG."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for m in CATALOG.values():
        labels = ", ".join(f"`{label}`" for label in m.labels) or "—"
        rows.append(f"| `{m.name}` | {m.kind} | {labels} | {m.help} |")
    return "\n".join(rows)
