"""Collectors of the worker's /metrics: the worker's own state, and the producer's sent counts."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as Family

from ..collectors.catalog import CATALOG
from ..exposition import SeriesCounter
from .catalog import worker_family
from .counts import TaskCounts
from .pool import PoolProcesses, pool_size, resident_bytes


class WorkerLocalCollector:
    """Pool slots, busy and reserved tasks, restarts, kills, memory: read at scrape time."""

    name = "worker"

    def __init__(self, counts: TaskCounts, worker: Any, processes: PoolProcesses):
        self.counts = counts
        self.worker = worker
        self.processes = processes

    def collect(self) -> Iterable[Family]:
        from celery.worker import state  # the worker's own bookkeeping of its requests

        hostname = [self.worker.hostname]
        restarts, kills, errors = self.counts.local_snapshot()
        size = pool_size(getattr(self.worker, "pool", None))
        if size is not None:
            yield _one("celery_worker_pool_size", hostname, size)
        active = len(state.active_requests)
        yield _one("celery_worker_pool_busy", hostname, active)
        yield _one("celery_worker_tasks_reserved", hostname,
                   max(0, len(state.reserved_requests) - active))
        yield _one("celery_worker_pool_restarts_total", hostname, restarts)
        yield _one("celery_worker_time_limit_kills_total", hostname, kills)
        memory = worker_family("celery_worker_process_memory_bytes")
        main = resident_bytes(os.getpid())
        if main is not None:
            memory.add_metric([*hostname, "main"], main)
        for index, rss in self.processes.memory().items():
            memory.add_metric([*hostname, index], rss)
        yield memory
        yield errors_family(errors)


class ProducerCollector:
    """celery_task_sent_total of a process that publishes but runs no worker
    (registered with prometheus_client's default registry by install())."""

    def __init__(self, counts: TaskCounts):
        self.counts = counts

    def collect(self) -> Iterable[Family]:
        snap = self.counts.task_snapshot()
        m = CATALOG["celery_task_sent_total"]
        yield SeriesCounter(m.name.removesuffix("_total"), m.help, m.labels, snap.counters["task-sent"])
        yield errors_family(self.counts.local_snapshot()[2])

    def describe(self) -> Iterable[Family]:
        return []


def errors_family(errors: dict[str, int]) -> CounterMetricFamily | GaugeMetricFamily:
    fam = worker_family("celery_stalk_instrumentation_errors_total")
    for where, count in sorted(errors.items()):
        fam.add_metric([where], count)
    return fam


def _one(name: str, labels: list[str], value: float) -> Family:
    fam = worker_family(name)
    fam.add_metric(labels, value)
    return fam
