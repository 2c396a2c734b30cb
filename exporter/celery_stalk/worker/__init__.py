"""Metrics from inside the workers: celery-stalk's task metrics without Celery events.

    # in the Celery app module:
    import celery_stalk.worker
    celery_stalk.worker.install(app)

    celery -A proj worker --stalk-port 9809     # /metrics of this worker

The worker then serves the exporter's task metrics (same names, types, labels,
HELP and buckets: the exporter's catalog and ledger are used as they are), plus
what only a worker knows (worker/catalog.py). Producers that run install() too
stamp each message with its send time and queue, so the worker measures the
queue wait and knows the queue without task-sent events, and count
celery_task_sent_total themselves.

Where counts are made, and why not prometheus_client's multiprocess mode
--------------------------------------------------------------------------

Celery sends every task event from the worker's Request object, in the process
that owns the request: under prefork that is the main process, which learns
every transition from its pool (accepted, succeeded with the run time, failed
with the exception, retried, rejected, revoked, killed by a hard time limit).
So the instrumentation observes the requests there (observe.py), whatever the
pool, and the per-task counts never cross a process boundary: a pool process
that exits under max_tasks_per_child churn, or is killed, has nothing to lose.
Only what happens inside a task reaches the main process from a pool process:
tasks it publishes (retries, subtasks), its own start, and errors. Each is one
datagram over a Unix socket pair inherited through fork, sent the moment it
happens and applied once (channel.py). This needs the pool processes forked
(Celery's default on Linux), not spawned: a spawned process inherits no channel.

prometheus_client's multiprocess mode was the other candidate. It keeps one
mmapped file per process and metric type, which must outlive the process for
its counters to stay counted; with max_tasks_per_child the directory grows by
a file set per pool process for the life of the worker and every scrape reads
them all (mark_process_dead removes only live gauges). It also needs a
writable directory set before prometheus_client is imported, and its
collectors cannot give the exporter's label caps nor render the same
families. The design here keeps memory flat (bounded by the label caps and the
number of pool slots), writes no file, and reuses the exporter's ledger.
"""

from __future__ import annotations

import logging
import threading

from celery import signals

from ..model import ModelSettings
from .instrument import Instrumentation

__all__ = ["install"]

log = logging.getLogger("celery_stalk.worker")

_lock = threading.Lock()
_current: Instrumentation | None = None


def _instrumentation() -> Instrumentation:
    if _current is None:
        raise RuntimeError("celery_stalk.worker.install(app) was not called")
    return _current


def install(app, settings: ModelSettings | None = None) -> None:
    """Instrument ``app`` in this process: as a producer always, as a worker when
    ``celery -A ... worker`` runs it (adds --stalk-port and its friends).

    Call it where the app is made, so that workers and producers both run it.
    ``settings`` changes the label caps and histogram buckets (defaults: the
    exporter's). Calling it again is harmless.
    """
    global _current
    from .collector import ProducerCollector
    from .step import CLI_OPTIONS, DispatcherStep, MetricsStep

    with _lock:
        if _current is None:
            _current = Instrumentation(settings)
            _connect_signals(_current)
            _register_producer(ProducerCollector(_current.counts))
        if MetricsStep not in app.steps["worker"]:
            app.steps["worker"].add(MetricsStep)
            app.steps["consumer"].add(DispatcherStep)
            names = {o.name for o in app.user_options["worker"]}
            for option in CLI_OPTIONS:
                if option.name not in names:
                    app.user_options["worker"].add(option)


def _connect_signals(instr: Instrumentation) -> None:
    publishing = instr.publishing
    signals.before_task_publish.connect(publishing.before, weak=False,
                                        dispatch_uid="celery_stalk.before_publish")
    signals.after_task_publish.connect(publishing.after, weak=False,
                                       dispatch_uid="celery_stalk.after_publish")

    def received(sender=None, request=None, **_):
        instr.observer.received(request)

    def pool_process_init(**_):
        try:
            from billiard.process import current_process

            instr.pool_process_started(getattr(current_process(), "index", None),
                                       current_process().pid)
        except Exception:
            instr.errors("pool_process")

    signals.task_received.connect(received, weak=False, dispatch_uid="celery_stalk.received")
    signals.worker_process_init.connect(pool_process_init, weak=False,
                                        dispatch_uid="celery_stalk.pool_process_init")


_producer_collector = None


def _register_producer(collector) -> None:
    """Outside a worker, sent counts go to prometheus_client's default registry,
    which the app serves as it serves its own metrics."""
    global _producer_collector
    from prometheus_client import REGISTRY

    REGISTRY.register(collector)
    _producer_collector = collector


def unregister_producer() -> None:
    """A worker serves its sent counts on its own /metrics: not twice."""
    global _producer_collector
    from prometheus_client import REGISTRY

    if _producer_collector is not None:
        REGISTRY.unregister(_producer_collector)
        _producer_collector = None
