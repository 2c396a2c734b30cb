"""What the instrumentation counts, in the process that serves it.

Task metrics go into the exporter's own TaskLedger (model/ledger.py): the same
counters, histograms, bucket defaults (options.py) and label caps, so the two
sources cannot drift. Beside it, what only a worker knows: pool process
restarts, time-limit kills and the instrumentation's own errors.

Several threads write here (the consumer, the pool threads of a threads pool,
the reader of the pool processes' channel) and scrapes read: one lock.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..model import UNKNOWN, ModelSettings, label_value
from ..model.fields import MAX_DURATION
from ..model.ledger import Labels, TaskLedger, TaskSnapshot

# Where the instrumentation can fail (celery_stalk_instrumentation_errors_total{where}),
# reported from 0 so that the first error shows as an increase.
ERROR_PLACES = ("received", "request", "publish", "pool_channel", "pool_process")


class TaskCounts:
    def __init__(self, settings: ModelSettings | None = None, clock: Callable[[], float] = time.time):
        self.ledger = TaskLedger(settings or ModelSettings())
        self.clock = clock
        self._lock = threading.Lock()
        self.errors: dict[str, int] = dict.fromkeys(ERROR_PLACES, 0)
        self.restarts = 0
        self.time_limit_kills = 0

    def labels(self, name: object, queue: object) -> Labels:
        """(task, queue) admitted through the ledger's caps, as the exporter admits them."""
        now = self.clock()
        with self._lock:
            task = self.ledger.task_names.admit(label_value(name) or UNKNOWN, now)
            queue = self.ledger.queue_names.admit(label_value(queue) or UNKNOWN, now)
        return task, queue

    def count(self, kind: str, labels: Labels) -> None:
        """One task lifecycle event ("task-received", ...)."""
        with self._lock:
            self.ledger.count(kind, labels)

    def started(self, labels: Labels, wait: float | None) -> None:
        with self._lock:
            self.ledger.count("task-started", labels)
            if wait is None:
                return
            if not wait <= MAX_DURATION:  # a clock far off: not a wait at all
                self.ledger.clock_skew += 1
                return
            if wait < 0:  # producer and worker clocks disagree
                self.ledger.clock_skew += 1
                wait = 0.0
            self.ledger.observe_wait(labels, wait)

    def succeeded(self, labels: Labels, runtime: object) -> None:
        with self._lock:
            self.ledger.count("task-succeeded", labels)
            if isinstance(runtime, (int, float)) and runtime <= MAX_DURATION:
                self.ledger.observe_runtime(labels, max(float(runtime), 0.0))

    def failed(self, labels: Labels, exception: str) -> None:
        """``exception``: the class name (model.exception_class of the event's field)."""
        now = self.clock()
        with self._lock:
            self.ledger.count("task-failed", labels)
            name = self.ledger.exception_names.admit(exception, now)
            self.ledger.count_exception(labels, name)

    def restarted(self) -> None:
        with self._lock:
            self.restarts += 1

    def killed(self) -> None:
        with self._lock:
            self.time_limit_kills += 1

    def error(self, where: str, count: int = 1) -> None:
        with self._lock:
            self.errors[where] = self.errors.get(where, 0) + count

    # -- output ---------------------------------------------------------------

    def task_snapshot(self) -> TaskSnapshot:
        with self._lock:
            return self.ledger.snapshot()

    def local_snapshot(self) -> tuple[int, int, dict[str, int]]:
        """(pool process restarts, time-limit kills, instrumentation errors by where)."""
        with self._lock:
            return self.restarts, self.time_limit_kills, dict(self.errors)
