"""A task's life as the worker lives it, turned into the exporter's task metrics.

Celery sends every task event from the worker's Request object, in the process
that owns the request: the main process under prefork (the pool processes only
run the task body and hand back the outcome), the same process for threads,
solo, gevent and eventlet. ``ObservedRequest`` is put in front of each task's
Request class, so every ``send_event`` call is seen, with the request at hand,
whether the event then goes out (-E) or is dropped (events off): the counts are
exactly what the exporter would count from the same events. Received is Celery's
``task_received`` signal, which fires in that process too.

The counts follow the exporter's rules (README, "Failures, rejections and
retries"): a delivery of a task ends once, with the first of task-succeeded,
task-failed, task-revoked or task-rejected without requeue (Celery 5.3+ sends
task-failed twice for a hard time limit; gevent sends task-succeeded after a
revoke with terminate); a raised Reject is a rejection, not a failure (Celery
also sends task-failed for it); a requeue is a rejection but no end. The
exception label is the class of the exception itself, from the pool's failure
callback, where the event's text can name billiard's wrapper
(``ExceptionWithTraceback()`` for a hard time limit).

Nothing here may break a task: every error is counted in
celery_stalk_instrumentation_errors_total and logged, and the task goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..model import exception_class
from ..model.fields import SEND_STAMP_LAG
from .counts import TaskCounts

log = logging.getLogger("celery_stalk.worker")

# Message headers stamped by an instrumented producer (publish.py).
SENT_HEADER = "celery_stalk_sent"
QUEUE_HEADER = "celery_stalk_queue"

WRAPPER = "ExceptionWithTraceback"  # billiard's, around an exception made in the main process
ENDS = ("task-succeeded", "task-failed", "task-revoked", "task-rejected")


class Errors:
    """Counts instrumentation errors; logs the first of each kind with its traceback.

    Called from inside an ``except`` block. ``count(where)`` counts it where it is
    served (a pool process sends it to the main process)."""

    def __init__(self, count: Callable[[str], None]):
        self.count = count
        self.logged: set[str] = set()

    def __call__(self, where: str) -> None:
        try:
            self.count(where)
            if where not in self.logged:
                self.logged.add(where)
                log.exception("celery-stalk instrumentation error in %s (the task was not "
                              "affected; counted in celery_stalk_instrumentation_errors_total, "
                              "later ones logged at debug)", where)
            else:
                log.debug("celery-stalk instrumentation error in %s", where, exc_info=True)
        except Exception:  # pragma: no cover - the last line of defence
            pass


def queue_of(request: Any) -> object:
    """The queue a task was sent to: the instrumented producer's stamp, else the routing key."""
    queue = request.request_dict.get(QUEUE_HEADER)
    if queue:
        return queue
    return (request.delivery_info or {}).get("routing_key")


def runnable_since(request: Any) -> tuple[float | None, bool]:
    """When the task could first run: sent (the producer's stamp), or its ETA if later;
    and whether it is the ETA."""
    sent = request.request_dict.get(SENT_HEADER)
    if not isinstance(sent, (int, float)) or isinstance(sent, bool):
        return None, False
    eta = request.eta
    if eta is not None:
        try:
            eta_time = eta.timestamp()
            if eta_time > sent:
                return eta_time, True
        except (AttributeError, OverflowError, ValueError):
            pass
    return float(sent), False


class _Delivery:
    """What is kept on a request between its transitions (it lives as long as the request)."""

    __slots__ = ("labels", "runnable", "at_eta", "seen", "ended", "exception", "raised_reject")

    def __init__(self, labels, runnable):
        self.labels = labels
        self.runnable, self.at_eta = runnable
        self.seen: set[str] = set()  # transitions counted (each once per delivery)
        self.ended = False
        self.exception: str | None = None  # the class of the exception it failed with
        self.raised_reject = False  # the task raised Reject: its task-failed is no failure


class Observer:
    def __init__(self, counts: TaskCounts, errors: Errors):
        self.counts = counts
        self.errors = errors

    def _delivery(self, request: Any) -> _Delivery:
        delivery = request.__dict__.get("_stalk")
        if delivery is None:  # revoked before it was received, or a task wrapped late
            delivery = _Delivery(self.counts.labels(request.name, queue_of(request)),
                                 runnable_since(request))
            request.__dict__["_stalk"] = delivery
        return delivery

    def received(self, request: Any) -> None:
        try:
            if isinstance(request, ObservedRequest):
                self.counts.count("task-received", self._delivery(request).labels)
        except Exception:
            self.errors("received")

    def event(self, request: Any, kind: str, fields: dict) -> None:
        try:
            delivery = self._delivery(request)
            if kind == "task-rejected" and fields.get("requeue"):
                kind = "task-requeued"  # a rejection that is no end: delivered again
            elif kind in ENDS:
                if delivery.ended or (kind == "task-failed" and delivery.raised_reject):
                    return
            if kind in delivery.seen:
                return
            delivery.seen.add(kind)
            if kind in ENDS:
                delivery.ended = True
            labels = delivery.labels
            if kind == "task-started":
                wait = None
                if delivery.runnable is not None and request.time_start is not None:
                    wait = request.time_start - delivery.runnable
                    if delivery.at_eta or -SEND_STAMP_LAG <= wait < 0:
                        # Run at its ETA by the worker's own clock (a few ms early is the
                        # timer), or a hair early on close clocks: not clock skew.
                        wait = max(wait, 0.0)
                self.counts.started(labels, wait)
            elif kind == "task-succeeded":
                self.counts.succeeded(labels, fields.get("runtime"))
            elif kind == "task-failed":
                exception = delivery.exception or exception_class(fields.get("exception"))
                self.counts.failed(labels, exception)
            elif kind == "task-requeued":
                self.counts.count("task-rejected", labels)
            elif kind in ("task-retried", "task-rejected", "task-revoked"):
                self.counts.count(kind, labels)
        except Exception:
            self.errors("request")

    def failing(self, request: Any, exc_info: Any) -> None:
        """The pool's failure callback, which has the exception itself: its class."""
        try:
            from celery.exceptions import Reject
            from celery.utils.serialization import get_pickled_exception

            exc = getattr(exc_info, "exception", None)
            exc = getattr(exc, "exc", exc) if type(exc).__name__ == WRAPPER else exc
            if exc is not None:
                exc = get_pickled_exception(exc)
                delivery = self._delivery(request)
                delivery.exception = type(exc).__name__
                delivery.raised_reject = isinstance(exc, Reject)
        except Exception:
            self.errors("request")

    def timed_out(self, request: Any, soft: bool) -> None:
        try:
            if not soft:
                self.counts.killed()
                # before Celery's handler sends its task-failed, which names the wrapper
                delivery = self._delivery(request)
                delivery.exception = delivery.exception or "TimeLimitExceeded"
        except Exception:
            self.errors("request")


class ObservedRequest:
    """Put before a task's own Request class (see wrap_requests)."""

    __slots__ = ()
    _stalk_observer: Observer

    def send_event(self, type, **fields):
        self._stalk_observer.event(self, type, fields)
        return super().send_event(type, **fields)

    def on_failure(self, exc_info, *args, **kwargs):
        self._stalk_observer.failing(self, exc_info)
        return super().on_failure(exc_info, *args, **kwargs)

    def on_timeout(self, soft, timeout):
        self._stalk_observer.timed_out(self, soft)
        return super().on_timeout(soft, timeout)


def wrap_requests(app, observer: Observer) -> int:
    """Give every registered task a Request class that is observed; returns how many.

    Runs when the worker starts, before its consumer builds the task strategies
    (which read ``task.Request``). A task's own Request class is kept: the
    observed one is a subclass of it.
    """
    from kombu.utils.imports import symbol_by_name

    classes: dict[type, type] = {}
    wrapped = 0
    for task in app.tasks.values():
        base = symbol_by_name(task.Request)
        if issubclass(base, ObservedRequest):
            continue
        observed = classes.get(base)
        if observed is None:
            observed = classes[base] = type(
                base.__name__, (ObservedRequest, base),
                {"__slots__": (), "_stalk_observer": observer, "__module__": __name__},
            )
        task.Request = observed
        wrapped += 1
    return wrapped
