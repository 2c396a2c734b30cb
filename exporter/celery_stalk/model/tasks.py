"""Task events: joined on the task id into (task, queue) labels, then counted in the ledger.

Only task-sent and task-received name the task, and only task-sent the queue
(see README, "Which queue a task is counted under"). Each handler gets an
already checked task id and returns None when applied, or the reason the event
was refused.
"""

from __future__ import annotations

from .beat import BeatTracker
from .fields import BAD_VALUE, MAX_DURATION, label_refusal, number, runnable_from
from .labels import UNKNOWN, exception_class, label_value
from .ledger import Labels, TaskLedger
from .routes import TaskRoutes
from .tracker import TaskTracker, TrackedTask
from .workflows import REJECTED, REVOKED, WorkflowTracker


class TaskEvents:
    def __init__(self, ledger: TaskLedger, tracker: TaskTracker, routes: TaskRoutes,
                 workflows: WorkflowTracker, beat: BeatTracker):
        self.ledger = ledger
        # The counters of the events every task has, counted inline (the hot path).
        self._sent = ledger.counters["task-sent"]
        self._received = ledger.counters["task-received"]
        self._started = ledger.counters["task-started"]
        self._succeeded = ledger.counters["task-succeeded"]
        self.tracker = tracker
        self.routes = routes
        # Workflows (tasks sharing a root_id) and beat runs are followed from
        # task-sent/received and the end of each task; cheap checks here keep
        # tasks that are neither (most of them) off their paths.
        self.workflows = workflows
        self.awaiting = workflows.awaiting  # roots whose children came first (kept, never replaced)
        self.beat = beat
        self.periodic = beat.by_task  # task names in the beat schedule (updated in place)
        # The queue a task name was last sent to: the fallback for tasks whose
        # own task-sent event was not seen.
        self.queue_of_name: dict[str, str] = {}
        ledger.on_forget_task.append(self._forget_task)
        ledger.on_forget_queue.append(self._forget_queue)

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
        task = self.tracker.get_or_add(task_id)
        task.name, task.queue = name, queue
        if queue is not None:
            self.queue_of_name[name] = queue
        sent = number(event.get("timestamp"))
        task.sent = sent
        task.eligible = runnable_from(sent, event.get("eta"))
        task.wait_observed = False
        labels = self.labels("task-sent", task)
        counter = self._sent
        counter[labels] = counter.get(labels, 0) + 1
        if task.started is not None:  # task-started overtook task-sent
            self._observe_wait(task, labels)
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
        task = self.tracker.get_or_add(task_id)
        if task.name is None:
            task.name = self.ledger.task_names.admit(name, now)
        labels = self.labels("task-received", task)
        counter = self._received
        counter[labels] = counter.get(labels, 0) + 1
        root = event.get("root_id")
        if root != task_id or self.awaiting:
            self.workflows.seen(task_id, root, task, event, now)
        if self.periodic and name in self.periodic:
            self.beat.run(task_id, event, now)
        return None

    def on_started(self, task_id: str, event: dict, now: float) -> str | None:
        task = self.tracker.get_or_add(task_id)
        task.started = number(event.get("timestamp"))
        labels = self.labels("task-started", task)
        counter = self._started
        counter[labels] = counter.get(labels, 0) + 1
        if task.sent is not None:
            self._observe_wait(task, labels)
        return None

    def _observe_wait(self, task: TrackedTask, labels: Labels) -> None:
        if task.wait_observed or task.started is None or task.eligible is None:
            return
        task.wait_observed = True
        wait = task.started - task.eligible
        if not wait <= MAX_DURATION:  # a clock far off (or inf): not a wait at all
            self.ledger.clock_skew += 1
            return
        if wait < 0:  # producer and worker clocks disagree
            self.ledger.clock_skew += 1
            wait = 0.0
        self.ledger.observe_wait(labels, wait)

    def on_succeeded(self, task_id: str, event: dict, now: float) -> str | None:
        task = self.tracker.pop(task_id)
        labels = self.labels("task-succeeded", task)
        counter = self._succeeded
        counter[labels] = counter.get(labels, 0) + 1
        runtime = number(event.get("runtime"))
        if runtime is not None and runtime <= MAX_DURATION:
            self.ledger.observe_runtime(labels, max(runtime, 0.0))
        if task is None or task_id in self.workflows.member_of:  # else: in no workflow
            self.workflows.done(task_id, task, event, None, now)
        return None

    def on_failed(self, task_id: str, event: dict, now: float) -> str | None:
        ledger = self.ledger
        task = self.tracker.pop(task_id)
        labels = self.labels("task-failed", task)
        ledger.count("task-failed", labels)
        exception = ledger.exception_names.admit(exception_class(event.get("exception")), now)
        ledger.count_exception(labels, exception)
        self.workflows.done(task_id, task, event, exception, now)
        return None

    def on_retried(self, task_id: str, event: dict, now: float) -> str | None:
        task = self.tracker.get(task_id)
        if task is not None:  # kept: the same id will be sent and received again
            task.started = None
        self.ledger.count("task-retried", self.labels("task-retried", task))
        return None

    def on_rejected(self, task_id: str, event: dict, now: float) -> str | None:
        if event.get("requeue"):
            task = self.tracker.get(task_id)  # it will be delivered again
            if task is not None:
                task.started = None
        else:
            task = self.tracker.pop(task_id)
            self.workflows.done(task_id, task, event, REJECTED, now)
        self.ledger.count("task-rejected", self.labels("task-rejected", task))
        return None

    def on_revoked(self, task_id: str, event: dict, now: float) -> str | None:
        task = self.tracker.pop(task_id)
        self.ledger.count("task-revoked", self.labels("task-revoked", task))
        self.workflows.done(task_id, task, event, REVOKED, now)
        return None

    def _forget_task(self, name: str) -> None:
        self.queue_of_name.pop(name, None)
        self.routes.forget(name)

    def _forget_queue(self, queue: str) -> None:
        for name in [name for name, q in self.queue_of_name.items() if q == queue]:
            del self.queue_of_name[name]
