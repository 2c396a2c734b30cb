"""The metrics only a worker can tell, named, typed and documented once.

The task metrics a worker serves are the exporter's, from collectors/catalog.py
(same names, types, labels and HELP); this is what comes on top. The README's
worker metric table is generated from it (``celery-stalk catalog --worker``).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..collectors.catalog import CATALOG, FLEET_TASK_METRICS, Metric

TASK_METRICS = tuple(name for name in CATALOG
                     if name.startswith("celery_task_") and name not in FLEET_TASK_METRICS)

WORKER_CATALOG: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("celery_worker_pool_size", "gauge", ("worker",),
               "Execution slots of the worker's pool (its concurrency): prefork processes, "
               "threads or greenlets; 1 for solo. From the pool itself."),
        Metric("celery_worker_pool_busy", "gauge", ("worker",),
               "Pool slots executing a task now: tasks the pool accepted and has not finished."),
        Metric("celery_worker_tasks_reserved", "gauge", ("worker",),
               "Tasks the worker took from the broker and has not started: prefetched tasks "
               "waiting for a free pool slot and tasks held for their ETA/countdown."),
        Metric("celery_worker_pool_restarts_total", "counter", ("worker",),
               "Prefork pool processes started to replace one that exited: max_tasks_per_child, "
               "max_memory_per_child, a hard time limit kill or a crash."),
        Metric("celery_worker_time_limit_kills_total", "counter", ("worker",),
               "Tasks stopped by their hard time limit (time_limit): the pool process (prefork) "
               "or greenlet running it was killed. Counted once per task."),
        Metric("celery_worker_process_memory_bytes", "gauge", ("worker", "process"),
               "Resident memory (RSS) of the worker's processes: process=\"main\" for the worker "
               "itself, the slot index (0, 1, ...) for each prefork pool process. From /proc."),
        Metric("celery_stalk_instrumentation_errors_total", "counter", ("where",),
               "Errors inside the celery-stalk instrumentation, by where they happened "
               "(received, request, publish, pool_channel, pool_process); the task ran anyway. "
               "The worker's log has the traceback."),
    ]
}


def worker_family(name: str) -> CounterMetricFamily | GaugeMetricFamily:
    """An empty metric family for a worker catalog entry."""
    m = WORKER_CATALOG[name]
    if m.kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), m.help, labels=m.labels)
    return GaugeMetricFamily(name, m.help, labels=m.labels)

