"""Where each task in flight is: waiting in its queue, reserved by a worker, or running on one.

A task's stage follows its events: task-sent puts it in its queue (pending),
task-received on a worker (reserved: prefetched, not started), task-started
running there; its end, or a task-retried before the retry's own task-sent,
takes it out. A worker that is lost (silent, no worker-offline) orphans what it
had reserved or was running: counted by (task, queue), then no longer in a
stage; the tracker keeps the task, so a redelivery joins its name and queue
again. A worker that shuts down cleanly orphans nothing: a warm shutdown
finishes what runs and hands its prefetched messages back to the broker.

Pending tasks are kept per queue, the reserved and running ones per worker
(``held``: a task that starts where it was received only changes its stage,
with no move), in dicts in the order they entered, stamped with the exporter's
receive time (worker and producer clocks cannot skew it): entering and leaving
are O(1), and the oldest pending task of a queue is the first of its dict.
The longest-running task of each (task, queue) and the reserved count of each
worker are found at snapshot time from the tasks held (about the fleet's
concurrency and prefetch in a healthy fleet, the tracker's bound at worst),
never on the events path.
Everything here holds tracked tasks only: when the tracker drops a generation,
its tasks leave their stage (``evict``), so memory follows the tracker's bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .tracker import TrackedTask

NOWHERE, PENDING, RESERVED, RUNNING = 0, 1, 2, 3

Labels = tuple[str, str]  # (task, queue)


@dataclass
class StageSnapshot:
    oldest_pending: dict[str, float]  # queue -> seconds its oldest pending task waits
    oldest_running: dict[Labels, float]  # (task, queue) -> seconds its longest run so far
    orphaned: dict[Labels, int]
    reserved: dict[str, int]  # worker -> tasks received and not started


class TaskStages:
    def __init__(self, label_of: Callable[[TrackedTask], Labels]):
        # (task, queue) of a tracked task, without side effects (no counting).
        self.label_of = label_of
        self.pending: dict[str, dict[str, TrackedTask]] = {}  # queue label -> tasks
        # worker -> its tasks reserved or running (their stage tells which)
        self.held: dict[str | None, dict[str, TrackedTask]] = {}
        self.orphaned: dict[Labels, int] = {}
        # By stage (PENDING, RESERVED, RUNNING): where -> tasks. Index 0, NOWHERE, holds none.
        self._books: tuple[dict, ...] = ({}, self.pending, self.held, self.held)

    # -- moves (the events path: O(1) each) ------------------------------------

    # A queue's or worker's dict is kept when it empties (tasks come and go through the
    # same few all the time): empty ones are dropped with each generation the tracker
    # drops, so they stay as few as the keys of the tasks tracked.

    def enter(self, task_id: str, task: TrackedTask, stage: int, where: str | None,
              now: float) -> None:
        """Put a task in ``stage`` at ``where`` (a queue for PENDING, else a worker)."""
        books = self._books
        if task.stage:  # leave(), inline: this is the events path
            tasks = books[task.stage].get(task.where)
            if tasks is not None:
                tasks.pop(task_id, None)
        book = books[stage]
        tasks = book.get(where)
        if tasks is None:
            tasks = book[where] = {}
        tasks[task_id] = task
        task.stage = stage
        task.where = where
        task.since = now

    def leave(self, task_id: str, task: TrackedTask) -> None:
        stage = task.stage
        if not stage:
            return
        task.stage = NOWHERE
        tasks = self._books[stage].get(task.where)
        if tasks is not None:
            tasks.pop(task_id, None)

    def evict(self, dropped: dict[str, TrackedTask]) -> None:
        """The tracker dropped a generation: its tasks leave their stage, and the dicts
        of queues and workers left empty are dropped."""
        for task_id, task in dropped.items():
            if task.stage:
                self.leave(task_id, task)
        for book in (self.pending, self.held):
            for key in [key for key, tasks in book.items() if not tasks]:
                del book[key]

    # -- workers leaving -------------------------------------------------------

    def worker_lost(self, worker: str) -> None:
        """Count what the lost worker held as orphaned, and take it out of its stage."""
        for task in self.held.pop(worker, {}).values():
            task.stage = NOWHERE
            labels = self.label_of(task)
            self.orphaned[labels] = self.orphaned.get(labels, 0) + 1

    def worker_offline(self, worker: str) -> None:
        """A clean shutdown: what it still held went back to the broker, orphaned nothing."""
        for task in self.held.pop(worker, {}).values():
            task.stage = NOWHERE

    # -- forgetting labels -----------------------------------------------------

    def forget_queue(self, queue: str) -> None:
        for task in self.pending.pop(queue, {}).values():
            task.stage = NOWHERE
        for labels in [labels for labels in self.orphaned if labels[1] == queue]:
            del self.orphaned[labels]

    def forget_task(self, name: str) -> None:
        for labels in [labels for labels in self.orphaned if labels[0] == name]:
            del self.orphaned[labels]

    # -- output ----------------------------------------------------------------

    def snapshot(self, now: float, workers) -> StageSnapshot:
        """``workers``: the names the reserved counts are reported for (the registry's)."""
        oldest_pending = {}
        for queue, tasks in self.pending.items():
            if tasks:
                first = next(iter(tasks.values()))
                oldest_pending[queue] = max(0.0, now - first.since)
        oldest_running: dict[Labels, float] = {}
        reserved: dict[str | None, int] = {}
        label_of = self.label_of
        for worker, tasks in self.held.items():
            count = 0
            for task in tasks.values():
                if task.stage == RESERVED:
                    count += 1
                    continue
                labels = label_of(task)
                age = now - task.since
                if age > oldest_running.get(labels, -1.0):
                    oldest_running[labels] = age
            reserved[worker] = count
        return StageSnapshot(
            oldest_pending=oldest_pending,
            oldest_running={labels: max(0.0, age) for labels, age in oldest_running.items()},
            orphaned=dict(self.orphaned),
            reserved={worker: reserved.get(worker, 0) for worker in workers},
        )
