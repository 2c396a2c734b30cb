"""Worker capacity from Celery's ``inspect stats``: pool size and prefetch count per worker.

Events do not carry a worker's concurrency, so it is asked for: a ``stats``
control broadcast over the exporter's own broker URL, transport and TLS options,
on a loop of its own (--inspect-interval, 0: never), each round bounded by
--inspect-timeout. Scrapes serve the last answer, with when it was had and how
many rounds failed; a slow or failing broadcast never slows a scrape.

Only workers that answered the last round are reported: a worker gone is gone
from the next answer. Names and values are checked as event fields are, and at
most --max-workers workers are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .model.fields import gauge_int
from .model.labels import label_value

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerCapacity:
    concurrency: int | None  # the pool's max-concurrency
    prefetch_count: int | None  # the consumer's current prefetch (QoS) count
    pool: str | None  # the pool's kind: prefork, threads, solo, gevent, eventlet...


@dataclass
class CapacitySnapshot:
    workers: dict[str, WorkerCapacity] = field(default_factory=dict)
    last_success: float | None = None
    failures: int = 0


def capacities(replies: object, limit: int) -> dict[str, WorkerCapacity]:
    """The replies of ``inspect().stats()`` ({worker: stats}, None when nobody
    answered) into capacities; what is malformed is skipped."""
    found: dict[str, WorkerCapacity] = {}
    if not isinstance(replies, dict):
        return found
    for worker, stats in sorted(replies.items(), key=lambda item: str(item[0])):
        if len(found) >= limit:
            break
        if not isinstance(worker, str) or label_value(worker) is None or not isinstance(stats, dict):
            continue
        pool = stats.get("pool")
        concurrency = gauge_int(pool.get("max-concurrency")) if isinstance(pool, dict) else None
        prefetch = gauge_int(stats.get("prefetch_count"))
        if concurrency is None and prefetch is None:
            continue
        found[worker] = WorkerCapacity(concurrency, prefetch, pool_kind(pool))
    return found


def pool_kind(pool: object) -> str | None:
    """The pool's kind from its implementation's module ("celery.concurrency.prefork:TaskPool"
    is prefork)."""
    implementation = pool.get("implementation") if isinstance(pool, dict) else None
    if not isinstance(implementation, str):
        return None
    kind = implementation.rpartition(":")[0].rpartition(".")[2]
    return kind if label_value(kind) is not None else None


class CapacityPoller:
    """Asks ``ask(timeout)`` for the stats replies every ``interval`` seconds."""

    def __init__(self, ask: Callable[[float], object], interval: float, timeout: float,
                 max_workers: int, clock: Callable[[], float] = time.time):
        self.ask, self.interval, self.timeout = ask, interval, timeout
        self.max_workers = max_workers
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot = CapacitySnapshot()

    def poll(self) -> bool:
        """One round; True if it succeeded."""
        try:
            workers = capacities(self.ask(self.timeout), self.max_workers)
        except Exception as exc:  # the broker may be down: a failure counted, the last answer kept
            log.debug("inspect stats failed: %s: %s", type(exc).__name__, exc)
            with self._lock:
                self._snapshot.failures += 1
            return False
        now = self.clock()
        with self._lock:
            self._snapshot.workers = workers
            self._snapshot.last_success = now
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll()
            stop.wait(self.interval)

    def snapshot(self) -> CapacitySnapshot:
        with self._lock:
            snap = self._snapshot
            return CapacitySnapshot(dict(snap.workers), snap.last_success, snap.failures)


def broker_stats(config) -> Callable[[float], object]:
    """``inspect stats`` over the exporter's broker (control.py: its URL, transport and TLS
    options), answers merged into {worker: stats} as ``inspect().stats()`` gives them."""
    from .control import broadcast

    def ask(timeout: float) -> object:
        answers: dict = {}
        for reply in broadcast(config, "stats", reply=True, timeout=timeout) or ():
            if isinstance(reply, dict):
                answers.update(reply)
        return answers or None

    return ask
