"""The bounded in-memory model of a Celery fleet, fed one event at a time.

Pure: no I/O, no threads of its own, no prometheus_client. Every method that
depends on time takes ``now`` (the exporter's own clock, seconds since the
epoch), so tests replay event lists with an injected clock.

One writer (the events thread) calls :meth:`Model.apply` and
:meth:`Model.tick`; scrapes call :meth:`Model.snapshot`, which copies what
they need under the lock so a scrape never sees a half-applied event.
"""

from __future__ import annotations

import fnmatch
import math
import re
import threading
from bisect import bisect_left
from dataclasses import dataclass
from typing import NamedTuple
from datetime import datetime, timezone

UNKNOWN = "unknown"
OTHER = "other"

TASK_EVENTS = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-rejected",
    "task-revoked",
)
WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")
# Known but not modelled: counted in events_total under their own name.
OTHER_KNOWN_EVENTS = ("task-cancelled",)
KNOWN_EVENTS = frozenset(TASK_EVENTS + WORKER_EVENTS + OTHER_KNOWN_EVENTS)

# Bounds on what one event may carry into the model. Real task names, queues
# and nodenames are far shorter (a DNS name is at most 253 characters); longer
# strings are garbage or an attack and would become megabyte-sized labels.
MAX_LABEL_LENGTH = 300
MAX_TASK_ID_LENGTH = 256  # Celery task ids are 36-character UUIDs
# Durations beyond this are clock errors, not waits or run times: observing
# them would poison the histogram's _sum for good.
MAX_DURATION = 30 * 24 * 3600.0
MAX_HEARTBEAT_INTERVAL = 3600.0  # a larger freq would keep a dead worker "up" forever
MAX_GAUGE_INT = 2**53  # exactly representable as a float sample

# Reasons an event is skipped (celery_stalk_events_invalid_total{reason}); a
# fixed set, never taken from the input, so the series stay bounded.
NOT_AN_OBJECT = "not_an_object"
MISSING_TYPE = "missing_type"
MISSING_FIELD = "missing_field"  # absent or of the wrong JSON type
BAD_VALUE = "bad_value"  # right type, unusable value: empty, too long, not UTF-8

# ``safe_repr(exc)`` as Celery sends it: "ValueError('boom')",
# "celery.exceptions.SoftTimeLimitExceeded()", "TimeLimitExceeded(60.0,)".
_EXCEPTION_CLASS = re.compile(r"\s*([A-Za-z_][\w.]*)")


def exception_class(text: object) -> str:
    """Class name (no module, never the message) from a task-failed exception field."""
    if not isinstance(text, str):
        return UNKNOWN
    match = _EXCEPTION_CLASS.match(text[: 4 * MAX_LABEL_LENGTH])
    if not match:
        return UNKNOWN
    return label_value(match.group(1).rsplit(".", 1)[-1]) or UNKNOWN


def label_value(value: object) -> str | None:
    """``value`` if it can be a label value (a non-empty string of valid UTF-8 no
    longer than MAX_LABEL_LENGTH), else None."""
    if not isinstance(value, str) or not value or len(value) > MAX_LABEL_LENGTH:
        return None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: undecodable bytes upstream
            return None
    return value


@dataclass(frozen=True)
class ModelSettings:
    worker_timeout: float = 20.0
    worker_ttl: float = 3600.0
    max_tracked_tasks: int = 100_000
    runtime_buckets: tuple[float, ...] = (
        0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
    )
    wait_buckets: tuple[float, ...] = (
        0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
    )
    max_task_names: int = 1000
    max_queues: int = 500
    max_exceptions: int = 500
    max_workers: int = 2000
    # Celery itself declares a worker offline after 2.5 heartbeat intervals;
    # a worker whose own heartbeat interval is long gets at least that much.
    heartbeat_grace_factor: float = 2.5


class LabelCap:
    """Admits at most ``limit`` distinct values; the rest become ``other``."""

    __slots__ = ("limit", "seen", "overflow")

    def __init__(self, limit: int, preset: tuple[str, ...] = ()):
        self.limit = limit
        self.seen: set[str] = set(preset)
        self.overflow = 0

    def admit(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        self.overflow += 1
        return OTHER


class Histogram:
    """Per-bucket (not cumulative) counts plus the sum; the last bucket is +Inf."""

    __slots__ = ("counts", "total")

    def __init__(self, n_buckets: int):
        self.counts = [0] * (n_buckets + 1)
        self.total = 0.0

    def copy(self) -> HistogramView:
        return HistogramView(self.counts[:], self.total)


class HistogramView(NamedTuple):
    """A Histogram's values at snapshot time (a tuple: cheap to make by the thousand)."""

    counts: list[int]
    total: float


class TrackedTask:
    """What the join needs to know about one task id between its events."""

    __slots__ = ("name", "queue", "sent", "eligible", "started", "wait_observed")

    def __init__(self) -> None:
        self.name: str | None = None
        self.queue: str | None = None
        self.sent: float | None = None  # producer's timestamp of task-sent
        self.eligible: float | None = None  # ETA/countdown: not runnable before this
        self.started: float | None = None  # worker's timestamp of task-started
        self.wait_observed = False


class TaskTracker:
    """Tasks in flight, bounded by two generations instead of an LRU list.

    New ids go into ``young``; when it holds half the bound, ``old`` is
    dropped (its unfinished tasks counted as evicted) and ``young`` becomes
    ``old``. Every operation is O(1) and memory never exceeds the bound.
    """

    __slots__ = ("half", "young", "old", "evicted")

    def __init__(self, max_tasks: int):
        self.half = max(1, max_tasks // 2)
        self.young: dict[str, TrackedTask] = {}
        self.old: dict[str, TrackedTask] = {}
        self.evicted = 0

    def get(self, task_id: str) -> TrackedTask | None:
        task = self.young.get(task_id)
        if task is None:
            task = self.old.get(task_id)
        return task

    def get_or_add(self, task_id: str) -> TrackedTask:
        task = self.get(task_id)
        if task is None:
            if len(self.young) >= self.half:
                self.evicted += len(self.old)
                self.old = self.young
                self.young = {}
            task = self.young[task_id] = TrackedTask()
        return task

    def pop(self, task_id: str) -> TrackedTask | None:
        task = self.young.pop(task_id, None)
        if task is None:
            task = self.old.pop(task_id, None)
        return task

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


class TaskRoutes:
    """Static task name -> queue routes, read as Celery reads ``task_routes``.

    A name with a ``*`` is a shell glob (fnmatch), any other is exact. Exact
    names win, then globs in the order given, as in Celery's router.
    """

    __slots__ = ("exact", "patterns", "_cache")

    def __init__(self, routes: tuple[tuple[str, str], ...] = ()):
        self.exact: dict[str, str] = {}
        self.patterns: list[tuple[re.Pattern, str]] = []
        for pattern, queue in routes:
            if "*" in pattern:
                self.patterns.append((re.compile(fnmatch.translate(pattern)), queue))
            else:
                self.exact.setdefault(pattern, queue)
        # Bounded: only names admitted by the task name cap are looked up.
        self._cache: dict[str, str | None] = {}

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.exact.values(), *(q for _, q in self.patterns)]))

    def queue_for(self, name: str) -> str | None:
        if name in self.exact:
            return self.exact[name]
        if name not in self._cache:
            self._cache[name] = next((q for p, q in self.patterns if p.match(name)), None)
        return self._cache[name]


class Worker:
    __slots__ = ("last_seen", "active", "processed", "freq", "offline", "lost", "version")

    def __init__(self) -> None:
        self.last_seen = 0.0  # exporter's receive time: worker clocks cannot fool it
        self.active = 0
        self.processed = 0
        self.freq = 2.0
        self.offline = False  # said goodbye (worker-offline): a clean shutdown
        self.lost = False  # went silent without saying goodbye
        self.version = ""


@dataclass
class WorkerView:
    up: bool
    offline: bool  # said goodbye (worker-offline): down, but not lost
    last_heartbeat: float
    active: int
    processed: int
    version: str


@dataclass
class Snapshot:
    """A consistent copy of the model at one instant, for one scrape."""

    now: float
    counters: dict[str, dict[tuple[str, str], int]]
    exceptions: dict[tuple[str, str, str], int]
    runtime: dict[tuple[str, str], HistogramView]
    wait: dict[tuple[str, str], HistogramView]
    runtime_buckets: tuple[float, ...]
    wait_buckets: tuple[float, ...]
    workers: dict[str, WorkerView]
    workers_lost: int
    events: dict[str, int]
    invalid: dict[str, int]
    name_unknown: dict[str, int]
    clock_skew: int
    last_event: float | None
    tracked_tasks: int
    evicted_tasks: int
    overflow: dict[str, int]
    consumer_connected: bool
    reconnects: int
    stalls: int


class Model:
    def __init__(
        self,
        settings: ModelSettings | None = None,
        static_queues: tuple[str, ...] = (),
        routes: tuple[tuple[str, str], ...] = (),
    ):
        self.settings = s = settings or ModelSettings()
        self._routes = TaskRoutes(routes)
        self._lock = threading.Lock()
        self._tracker = TaskTracker(s.max_tracked_tasks)
        self._counters: dict[str, dict[tuple[str, str], int]] = {t: {} for t in TASK_EVENTS}
        self._exceptions: dict[tuple[str, str, str], int] = {}
        self._runtime: dict[tuple[str, str], Histogram] = {}
        self._wait: dict[tuple[str, str], Histogram] = {}
        self._workers: dict[str, Worker] = {}
        self._workers_lost = 0
        self._events: dict[str, int] = {}
        self._invalid: dict[str, int] = {}
        self._name_unknown: dict[str, int] = {}
        self._clock_skew = 0
        self._last_event: float | None = None
        # The queue a task name was last sent to: the fallback for tasks whose
        # own task-sent event was not seen (see README, "Which queue").
        self._queue_of_name: dict[str, str] = {}
        self._task_names = LabelCap(s.max_task_names, (UNKNOWN,))
        self._queue_names = LabelCap(
            s.max_queues, (UNKNOWN,) + tuple(static_queues) + self._routes.queues
        )
        self._exception_names = LabelCap(s.max_exceptions, (UNKNOWN,))
        self._worker_names = LabelCap(s.max_workers)
        self._connected = False
        self._connected_since = 0.0
        self._reconnects = 0
        self._stalls = 0
        self._handlers = {
            "task-sent": self._on_sent,
            "task-received": self._on_received,
            "task-started": self._on_started,
            "task-succeeded": self._on_succeeded,
            "task-failed": self._on_failed,
            "task-retried": self._on_retried,
            "task-rejected": self._on_rejected,
            "task-revoked": self._on_revoked,
            "worker-online": self._on_worker,
            "worker-heartbeat": self._on_worker,
            "worker-offline": self._on_worker,
        }

    # -- input ------------------------------------------------------------

    def apply(self, event: object, now: float) -> None:
        """Apply one decoded event. Malformed events are counted and skipped."""
        with self._lock:
            self._apply(event, now)

    def apply_many(self, events: list, now: float) -> None:
        """Apply a batch (a ``task.multi`` body) under one lock acquisition."""
        with self._lock:
            for event in events:
                self._apply(event, now)

    def record_invalid(self, reason: str) -> None:
        """Count a message the consumer could not even decode into events."""
        with self._lock:
            self._invalid[reason] = self._invalid.get(reason, 0) + 1

    def consumer_connected(self, now: float) -> None:
        with self._lock:
            if self._connected_since:  # connected before: this is a reconnect
                self._reconnects += 1
            if not self._connected:
                # Back from an outage: every worker gets a full timeout to be
                # heard again. Not after a stall (see consumer_stalled).
                self._connected_since = now
            self._connected = True

    def consumer_disconnected(self) -> None:
        with self._lock:
            self._connected = False

    def consumer_stalled(self) -> None:
        """The consumer heard nothing although workers were up, and reconnects.

        The model stays connected: the silence is the stream's fault, so a
        worker that is really gone keeps its clock running and is still
        reported lost on time, however often the consumer reconnects.
        """
        with self._lock:
            self._stalls += 1

    def expected_event_interval(self) -> float | None:
        """The shortest heartbeat interval among workers that are up: some event
        must arrive at least this often. None when no worker is up, so silence
        proves nothing."""
        with self._lock:
            intervals = [w.freq for w in self._workers.values() if not (w.offline or w.lost)]
        return min(intervals, default=None)

    def _apply(self, event: object, now: float) -> None:
        if not isinstance(event, dict):
            self._invalid[NOT_AN_OBJECT] = self._invalid.get(NOT_AN_OBJECT, 0) + 1
            return
        kind = event.get("type")
        if not isinstance(kind, str):
            self._invalid[MISSING_TYPE] = self._invalid.get(MISSING_TYPE, 0) + 1
            return
        handler = self._handlers.get(kind)
        if handler is None:
            label = kind if kind in KNOWN_EVENTS else OTHER
        else:
            reason = handler(event, now)
            if reason:
                self._invalid[reason] = self._invalid.get(reason, 0) + 1
                return
            label = kind
        self._events[label] = self._events.get(label, 0) + 1
        self._last_event = now

    # -- task events --------------------------------------------------------
    # Each handler returns None when applied, or the reason it was refused.

    def _labels(self, kind: str, task: TrackedTask | None) -> tuple[str, str]:
        """(task, queue) labels for an event that carries neither."""
        name = task.name if task is not None else None
        if name is None:
            self._name_unknown[kind] = self._name_unknown.get(kind, 0) + 1
            return UNKNOWN, UNKNOWN
        queue = task.queue or self._queue_of_name.get(name) or self._routes.queue_for(name)
        return name, queue or UNKNOWN

    def _count(self, kind: str, labels: tuple[str, str]) -> None:
        counter = self._counters[kind]
        counter[labels] = counter.get(labels, 0) + 1

    def _on_sent(self, event: dict, now: float) -> str | None:
        task_id, name = event.get("uuid"), event.get("name")
        refused = _id_refusal(task_id) or _label_refusal(name)
        if refused:
            return refused
        queue = event.get("queue") or event.get("routing_key")
        if isinstance(queue, str) and queue:
            if label_value(queue) is None:
                return BAD_VALUE
            queue = self._queue_names.admit(queue)
        else:
            queue = None  # the fallback rule applies, as for events that carry no queue
        name = self._task_names.admit(name)
        task = self._tracker.get_or_add(task_id)
        task.name, task.queue = name, queue
        if queue is not None:
            self._queue_of_name[name] = queue
        sent = _number(event.get("timestamp"))
        task.sent = sent
        task.eligible = _max_eta(sent, event.get("eta"))
        task.wait_observed = False
        labels = self._labels("task-sent", task)
        self._count("task-sent", labels)
        if task.started is not None:  # task-started overtook task-sent
            self._observe_wait(task, labels)
        return None

    def _on_received(self, event: dict, now: float) -> str | None:
        task_id, name = event.get("uuid"), event.get("name")
        refused = _id_refusal(task_id) or _label_refusal(name)
        if refused:
            return refused
        task = self._tracker.get_or_add(task_id)
        if task.name is None:
            task.name = self._task_names.admit(name)
        self._count("task-received", self._labels("task-received", task))
        return None

    def _on_started(self, event: dict, now: float) -> str | None:
        task_id = event.get("uuid")
        refused = _id_refusal(task_id)
        if refused:
            return refused
        task = self._tracker.get_or_add(task_id)
        task.started = _number(event.get("timestamp"))
        labels = self._labels("task-started", task)
        self._count("task-started", labels)
        if task.sent is not None:
            self._observe_wait(task, labels)
        return None

    def _observe_wait(self, task: TrackedTask, labels: tuple[str, str]) -> None:
        if task.wait_observed or task.started is None or task.eligible is None:
            return
        task.wait_observed = True
        wait = task.started - task.eligible
        if not wait <= MAX_DURATION:  # a clock far off (or inf): not a wait at all
            self._clock_skew += 1
            return
        if wait < 0:  # producer and worker clocks disagree
            self._clock_skew += 1
            wait = 0.0
        _observe(self._wait, labels, self.settings.wait_buckets, wait)

    def _on_succeeded(self, event: dict, now: float) -> str | None:
        task_id = event.get("uuid")
        refused = _id_refusal(task_id)
        if refused:
            return refused
        task = self._tracker.pop(task_id)
        labels = self._labels("task-succeeded", task)
        self._count("task-succeeded", labels)
        runtime = _number(event.get("runtime"))
        if runtime is not None and runtime <= MAX_DURATION:
            _observe(self._runtime, labels, self.settings.runtime_buckets, max(runtime, 0.0))
        return None

    def _on_failed(self, event: dict, now: float) -> str | None:
        task_id = event.get("uuid")
        refused = _id_refusal(task_id)
        if refused:
            return refused
        labels = self._labels("task-failed", self._tracker.pop(task_id))
        self._count("task-failed", labels)
        exc = self._exception_names.admit(exception_class(event.get("exception")))
        key = (labels[0], labels[1], exc)
        self._exceptions[key] = self._exceptions.get(key, 0) + 1
        return None

    def _on_retried(self, event: dict, now: float) -> str | None:
        task_id = event.get("uuid")
        refused = _id_refusal(task_id)
        if refused:
            return refused
        task = self._tracker.get(task_id)
        if task is not None:  # kept: the same id will be sent and received again
            task.started = None
        self._count("task-retried", self._labels("task-retried", task))
        return None

    def _on_rejected(self, event: dict, now: float) -> str | None:
        task_id = event.get("uuid")
        refused = _id_refusal(task_id)
        if refused:
            return refused
        if event.get("requeue"):
            task = self._tracker.get(task_id)  # it will be delivered again
            if task is not None:
                task.started = None
        else:
            task = self._tracker.pop(task_id)
        self._count("task-rejected", self._labels("task-rejected", task))
        return None

    def _on_revoked(self, event: dict, now: float) -> str | None:
        task_id = event.get("uuid")
        refused = _id_refusal(task_id)
        if refused:
            return refused
        self._count("task-revoked", self._labels("task-revoked", self._tracker.pop(task_id)))
        return None

    # -- workers ------------------------------------------------------------

    def _on_worker(self, event: dict, now: float) -> str | None:
        hostname = event.get("hostname")
        refused = _label_refusal(hostname)
        if refused:
            return refused
        worker = self._workers.get(hostname)
        if worker is None:
            if self._worker_names.admit(hostname) == OTHER:
                return None  # counted as overflow; the event itself was fine
            worker = self._workers[hostname] = Worker()
        worker.last_seen = now
        worker.lost = False
        worker.offline = event["type"] == "worker-offline"
        active, processed = _gauge_int(event.get("active")), _gauge_int(event.get("processed"))
        if active is not None:
            worker.active = active
        if processed is not None:
            worker.processed = processed
        freq = _number(event.get("freq"))
        if freq is not None and 0 < freq <= MAX_HEARTBEAT_INTERVAL:
            worker.freq = freq
        version = event.get("sw_ver")
        if isinstance(version, str):
            worker.version = version[:64]
        return None

    def _timeout_for(self, worker: Worker) -> float:
        s = self.settings
        return max(s.worker_timeout, worker.freq * s.heartbeat_grace_factor)

    def _silent_for(self, worker: Worker, now: float) -> float:
        # After a reconnect every worker gets a full timeout to be heard
        # again, so a broker outage does not look like a fleet of dead workers.
        return now - max(worker.last_seen, self._connected_since)

    def _is_up(self, worker: Worker, now: float) -> bool:
        if worker.offline or worker.lost:
            return False
        if not self._connected:  # we cannot tell; keep the last verdict
            return True
        return self._silent_for(worker, now) <= self._timeout_for(worker)

    def tick(self, now: float) -> None:
        """Declare silent workers lost and forget workers gone for worker_ttl."""
        with self._lock:
            forget = []
            for hostname, worker in self._workers.items():
                if worker.offline or worker.lost:
                    if now - worker.last_seen > self.settings.worker_ttl:
                        forget.append(hostname)
                elif self._connected and not self._is_up(worker, now):
                    worker.lost = True
                    self._workers_lost += 1
            for hostname in forget:
                del self._workers[hostname]
                self._worker_names.seen.discard(hostname)

    # -- output -------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        with self._lock:
            workers = {
                name: WorkerView(
                    up=self._is_up(w, now),
                    offline=w.offline,
                    last_heartbeat=w.last_seen,
                    active=w.active,
                    processed=w.processed,
                    version=w.version,
                )
                for name, w in self._workers.items()
            }
            return Snapshot(
                now=now,
                counters={kind: dict(c) for kind, c in self._counters.items()},
                exceptions=dict(self._exceptions),
                runtime={k: h.copy() for k, h in self._runtime.items()},
                wait={k: h.copy() for k, h in self._wait.items()},
                runtime_buckets=self.settings.runtime_buckets,
                wait_buckets=self.settings.wait_buckets,
                workers=workers,
                workers_lost=self._workers_lost,
                events=dict(self._events),
                invalid=dict(self._invalid),
                name_unknown=dict(self._name_unknown),
                clock_skew=self._clock_skew,
                last_event=self._last_event,
                tracked_tasks=len(self._tracker),
                evicted_tasks=self._tracker.evicted,
                overflow={
                    "task": self._task_names.overflow,
                    "queue": self._queue_names.overflow,
                    "exception": self._exception_names.overflow,
                    "worker": self._worker_names.overflow,
                },
                consumer_connected=self._connected,
                reconnects=self._reconnects,
                stalls=self._stalls,
            )

    def known_queues(self) -> list[str]:
        """Queues to read depth for: --queue, task-sent queues and broker bindings."""
        with self._lock:
            return sorted(self._queue_names.seen - {UNKNOWN, OTHER})

    def learn_queues(self, names: list[str]) -> None:
        """Queues found on the broker (Redis bindings), so they are always read."""
        with self._lock:
            for name in names:
                self._queue_names.admit(name)


def _number(value: object) -> float | None:
    """A finite float from a JSON number, else None (bools, NaN, inf, huge ints)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _gauge_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_GAUGE_INT:
        return value
    return None


def _id_refusal(task_id: object) -> str | None:
    """Why an event's task id cannot be joined on, or None if it can."""
    if not isinstance(task_id, str):
        return MISSING_FIELD
    return BAD_VALUE if len(task_id) > MAX_TASK_ID_LENGTH else None


def _label_refusal(value: object) -> str | None:
    """Why a task name or nodename cannot be a label value, or None if it can."""
    if not isinstance(value, str):
        return MISSING_FIELD
    return BAD_VALUE if label_value(value) is None else None


def _max_eta(sent: float | None, eta: object) -> float | None:
    """When the task became runnable: its ETA/countdown if later than sent."""
    if sent is None:
        return None
    if isinstance(eta, str) and eta:
        try:
            when = datetime.fromisoformat(eta)
            if when.tzinfo is None:
                # Celery sends naive ETAs in UTC when enable_utc is on (the default).
                when = when.replace(tzinfo=timezone.utc)
            return max(sent, when.timestamp())
        except (ValueError, OverflowError):  # not an ISO date, or out of range
            return sent
    return sent


def _observe(hists: dict, labels: tuple[str, str], buckets: tuple[float, ...], value: float) -> None:
    hist = hists.get(labels)
    if hist is None:
        hist = hists[labels] = Histogram(len(buckets))
    hist.counts[bisect_left(buckets, value)] += 1
    hist.total += value
