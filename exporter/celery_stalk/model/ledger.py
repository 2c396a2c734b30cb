"""The task ledger: counters and histograms by (task, queue), and the caps on their labels."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable, NamedTuple

from .labels import UNKNOWN, LabelCap
from .settings import ModelSettings

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

Labels = tuple[str, str]  # (task, queue)
# Not an event: runs of tasks that ended with no task-sent seen for them (tasks.py).
SENT_MISSING = "sent-missing"


class Histogram:
    """Per-bucket (not cumulative) counts plus the sum; the last bucket is +Inf.

    ``generation``: the ledger's snapshot generation it belongs to. One of an
    older generation may be in a snapshot, so it is never changed again: the
    ledger changes a copy (copy on write).
    """

    __slots__ = ("counts", "total", "generation")

    def __init__(self, n_buckets: int, generation: int = 0, previous: Histogram | None = None):
        self.counts = previous.counts[:] if previous else [0] * (n_buckets + 1)
        self.total = previous.total if previous else 0.0
        self.generation = generation


class HistogramView(NamedTuple):
    """A histogram's values, as the renderer reads them (``counts``, ``total``): for
    families built by hand."""

    counts: list[int]
    total: float


@dataclass
class TaskSnapshot:
    counters: dict[str, dict[Labels, int]]
    exceptions: dict[tuple[str, str, str], int]
    runtime: dict[Labels, Histogram]  # never changed once in a snapshot
    wait: dict[Labels, Histogram]
    runtime_buckets: tuple[float, ...]
    wait_buckets: tuple[float, ...]
    name_unknown: dict[str, int]
    clock_skew: int


class TaskLedger:
    """Everything counted about tasks, by label; the labels admitted through caps.

    When a cap forgets an idle name to make room, every series carrying it is
    dropped here (and the join is told, through ``on_forget_task`` and
    ``on_forget_queue``), so memory stays bounded by the caps.
    """

    def __init__(self, settings: ModelSettings, pinned_queues: tuple[str, ...] = ()):
        s = settings
        self.runtime_buckets = s.runtime_buckets
        self.wait_buckets = s.wait_buckets
        self.counters: dict[str, dict[Labels, int]] = {
            kind: {} for kind in (*TASK_EVENTS, SENT_MISSING)}
        self.exceptions: dict[tuple[str, str, str], int] = {}
        self.runtime: dict[Labels, Histogram] = {}
        self.wait: dict[Labels, Histogram] = {}
        self.name_unknown: dict[str, int] = {}
        self.clock_skew = 0
        self.generation = 0  # of snapshots: see Histogram
        self.on_forget_task: list[Callable[[str], None]] = []
        self.on_forget_queue: list[Callable[[str], None]] = []
        self.task_names = LabelCap(s.max_task_names, (UNKNOWN,), s.label_ttl, self._forget_task)
        self.queue_names = LabelCap(s.max_queues, (UNKNOWN, *pinned_queues), s.label_ttl,
                                    self._forget_queue)
        self.exception_names = LabelCap(s.max_exceptions, (UNKNOWN,), s.label_ttl,
                                        self._forget_exception)

    # -- counting (the hot path) ----------------------------------------------

    def count(self, kind: str, labels: Labels) -> None:
        counter = self.counters[kind]
        counter[labels] = counter.get(labels, 0) + 1

    def count_exception(self, labels: Labels, exception: str) -> None:
        key = (labels[0], labels[1], exception)
        self.exceptions[key] = self.exceptions.get(key, 0) + 1

    def count_unknown_name(self, kind: str) -> None:
        self.name_unknown[kind] = self.name_unknown.get(kind, 0) + 1

    def observe_runtime(self, labels: Labels, seconds: float) -> None:
        _observe(self.runtime, labels, self.runtime_buckets, seconds, self.generation)

    def observe_wait(self, labels: Labels, seconds: float) -> None:
        _observe(self.wait, labels, self.wait_buckets, seconds, self.generation)

    # -- forgetting idle labels -----------------------------------------------

    def _forget_task(self, name: str) -> None:
        self._drop(lambda labels: labels[0] == name)
        for listener in self.on_forget_task:
            listener(name)

    def _forget_queue(self, queue: str) -> None:
        self._drop(lambda labels: labels[1] == queue)
        for listener in self.on_forget_queue:
            listener(queue)

    def _forget_exception(self, exception: str) -> None:
        for key in [key for key in self.exceptions if key[2] == exception]:
            del self.exceptions[key]

    def _drop(self, match: Callable[[tuple], bool]) -> None:
        for series in (*self.counters.values(), self.exceptions, self.runtime, self.wait):
            for key in [key for key in series if match(key)]:
                del series[key]

    # -- output ---------------------------------------------------------------

    def snapshot(self) -> TaskSnapshot:
        # The histograms are handed out as they are, not copied (10,000 copies would
        # hold the model's lock for ms): from the next generation on, the events
        # thread copies one before it changes it, once per scrape at most.
        self.generation += 1
        return TaskSnapshot(
            counters={kind: dict(c) for kind, c in self.counters.items()},
            exceptions=dict(self.exceptions),
            runtime=dict(self.runtime),
            wait=dict(self.wait),
            runtime_buckets=self.runtime_buckets,
            wait_buckets=self.wait_buckets,
            name_unknown=dict(self.name_unknown),
            clock_skew=self.clock_skew,
        )


def _observe(hists: dict, labels: Labels, buckets: tuple[float, ...], value: float,
             generation: int) -> None:
    hist = hists.get(labels)
    if hist is None or hist.generation != generation:  # new, or in a snapshot: copy on write
        hist = hists[labels] = Histogram(len(buckets), generation, hist)
    hist.counts[bisect_left(buckets, value)] += 1
    hist.total += value
