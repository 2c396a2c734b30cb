"""Task events: joined on the task id into (task, queue) labels, then counted in the ledger.

Only task-sent and task-received name the task, and only task-sent the queue
(see README, "Which queue a task is counted under"). Each handler gets an
already checked task id and returns None when applied, or the reason the event
was refused.

A run of a task ends once: with task-succeeded, task-failed, task-revoked or
task-rejected without requeue, whichever comes first. Its id is then remembered
(``ended``), so a second end Celery sends for the same run is applied but not
counted, until the task is delivered again (received or started: a new run).
"""

from __future__ import annotations

from collections import deque

from .beat import BeatTracker
from .fields import (
    BAD_VALUE,
    MAX_DURATION,
    SEND_STAMP_LAG,
    label_refusal,
    number,
    run_of,
    runnable_from,
)
from .labels import UNKNOWN, exception_class, label_value
from .ledger import SENT_MISSING, Labels, TaskLedger
from .routes import TaskRoutes
from .settings import ModelSettings
from .stages import PENDING, RESERVED, RUNNING, TaskStages
from .tracker import RecentIds, TaskTracker, TrackedTask
from .workflows import REJECTED, REVOKED, WorkflowTracker

# Celery's Reject, raised by a task to refuse its message. Celery 5.3+ reports it
# as a task-failed too, before the task-rejected that tells what happened.
REJECT = "Reject"
ENDS = frozenset({"task-succeeded", "task-failed", "task-revoked", "task-rejected"})
STARTS = frozenset({"task-received", "task-started"})
# The detail a requeued task-rejected is held with: counted as a rejection, but no end.
REQUEUED = "requeued"
# A real task has a handful of events in a hold; a flood of events for one id is
# counted at once rather than kept.
MAX_HELD_EVENTS = 32
# How a run that ended otherwise than succeeded or failed ends its workflow.
WORKFLOW_FAILURES = {"task-rejected": REJECTED, "task-revoked": REVOKED}


class TaskEvents:
    def __init__(self, ledger: TaskLedger, tracker: TaskTracker, routes: TaskRoutes,
                 settings: ModelSettings | None = None, workflows: WorkflowTracker | None = None,
                 beat: BeatTracker | None = None):
        settings = settings or ModelSettings()
        self.ledger = ledger
        # The counters of the events every task has, counted inline (the hot path).
        self._sent = ledger.counters["task-sent"]
        self._received = ledger.counters["task-received"]
        self._started = ledger.counters["task-started"]
        self._succeeded = ledger.counters["task-succeeded"]
        self.tracker = tracker
        self.routes = routes
        # Workflows (tasks sharing a root_id) and beat runs are followed from
        # task-sent/received and the end of each run; cheap checks here keep
        # tasks that are neither (most of them) off their paths.
        self.workflows = workflows or WorkflowTracker(settings, tracker)
        self.awaiting = self.workflows.awaiting  # roots whose children came first (never replaced)
        self.beat = beat or BeatTracker(settings)
        self.periodic = self.beat.by_task  # task names in the beat schedule (updated in place)
        # The queue a task name was last sent to: the fallback for tasks whose
        # own task-sent event was not seen.
        self.queue_of_name: dict[str, str] = {}
        # Tasks that ended and were not delivered again: their ends are not counted again.
        self.ended = RecentIds(settings.ended_task_memory)
        # Tasks whose events are held for their task-sent: (release time, id, task).
        self.hold_for = settings.queue_hold
        self.holds: deque[tuple[float, str, TrackedTask]] = deque()
        # Names held in vain once (their producers send no task-sent): never held again.
        # Admitted names only, so bounded by the task name cap.
        self.unsent_names: set[str] = set()
        ledger.on_forget_task.append(self._forget_task)
        ledger.on_forget_queue.append(self._forget_queue)
        # Where each task in flight is (pending, reserved, running): stages.py.
        self.stages = TaskStages(self.label_of)
        self._enter = self.stages.enter  # the events path
        tracker.on_evict = self.stages.evict
        ledger.on_forget_task.append(self.stages.forget_task)
        ledger.on_forget_queue.append(self.stages.forget_queue)
        # The worker registry's records by hostname (Model sets it): a task-started tells
        # that its worker's task events are on (model/diagnosis.py).
        self.worker_records: dict = {}

    def handlers(self) -> dict:
        return {
            "task-sent": self.on_sent,
            "task-received": self.on_received,
            "task-started": self.on_started,
            "task-succeeded": self.on_succeeded,
            "task-failed": self.on_failed,
            "task-retried": self.on_retried,
            "task-rejected": self.on_rejected,
            "task-revoked": self.on_revoked,
        }

    def labels(self, kind: str, task: TrackedTask | None) -> Labels:
        """(task, queue) labels for an event that carries neither."""
        name = task.name if task is not None else None
        if name is None:
            self.ledger.count_unknown_name(kind)
            return UNKNOWN, UNKNOWN
        queue = task.queue or self.queue_of_name.get(name) or self.routes.queue_for(name)
        return name, queue or UNKNOWN

    def label_of(self, task: TrackedTask) -> Labels:
        """(task, queue) labels of a tracked task, counting nothing: for the stages.
        labels() is not built on it, to keep a call off the events path."""
        name = task.name
        if name is None:
            return UNKNOWN, UNKNOWN
        queue = task.queue or self.queue_of_name.get(name) or self.routes.queue_for(name)
        return name, queue or UNKNOWN

    # -- holding events for a task-sent that comes late ------------------------

    def _held(self, task_id: str, task: TrackedTask, kind: str, detail, now: float) -> bool:
        """Hold the event (True) while only the task's own task-sent can name its queue:
        none of its name seen yet, no route, and its producers send task-sent events as
        far as we know. A worker's first events for a task name can beat the producer's
        task-sent. Called only for tasks not settled (no task-sent of their own seen)."""
        held = task.held
        if held is None:
            name = task.name
            if (name is None or name in self.queue_of_name or name in self.unsent_names
                    or self.routes.queue_for(name) is not None):
                return False
            held = task.held = []
            self.holds.append((now + self.hold_for, task_id, task))
        held.append((kind, detail))
        if len(held) >= MAX_HELD_EVENTS:
            self._release(task_id, task, now)
            task.settled = True  # never held again
        return True

    def _release(self, task_id: str, task: TrackedTask, now: float) -> Labels:
        """Count a task's held events under the labels it has now."""
        held, task.held = task.held, None
        labels = self.labels(held[0][0], task)
        for kind, detail in held:
            self._count(kind, labels, detail)
        if _ends(held):  # it ended while held
            if not task.settled:  # and its task-sent did not come
                self.ledger.count(SENT_MISSING, labels)
            self.tracker.pop(task_id)
            self.stages.leave(task_id, task)
            self.ended.add(task_id)
            kind, detail = next(item for item in reversed(held) if _is_end(*item))
            self._left_workflow(task_id, task, kind, detail, {}, now)
        return labels

    def release_expired(self, now: float) -> None:
        """Count the held events of tasks whose task-sent did not come in time."""
        holds = self.holds
        while holds and holds[0][0] <= now:
            _, task_id, task = holds.popleft()
            if task.held is None:  # released when its task-sent came
                continue
            if self._release(task_id, task, now)[1] == UNKNOWN and task.name is not None:
                self.unsent_names.add(task.name)

    def _count(self, kind: str, labels: Labels, detail) -> None:
        """Count one event; ``detail``: a task-succeeded's run time, a task-failed's
        exception label."""
        self.ledger.count(kind, labels)
        if kind == "task-succeeded":
            if detail is not None and detail <= MAX_DURATION:
                self.ledger.observe_runtime(labels, max(detail, 0.0))
        elif kind == "task-failed":
            self.ledger.count_exception(labels, detail)

    # -- runs and their queue wait ----------------------------------------------

    def _observe_start(self, task: TrackedTask, labels: Labels) -> None:
        """Observe the current run's queue wait once its start and its begin are known."""
        begin = task.take_ready(task.run)
        if begin is None:  # its task-sent has not come (yet)
            return
        started, task.started = task.started, None
        self._observe_wait(labels, started - begin)

    def _observe_earlier_start(self, task: TrackedTask, run: int | None, labels: Labels) -> None:
        """Observe the wait of an earlier run whose task-sent came only now."""
        started = task.earlier_starts.pop(run, None) if task.earlier_starts else None
        if started is not None:
            begin = task.take_ready(run)
            if begin is not None:
                self._observe_wait(labels, started - begin)

    def _observe_wait(self, labels: Labels, wait: float) -> None:
        if not wait <= MAX_DURATION:  # a clock far off (or inf): not a wait at all
            self.ledger.clock_skew += 1
            return
        if wait < 0:
            if wait < -SEND_STAMP_LAG:  # producer and worker clocks disagree
                self.ledger.clock_skew += 1
            wait = 0.0
        self.ledger.observe_wait(labels, wait)

    # -- handlers ---------------------------------------------------------------

    def on_sent(self, task_id: str, event: dict, now: float) -> str | None:
        name = event.get("name")
        refused = label_refusal(name)
        if refused:
            return refused
        ledger = self.ledger
        queue = event.get("queue") or event.get("routing_key")
        if isinstance(queue, str) and queue:
            if label_value(queue) is None:
                return BAD_VALUE
            queue = ledger.queue_names.admit(queue, now)
        else:
            queue = None  # the fallback rule applies, as for events that carry no queue
        name = ledger.task_names.admit(name, now)
        if queue is not None:
            self.queue_of_name[name] = queue
        if task_id in self.ended:  # came after its task ended: counted, nothing to join
            task = TrackedTask()
            task.name, task.queue = name, queue
            ledger.count("task-sent", self.labels("task-sent", task))
            root = event.get("root_id")
            if root != task_id:  # its workflow counts it, as ended
                self.workflows.seen(task_id, root, task, event, now)
            return None
        task = self.tracker.get_or_add(task_id)
        task.name, task.queue, task.settled = name, queue, True
        run = run_of(event)
        ready = runnable_from(number(event.get("timestamp")), event.get("eta"))
        if ready is not None:
            task.add_ready(run, ready)
        labels = self.labels("task-sent", task)
        counter = self._sent
        counter[labels] = counter.get(labels, 0) + 1
        if task.stage < RESERVED or run != task.run:  # else: the delivery seen came first
            self._enter(task_id, task, PENDING, labels[1], now)
        if task.held is not None:  # the worker's first events beat this one
            self._release(task_id, task, now)
        if task.earlier_starts:  # even the next run was delivered before this one
            self._observe_earlier_start(task, run, labels)
        if task.started is not None:  # task-started overtook task-sent
            self._observe_start(task, labels)
        sent = number(event.get("timestamp"))
        task.sent = sent
        if task.first is None:
            task.first = sent
        root = event.get("root_id")
        if root != task_id or self.awaiting:
            self.workflows.seen(task_id, root, task, event, now)
        if self.periodic and event["name"] in self.periodic:
            self.beat.run(task_id, event, now)
        return None

    def on_received(self, task_id: str, event: dict, now: float) -> str | None:
        name = event.get("name")
        refused = label_refusal(name)
        if refused:
            return refused
        self.ended.discard(task_id)  # delivered again: a new run, which ends again
        task = self.tracker.get_or_add(task_id)
        if task.name is None:
            task.name = self.ledger.task_names.admit(name, now)
        run = run_of(event)
        if (task.unstarted and run is not None and task.run is not None
                and run > task.run):  # a retry of a run whose start is still to come
            task.next_run = run
        else:
            task.begin_run(run)
        # The worker's name, not checked as a label: only the registry's (checked)
        # names are ever looked up with it.
        hostname = event.get("hostname")
        self._enter(task_id, task, RESERVED, hostname if type(hostname) is str else None, now)
        if task.settled or not self._held(task_id, task, "task-received", None, now):
            labels = self.labels("task-received", task)
            counter = self._received
            counter[labels] = counter.get(labels, 0) + 1
        if task.first is None:  # no task-sent (yet): first seen received
            task.first = number(event.get("timestamp"))
        root = event.get("root_id")
        if root != task_id or self.awaiting:
            self.workflows.seen(task_id, root, task, event, now)
        if self.periodic and name in self.periodic:
            self.beat.run(task_id, event, now)
        return None

    def on_started(self, task_id: str, event: dict, now: float) -> str | None:
        host = event.get("hostname")  # inline, the hot path: see worker_records
        worker = self.worker_records.get(host) if type(host) is str else None
        if worker is not None:
            worker.diagnosis.task_event_at = now
        self.ended.discard(task_id)
        task = self.tracker.get_or_add(task_id)
        task.started = number(event.get("timestamp"))
        hostname = event.get("hostname")
        if task.stage == RESERVED and task.where == hostname:  # started where received
            task.stage = RUNNING
            task.since = now
        else:
            self._enter(task_id, task, RUNNING, hostname if type(hostname) is str else None, now)
        if task.settled or not self._held(task_id, task, "task-started", None, now):
            labels = self.labels("task-started", task)
            counter = self._started
            counter[labels] = counter.get(labels, 0) + 1
            if task.started is not None:
                self._observe_start(task, labels)
        task.unstarted = False
        if task.next_run is not None:  # its retry was received already: now the current run
            task.begin_run(task.next_run)
        return None

    def _end(self, task_id: str, kind: str, detail, now: float, event: dict) -> None:
        """Count the end of a task's run, unless that run already ended."""
        if task_id in self.ended:
            return  # a second end of the same run: applied, not counted again
        task = self.tracker.pop(task_id)
        if task is not None and task.stage:
            self.stages.leave(task_id, task)
        if task is not None and task.held is not None:
            self.tracker.put_back(task_id, task)  # until its held events are released
            if not _ends(task.held):
                task.held.append((kind, detail))
                self.workflows.end_seen(task_id, event)  # its end's time, until it is released
            return
        self.ended.add(task_id)
        if task is None or task_id in self.workflows.member_of:  # else: in no workflow
            self._left_workflow(task_id, task, kind, detail, event, now)
        labels = self.labels(kind, task)
        if task is not None and not task.settled:  # its task-sent never came
            self.ledger.count(SENT_MISSING, labels)
        if kind == "task-succeeded":  # the hot path, inline
            counter = self._succeeded
            counter[labels] = counter.get(labels, 0) + 1
            if detail is not None and detail <= MAX_DURATION:
                self.ledger.observe_runtime(labels, max(detail, 0.0))
        else:
            self._count(kind, labels, detail)

    def _left_workflow(self, task_id: str, task: TrackedTask | None, kind: str, detail,
                       event: dict, now: float) -> None:
        """A run ended for good: its workflow learns how (a failure's exception label)."""
        failure = detail if kind == "task-failed" else WORKFLOW_FAILURES.get(kind)
        self.workflows.done(task_id, task, event, failure, now)

    def on_succeeded(self, task_id: str, event: dict, now: float) -> str | None:
        self._end(task_id, "task-succeeded", number(event.get("runtime")), now, event)
        return None

    def on_failed(self, task_id: str, event: dict, now: float) -> str | None:
        exception = exception_class(event.get("exception"), event.get("traceback"))
        if exception == REJECT:  # not a failure: the task-rejected that follows says what it is
            return None
        if task_id not in self.ended:
            exception = self.ledger.exception_names.admit(exception, now)
        self._end(task_id, "task-failed", exception, now, event)
        return None

    def on_retried(self, task_id: str, event: dict, now: float) -> str | None:
        # Not an end: the retry's own message is sent (and often received) already.
        task = self.tracker.get(task_id)
        if task is not None and task.stage == RUNNING:  # the retry's task-sent not seen (yet)
            self.stages.leave(task_id, task)
        if task is not None and task.next_run is not None:  # the retried run's start was lost
            task.begin_run(task.next_run)
        if task is None or task.settled or not self._held(task_id, task, "task-retried",
                                                            None, now):
            self.ledger.count("task-retried", self.labels("task-retried", task))
        return None

    def on_rejected(self, task_id: str, event: dict, now: float) -> str | None:
        if not event.get("requeue"):
            self._end(task_id, "task-rejected", None, now, event)
            return None
        # Requeued: not an end. The redelivery's wait runs from now.
        task = self.tracker.get(task_id)
        if task is not None:
            at = number(event.get("timestamp"))
            if at is not None:
                task.add_ready(task.run, at)
            self.stages.enter(task_id, task, PENDING, self.label_of(task)[1], now)
        if task is None or task.settled or not self._held(task_id, task, "task-rejected",
                                                            REQUEUED, now):
            self.ledger.count("task-rejected", self.labels("task-rejected", task))
        return None

    def on_revoked(self, task_id: str, event: dict, now: float) -> str | None:
        self._end(task_id, "task-revoked", None, now, event)
        return None

    def _forget_task(self, name: str) -> None:
        self.queue_of_name.pop(name, None)
        self.unsent_names.discard(name)
        self.routes.forget(name)

    def _forget_queue(self, queue: str) -> None:
        for name in [name for name, q in self.queue_of_name.items() if q == queue]:
            del self.queue_of_name[name]


def _ends(held: list) -> bool:
    """Whether held events leave their task ended: an end not followed by a new delivery."""
    for kind, detail in reversed(held):
        if _is_end(kind, detail):
            return True
        if kind in STARTS:
            return False
    return False


def _is_end(kind: str, detail) -> bool:
    """A held event that ends its run: a requeued rejection is no end (it is delivered again)."""
    return kind in ENDS and detail is not REQUEUED
