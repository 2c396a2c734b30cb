"""Tasks in flight: what joining a task's events on its id needs to remember."""

from __future__ import annotations


class TrackedTask:
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
