"""Tasks in flight: what joining a task's events on its id needs to remember."""

from __future__ import annotations


class TrackedTask:
    """One task id between its events.

    A task runs once per delivery: its first run, each retry (a message of its own,
    ``retries`` one higher) and each redelivery of a requeued message. The queue wait
    of a run is measured from when that run's message became runnable: its task-sent
    (or ETA/countdown, if later), or the task-rejected that requeued it.
    """

    __slots__ = ("name", "queue", "settled", "run", "unstarted", "next_run", "started",
                 "earlier_starts", "ready_run", "ready", "more_ready", "held", "first", "stage",
                 "where", "since", "sent")

    def __init__(self) -> None:
        self.name: str | None = None
        self.queue: str | None = None
        # Its events are no longer held for a task-sent: its own came (its queue is
        # known), or holding gave up.
        self.settled = False
        self.run: int | None = None  # retries number of the current delivery
        self.unstarted = False  # the current run was received and its task-started not seen
        # A retry received before the current run's task-started: the worker's main
        # process can read the retry's message (published by the pool process running
        # the current run) before the pool process's word that it accepted the run.
        # The next start is still the current run's; this run follows it.
        self.next_run: int | None = None
        self.started: float | None = None  # current run's task-started, wait not yet observed
        # Starts of earlier runs still waiting for their task-sent when the next run was
        # delivered (a producer's task-sent that came after the retry): run -> started.
        self.earlier_starts: dict[int | None, float] | None = None
        # When runs became runnable, until their start is observed: one in two slots
        # (the usual case); more (a retry's task-sent that overtook the run it
        # retries) in a dict made only then.
        self.ready_run: int | None = None
        self.ready: float | None = None
        self.more_ready: dict[int | None, float] | None = None
        self.held: list | None = None  # (event type, detail) held until the queue is known
        # Its task-sent's timestamp, else its first task-received's: when a workflow it is
        # the root of started.
        self.first: float | None = None
        # Its stage (stages.py): pending in a queue, reserved or running on a worker;
        # where (the queue or worker) and since when (the exporter's clock).
        self.stage = 0
        self.where: str | None = None
        self.since = 0.0
        # Its latest task-sent's timestamp (a retry's own message is sent again): dates
        # its message while it waits in the broker (brokers/heads.py).
        self.sent: float | None = None

    def begin_run(self, run: int | None) -> None:
        """Make ``run``, received, the current run (and none next); a start of the last
        run still waiting for its task-sent is kept under that run."""
        if self.started is not None:
            if self.earlier_starts is None:
                self.earlier_starts = {}
            self.earlier_starts[self.run] = self.started
            self.started = None
        self.run = run
        self.unstarted = True
        self.next_run = None

    def add_ready(self, run: int | None, at: float) -> None:
        if self.ready is None or self.ready_run == run:
            self.ready_run, self.ready = run, at
        else:
            if self.more_ready is None:
                self.more_ready = {}
            self.more_ready[run] = at

    def take_ready(self, run: int | None) -> float | None:
        """When ``run`` (None: whichever is known) became runnable; forgotten once taken."""
        if self.ready is not None and (run is None or self.ready_run == run):
            at, self.ready = self.ready, None
            if self.more_ready:  # the next one moves into the slots
                self.ready_run, self.ready = self.more_ready.popitem()
            return at
        if self.more_ready and run in self.more_ready:
            return self.more_ready.pop(run)
        return None


class TaskTracker:
    """Tasks in flight, bounded by two generations instead of an LRU list.

    New ids go into ``young``; when it holds half the bound, ``old`` is
    dropped (its unfinished tasks counted as evicted) and ``young`` becomes
    ``old``. Every operation is O(1) and memory never exceeds the bound.
    """

    __slots__ = ("half", "young", "old", "evicted", "on_evict")

    def __init__(self, max_tasks: int):
        self.half = max(1, max_tasks // 2)
        self.young: dict[str, TrackedTask] = {}
        self.old: dict[str, TrackedTask] = {}
        self.evicted = 0
        # Told of each generation dropped (the stages forget its tasks): once per
        # half of the bound, so O(1) per task still.
        self.on_evict = None

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
                if self.on_evict is not None and self.old:
                    self.on_evict(self.old)
                self.old = self.young
                self.young = {}
            task = self.young[task_id] = TrackedTask()
        return task

    def pop(self, task_id: str) -> TrackedTask | None:
        task = self.young.pop(task_id, None)
        if task is None:
            task = self.old.pop(task_id, None)
        return task

    def put_back(self, task_id: str, task: TrackedTask) -> None:
        """Keep a task just popped after all (its events are held)."""
        self.young[task_id] = task

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


class RecentIds:
    """About the last ``limit`` ids added, in two generations like TaskTracker: O(1), bounded."""

    __slots__ = ("half", "young", "old")

    def __init__(self, limit: int):
        self.half = max(1, limit // 2)
        self.young: set[str] = set()
        self.old: set[str] = set()

    def add(self, item: str) -> None:
        if len(self.young) >= self.half:
            self.old, self.young = self.young, set()
        self.young.add(item)

    def discard(self, item: str) -> None:
        self.young.discard(item)
        self.old.discard(item)

    def __contains__(self, item: str) -> bool:
        return item in self.young or item in self.old

    def __len__(self) -> int:
        return len(self.young) + len(self.old)
