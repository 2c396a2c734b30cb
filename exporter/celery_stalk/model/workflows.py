"""Workflows: the tasks that share a root_id, followed as a whole.

Celery gives every task it sends from inside a task the root_id of the task it
was sent from (and that task's id as its parent_id), so the steps of a chain,
the members of a group or chord sent from a task, a chord's callback and its
unlock task all carry the id of the task that began it. A workflow is such a
set with more than one task, labelled by the root task's name (its ``task``
label, so it is capped with task names).

- It starts with its root: the root's task-sent timestamp (without task-sent
  events, its task-received's). It is counted as started when its second task
  appears.
- It is done when none of its tasks has been in flight for ``settle`` seconds
  (exporter's clock): a chain's next step, a chord's callback or a retried
  chord unlock is sent before the task that sends it finishes, but its events
  can arrive in another order. A retried task stays in flight.
- Its outcome is failed when any of its tasks failed for good (task-failed;
  task-rejected without requeue and task-revoked count as failed too, under
  Celery's own names for them, Reject and TaskRevokedError), else succeeded.
- Its duration runs from its start to the latest finish of any of its tasks
  (the workers' timestamps).

What cannot be followed is counted, not guessed (``orphans``): tasks whose root
was never seen (the exporter started mid-workflow, or the root's events were
lost), tasks that arrive after their workflow settled, and tasks of a workflow
dropped to stay within the bounds. A child's task-sent is published by the task
that sends it, before that task finishes, so it comes first; without task-sent
events from the workers, a child is first seen when a worker receives it, maybe
after its root finished and was forgotten, and counts as an orphan. Nothing is
kept for the many tasks that are in no workflow, except for a task whose end
came before any other event of it: it is remembered for ``settle`` seconds, so
that its late task-sent does not leave it in flight in a workflow forever.

Bounded: at most ``max_workflows`` open workflows and ``max_tracked_tasks``
tasks in them; past either, the oldest open workflow is dropped (counted in
``evicted``). When the event stream is lost, events of open workflows may be
lost with it, so they are dropped too rather than reported with a wrong
outcome or left in flight forever.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

from .fields import MAX_DURATION, MAX_TASK_ID_LENGTH, number
from .labels import UNKNOWN
from .ledger import Histogram, HistogramView
from .settings import ModelSettings
from .tracker import TaskTracker, TrackedTask

SUCCEEDED = "succeeded"
FAILED = "failed"
# Celery's own exception classes for these ends: what a result backend stores for them.
REJECTED = "Reject"
REVOKED = "TaskRevokedError"
# Why an open workflow was dropped (celery_stalk_workflows_evicted_total{reason}).
LIMIT = "limit"
LINK_LOST = "link_lost"
# Tasks in one workflow: a chain of a few steps up to a large fan-out.
TASKS_BUCKETS = (2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Workflow:
    __slots__ = ("root", "name", "started", "ended", "members", "in_flight", "failed",
                 "failures", "idle_since", "open")

    def __init__(self, root: str, name: str | None, started: float | None):
        self.root = root
        self.name = name  # the root's task label; None while its own event has not been seen
        self.started = started
        self.ended: float | None = None  # the latest finish of a member (its timestamp)
        self.members: dict[str, bool] = {}  # task id -> still in flight
        self.in_flight = 0
        self.failed = False
        self.failures: list[tuple[str, str]] | None = None  # (task, exception) before the name
        self.idle_since: float | None = None  # exporter's clock, when in_flight fell to 0
        self.open = True


@dataclass
class WorkflowSnapshot:
    workflows_started: dict[str, int]
    workflows_finished: dict[tuple[str, str], int]  # (workflow, outcome)
    workflow_duration: dict[str, HistogramView]
    workflow_tasks: dict[str, HistogramView]
    workflow_buckets: tuple[float, ...]
    workflow_tasks_buckets: tuple[float, ...]
    workflows_in_flight: dict[str, int]
    workflow_oldest_age: dict[str, float]  # seconds since the oldest open one started
    workflow_task_failed: dict[tuple[str, str, str], int]  # (workflow, task, exception)
    workflows_evicted: dict[str, int]
    workflow_orphan_tasks: int


def _first_seen(task: TrackedTask) -> float | None:
    return task.first


class WorkflowTracker:
    def __init__(self, settings: ModelSettings, tracker: TaskTracker):
        self.settle = settings.workflow_settle
        self.max_open = settings.max_workflows
        self.max_members = settings.max_tracked_tasks
        self.buckets = settings.workflow_buckets
        self.tracker = tracker
        self.open: dict[str, Workflow] = {}  # by root id, oldest first
        # Open workflows whose root's own event has not been seen (a subset of open).
        # TaskEvents reads it on every task-sent/received: keep it a plain dict.
        self.awaiting: dict[str, Workflow] = {}
        self.member_of: dict[str, Workflow] = {}  # task id -> its workflow, while in flight
        self.members = 0  # tasks of open workflows, in flight or not
        self.idle: deque[tuple[float, Workflow]] = deque()
        # Tasks that ended before any other event of theirs was seen, kept for settle
        # to twice settle seconds in two generations (aging them out is O(1)):
        # (failure, finish timestamp).
        self.recent: dict[str, tuple] = {}
        self.recent_old: dict[str, tuple] = {}
        self.recent_since = -math.inf
        self.recent_limit = max(1, settings.max_tracked_tasks // 2)
        # Output.
        self.started: dict[str, int] = {}
        self.finished: dict[tuple[str, str], int] = {}
        self.duration: dict[str, Histogram] = {}
        self.tasks: dict[str, Histogram] = {}
        self.task_failed: dict[tuple[str, str, str], int] = {}
        self.evicted: dict[str, int] = {LIMIT: 0, LINK_LOST: 0}
        self.orphans = 0

    # -- input (called by TaskEvents) ------------------------------------------

    def seen(self, task_id: str, root: object, task: TrackedTask, event: dict, now: float) -> None:
        """A task-sent or task-received of a task with another root, or of a root
        that open workflows are waiting for."""
        if root == task_id:
            waiting = self.awaiting.pop(task_id, None)
            if waiting is not None:
                self._adopt(waiting, task, event, now)
            return
        if type(root) is not str or not root or len(root) > MAX_TASK_ID_LENGTH:
            return  # no root: not part of a workflow
        workflow = self.open.get(root)
        if workflow is not None and task_id in workflow.members:
            return  # its other event, or a retry
        if self.members >= self.max_members and self.open:
            self._evict(next(iter(self.open.values())), LIMIT)
            workflow = self.open.get(root)  # it may have been the oldest
        if workflow is None:
            workflow = self._open(root, event, now)
        if self.recent or self.recent_old:  # a task may have ended before it started
            self._join(workflow, task_id, now)
            return
        workflow.members[task_id] = True  # _join's common case, inline: the hot path of workflows
        workflow.in_flight += 1
        workflow.idle_since = None
        self.member_of[task_id] = workflow
        self.members += 1

    def done(self, task_id: str, task: TrackedTask | None, event: dict, failure: str | None,
             now: float) -> None:
        """A task finished for good (succeeded, failed, rejected, revoked): TaskEvents
        calls it for members of a workflow, and for tasks whose end is their first event."""
        workflow = self.member_of.pop(task_id, None)
        if workflow is None:
            if task is None:  # its start may still come: it must not look in flight then
                self.recent[task_id] = (failure, event.get("timestamp"))
            return
        self._finished(workflow, task_id, task.name if task is not None else None,
                       failure, event.get("timestamp"), now)

    def end_seen(self, task_id: str, event: dict) -> None:
        """The end of a task whose events are held (TaskEvents): its time, for the duration."""
        workflow = self.member_of.get(task_id)
        if workflow is not None:
            self._end_at(workflow, event.get("timestamp"))

    def tick(self, now: float) -> None:
        """Close the workflows idle for the settle period."""
        idle, horizon = self.idle, now - self.settle
        while idle and idle[0][0] <= horizon:
            since, workflow = idle.popleft()
            if workflow.open and workflow.in_flight == 0 and workflow.idle_since == since:
                self._close(workflow)
        if now - self.recent_since >= self.settle or len(self.recent) >= self.recent_limit:
            self._age_recent(now)

    def link_down(self) -> None:
        """Events of the open workflows may be lost from now on: drop them."""
        for workflow in list(self.open.values()):
            self._evict(workflow, LINK_LOST)

    def forget_name(self, name: str) -> None:
        """A task name forgotten by its cap: drop the series it labels."""
        for series in (self.started, self.duration, self.tasks):
            series.pop(name, None)
        for ended in [key for key in self.finished if key[0] == name]:
            del self.finished[ended]
        for failed in [key for key in self.task_failed if name in (key[0], key[1])]:
            del self.task_failed[failed]

    # -- workflows ---------------------------------------------------------------

    def _open(self, root: str, event: dict, now: float) -> Workflow:
        if len(self.open) >= self.max_open:
            self._evict(next(iter(self.open.values())), LIMIT)
        root_task = self.tracker.get(root)
        if root_task is not None and root_task.name is not None:  # the root is in flight
            workflow = self.open[root] = Workflow(root, root_task.name, _first_seen(root_task))
            self._join(workflow, root, now)
            self._count_start(workflow, event)
            return workflow
        # Not seen yet (late or lost): wait for the root's own event.
        workflow = self.open[root] = self.awaiting[root] = Workflow(root, None, None)
        return workflow

    def _adopt(self, workflow: Workflow, task: TrackedTask, event: dict, now: float) -> None:
        """The root's own event, after some of its children's."""
        root = workflow.root
        workflow.name = task.name or UNKNOWN
        workflow.started = _first_seen(task)
        finished = self._recently_finished(root)
        if finished is not None:  # its end overtook its start
            workflow.members[root] = False
            self.members += 1
            self._end_at(workflow, finished[1])
            if finished[0] is not None:
                workflow.failures = [*(workflow.failures or ()), (workflow.name, finished[0])]
        elif root not in workflow.members:
            self._join(workflow, root, now)
        self._count_start(workflow, event)
        failures, workflow.failures = workflow.failures, None
        for task_name, exception in failures or ():
            self._fail(workflow, task_name, exception)

    def _join(self, workflow: Workflow, task_id: str, now: float) -> None:
        finished = self._recently_finished(task_id) if self.recent or self.recent_old else None
        self.members += 1
        if finished is not None:  # its end came before its start: already done
            workflow.members[task_id] = False
            self._end_at(workflow, finished[1])
            if finished[0] is not None:
                self._fail(workflow, UNKNOWN, finished[0])
            if workflow.in_flight == 0 and workflow.idle_since is None:
                self._idle(workflow, now)
            return
        workflow.members[task_id] = True
        workflow.in_flight += 1
        workflow.idle_since = None
        self.member_of[task_id] = workflow

    def _finished(self, workflow: Workflow, task_id: str, task_name: str | None,
                  failure: str | None, ended: object, now: float) -> None:
        if workflow.members.get(task_id):
            workflow.members[task_id] = False
            workflow.in_flight -= 1
        ended = number(ended)
        if ended is not None and (workflow.ended is None or ended > workflow.ended):
            workflow.ended = ended
        if failure is not None:
            self._fail(workflow, task_name or UNKNOWN, failure)
        if workflow.in_flight == 0:
            self._idle(workflow, now)

    def _idle(self, workflow: Workflow, now: float) -> None:
        workflow.idle_since = now
        self.idle.append((now, workflow))

    def _end_at(self, workflow: Workflow, timestamp: object) -> None:
        ended = number(timestamp)
        if ended is not None and (workflow.ended is None or ended > workflow.ended):
            workflow.ended = ended

    def _fail(self, workflow: Workflow, task_name: str, exception: str) -> None:
        workflow.failed = True
        if workflow.name is None:
            workflow.failures = [*(workflow.failures or ()), (task_name, exception)]
            return
        key = (workflow.name, task_name, exception)
        self.task_failed[key] = self.task_failed.get(key, 0) + 1

    def _count_start(self, workflow: Workflow, event: dict) -> None:
        if workflow.started is None:  # the root left no timestamp: its first child's
            workflow.started = number(event.get("timestamp"))
        name = workflow.name or UNKNOWN
        self.started[name] = self.started.get(name, 0) + 1

    def _close(self, workflow: Workflow) -> None:
        self._remove(workflow)
        name = workflow.name
        if name is None:  # its root was never seen
            self.orphans += len(workflow.members)
            return
        key = (name, FAILED if workflow.failed else SUCCEEDED)
        self.finished[key] = self.finished.get(key, 0) + 1
        if workflow.started is not None and workflow.ended is not None:
            duration = workflow.ended - workflow.started
            if duration <= MAX_DURATION:  # else a clock far off: not a duration
                _observe(self.duration, name, self.buckets, max(duration, 0.0))
        _observe(self.tasks, name, TASKS_BUCKETS, len(workflow.members))


    def _evict(self, workflow: Workflow, reason: str) -> None:
        self._remove(workflow)
        member_of = self.member_of
        for task_id, in_flight in workflow.members.items():
            if in_flight:
                member_of.pop(task_id, None)
        self.evicted[reason] += 1

    def _remove(self, workflow: Workflow) -> None:
        workflow.open = False
        del self.open[workflow.root]
        self.awaiting.pop(workflow.root, None)
        self.members -= len(workflow.members)

    # -- tasks finished outside a workflow -------------------------------------

    def _recently_finished(self, task_id: str) -> tuple | None:
        """(failure, finish timestamp) of a task that ended before it was seen starting."""
        finished = self.recent.pop(task_id, None)
        if finished is None:
            finished = self.recent_old.pop(task_id, None)
        return finished

    def _age_recent(self, now: float) -> None:
        self.recent_old, self.recent = self.recent, {}
        self.recent_since = now

    # -- output ------------------------------------------------------------------

    def snapshot(self, now: float) -> WorkflowSnapshot:
        in_flight: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for workflow in self.open.values():
            name = workflow.name
            if name is None:
                continue
            in_flight[name] = in_flight.get(name, 0) + 1
            if workflow.started is not None:
                age = max(0.0, now - workflow.started)
                if age > oldest.get(name, -1.0):
                    oldest[name] = age
        return WorkflowSnapshot(
            workflows_started=dict(self.started),
            workflows_finished=dict(self.finished),
            workflow_duration={k: _view(h) for k, h in self.duration.items()},
            workflow_tasks={k: _view(h) for k, h in self.tasks.items()},
            workflow_buckets=self.buckets,
            workflow_tasks_buckets=tuple(float(b) for b in TASKS_BUCKETS),
            workflows_in_flight=in_flight,
            workflow_oldest_age=oldest,
            workflow_task_failed=dict(self.task_failed),
            workflows_evicted=dict(self.evicted),
            workflow_orphan_tasks=self.orphans,
        )


def _view(hist: Histogram) -> HistogramView:
    """A histogram's values at snapshot time: the model keeps changing the histogram."""
    return HistogramView(hist.counts[:], hist.total)


def _observe(hists: dict[str, Histogram], name: str, buckets: tuple, value: float) -> None:
    hist = hists.get(name)
    if hist is None:
        hist = hists[name] = Histogram(len(buckets))
    hist.counts[bisect_left(buckets, value)] += 1
    hist.total += value
