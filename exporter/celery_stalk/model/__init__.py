"""The bounded in-memory model of a Celery fleet, fed one event at a time.

Pure: no I/O, no threads of its own, no prometheus_client. Every method that
depends on time takes ``now`` (the exporter's own clock, seconds since the
epoch), so tests replay event lists with an injected clock.

Parts: the task ledger (counters, histograms, label caps: ledger.py), the
tasks in flight (tracker.py) joined by the task event handlers (tasks.py),
the worker registry (workers.py), workflows (workflows.py: tasks sharing a
root_id) and the beat schedule's runs (beat.py). Model routes each event through one
dispatch table, doing the checks every handler shares once, and holds the one
lock: the events thread is the only writer; scrapes take snapshots.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

from .beat import BeatEntry, BeatSnapshot, BeatTracker
from .fields import (
    BAD_VALUE,
    MAX_DURATION,
    MAX_TASK_ID_LENGTH,
    MISSING_FIELD,
    MISSING_TYPE,
    NOT_AN_OBJECT,
    id_refusal,
)
from .labels import MAX_LABEL_LENGTH, OTHER, UNKNOWN, LabelCap, exception_class, label_value
from .ledger import SENT_MISSING, TASK_EVENTS, HistogramView, TaskLedger, TaskSnapshot
from .routes import TaskRoutes
from .settings import ModelSettings
from .stages import StageSnapshot
from .tasks import TaskEvents
from .tracker import TaskTracker
from .workers import WORKER_EVENTS, DiagnosisView, WorkerRegistry, WorkerSnapshot, WorkerView
from .workflows import WorkflowSnapshot, WorkflowTracker

__all__ = [
    "BAD_VALUE", "MAX_DURATION", "MAX_LABEL_LENGTH", "MISSING_FIELD", "MISSING_TYPE",
    "BeatEntry", "BeatSnapshot", "DiagnosisView", "StageSnapshot", "WorkflowSnapshot",
    "NOT_AN_OBJECT", "OTHER", "SENT_MISSING", "TASK_EVENTS", "UNKNOWN", "WORKER_EVENTS",
    "HistogramView",
    "LabelCap", "Model", "ModelSettings", "Snapshot", "TaskRoutes", "WorkerView",
    "exception_class", "label_value",
]

# Known but not modelled: counted in events_total under their own name.
OTHER_KNOWN_EVENTS = ("task-cancelled",)
KNOWN_EVENTS = frozenset(TASK_EVENTS + WORKER_EVENTS + OTHER_KNOWN_EVENTS)


@dataclass
class HealthSnapshot:
    events: dict[str, int]
    invalid: dict[str, int]
    last_event: float | None
    tracked_tasks: int
    evicted_tasks: int
    overflow: dict[str, int]  # by label: values past a cap, reported as "other"
    forgotten: dict[str, int]  # by label: values forgotten to make room for new ones


@dataclass
class Snapshot(TaskSnapshot, WorkerSnapshot, HealthSnapshot, WorkflowSnapshot, BeatSnapshot,
               StageSnapshot):
    """The whole model at one instant (tests; collectors take the parts they need)."""

    now: float = 0.0


class Model:
    def __init__(
        self,
        settings: ModelSettings | None = None,
        static_queues: tuple[str, ...] = (),
        routes: tuple[tuple[str, str], ...] = (),
        count_task_events: bool = True,
    ):
        self.settings = s = settings or ModelSettings()
        task_routes = TaskRoutes(routes)
        self.ledger = TaskLedger(s, pinned_queues=tuple(static_queues) + task_routes.queues)
        self.tracker = TaskTracker(s.max_tracked_tasks)
        self.workflows = WorkflowTracker(s, self.tracker)
        self.ledger.on_forget_task.append(self.workflows.forget_name)
        self.beat = BeatTracker(s)
        self.tasks = TaskEvents(self.ledger, self.tracker, task_routes, s, self.workflows,
                                self.beat)
        self.workers = WorkerRegistry(s)
        self.stages = self.tasks.stages
        self.workers.on_lost.append(self.stages.worker_lost)
        self.workers.on_offline.append(self.stages.worker_offline)
        self._lock = threading.Lock()
        self._events: dict[str, int] = {}
        self._invalid: dict[str, int] = {}
        self._last_event: float | None = None
        # The dispatch table: event type -> handler. Task events are keyed by a
        # task id, checked here once for all of them.
        # Without it (the workers serve task metrics), task events are only tallied
        # in events_total, as for a type that is known but not modelled.
        self.counts_task_events = count_task_events
        self._task_handlers = self.tasks.handlers() if count_task_events else {}
        self._other_handlers = self.workers.handlers()
        self.workers.judges_task_events = count_task_events
        self.tasks.worker_records = self.workers.workers  # task-started notes its worker's

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

    def _apply(self, event: object, now: float) -> None:
        if not isinstance(event, dict):
            self._refuse(NOT_AN_OBJECT)
            return
        kind = event.get("type")
        if not isinstance(kind, str):
            self._refuse(MISSING_TYPE)
            return
        handler = self._task_handlers.get(kind)
        if handler is not None:
            task_id = event.get("uuid")
            if type(task_id) is str and len(task_id) <= MAX_TASK_ID_LENGTH:
                reason = handler(task_id, event, now)
            else:
                reason = id_refusal(task_id)
        else:
            handler = self._other_handlers.get(kind)
            if handler is None:
                label = kind if kind in KNOWN_EVENTS else OTHER
                self._events[label] = self._events.get(label, 0) + 1
                self._last_event = now
                return
            reason = handler(event, now)
        if reason:
            self._refuse(reason)
            return
        self._events[kind] = self._events.get(kind, 0) + 1
        self._last_event = now

    def _refuse(self, reason: str) -> None:
        self._invalid[reason] = self._invalid.get(reason, 0) + 1

    def link_up(self, now: float) -> None:
        """The event stream is connected: liveness verdicts resume."""
        with self._lock:
            self.workers.link_up(now)
            self.beat.link_up(now)

    def link_down(self) -> None:
        """The event stream is lost: keep every worker's last verdict until it is back,
        drop the open workflows, whose events are lost with it, and count no beat run
        missed, since none could be seen."""
        with self._lock:
            self.workers.link_down()
            self.workflows.link_down()
            self.beat.link_down()

    def expected_event_interval(self) -> float | None:
        with self._lock:
            return self.workers.expected_event_interval()

    def reconnect_grace(self) -> float:
        """Seconds the workers may still take to reconnect after a broker outage."""
        with self._lock:
            return self.workers.reconnect_grace()

    def tick(self, now: float) -> None:
        """Declare silent workers lost, forget workers gone for worker_ttl, count the
        held events of tasks whose task-sent did not come in time, close settled
        workflows and count the periodic runs that are past due."""
        with self._lock:
            self.workers.tick(now)
            self.tasks.release_expired(now)
            self.workflows.tick(now)
            self.beat.tick(now)

    def set_beat_schedule(self, entries: list[BeatEntry], now: float) -> list[str]:
        """The beat schedule, read from the app or RedBeat; returns entry names refused."""
        with self._lock:
            return self.beat.set_schedule(entries, now)

    def beat_schedule_read(self, ok: bool) -> None:
        """Whether a schedule source that can fail (RedBeat) was read this time; when it
        was not, the schedule read before is kept."""
        with self._lock:
            self.beat.schedule_read(ok)

    def learn_queues(self, names: list[str], now: float) -> None:
        """Queues found on the broker (Redis bindings), so they are always read."""
        with self._lock:
            for name in names:
                self.ledger.queue_names.admit(name, now)

    # -- output -------------------------------------------------------------

    def task_snapshot(self) -> TaskSnapshot:
        with self._lock:
            return self.ledger.snapshot()

    def worker_snapshot(self, now: float) -> WorkerSnapshot:
        with self._lock:
            return self.workers.snapshot(now)

    def workflow_snapshot(self, now: float) -> WorkflowSnapshot:
        with self._lock:
            return self.workflows.snapshot(now)

    def stage_snapshot(self, now: float) -> StageSnapshot:
        """Pending age per queue, longest runs, orphans, reserved per known worker."""
        with self._lock:
            return self._stages(now)

    def _stages(self, now: float) -> StageSnapshot:
        # Without task events (the workers serve task metrics) nothing is reserved as far
        # as we know: no count rather than a 0 beside the workers' own.
        return self.stages.snapshot(now, self.workers.workers if self.counts_task_events else ())

    def beat_snapshot(self) -> BeatSnapshot:
        with self._lock:
            return self.beat.snapshot()

    def health_snapshot(self) -> HealthSnapshot:
        with self._lock:
            return self._health()

    def _health(self) -> HealthSnapshot:
        caps = {
            "task": self.ledger.task_names,
            "queue": self.ledger.queue_names,
            "exception": self.ledger.exception_names,
        }
        return HealthSnapshot(
            events=dict(self._events),
            invalid=dict(self._invalid),
            last_event=self._last_event,
            tracked_tasks=len(self.tracker),
            evicted_tasks=self.tracker.evicted,
            overflow={label: cap.overflow for label, cap in caps.items()},
            forgotten={**{label: cap.forgotten for label, cap in caps.items()},
                       "worker": self.workers.evicted},
        )

    def snapshot(self, now: float) -> Snapshot:
        with self._lock:
            parts = (self.ledger.snapshot(), self.workers.snapshot(now), self._health(),
                     self.workflows.snapshot(now), self.beat.snapshot(),
                     self._stages(now))
        values = {f.name: getattr(part, f.name) for part in parts for f in dataclasses.fields(part)}
        return Snapshot(now=now, **values)

    def unsent_tasks(self) -> dict[str, list[str]]:
        """Task names whose runs ended without a task-sent and that never had one, with
        the queues they were counted under: their producers send no task-sent events."""
        with self._lock:
            counters = self.ledger.counters
            sent = {name for name, _ in counters["task-sent"]}
            found: dict[str, list[str]] = {}
            for name, queue in counters[SENT_MISSING]:
                if name not in sent:
                    found.setdefault(name, []).append(queue)
            return found

    def sent_times(self, task_ids: list[str]) -> dict[str, float]:
        """The task-sent timestamp of each task id still in flight whose task-sent was seen
        (the broker's queue heads are dated by it); one lock, O(1) per id."""
        times = {}
        with self._lock:
            get = self.tracker.get
            for task_id in task_ids:
                task = get(task_id)
                if task is not None and task.sent is not None:
                    times[task_id] = task.sent
        return times

    def known_queues(self) -> list[str]:
        """Queues to read depth for: --queue, task-sent queues and broker bindings."""
        with self._lock:
            return sorted(self.ledger.queue_names.values() - {UNKNOWN, OTHER})
