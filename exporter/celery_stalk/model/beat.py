"""Periodic tasks: the beat schedule, and whether each entry ran when it was due.

The schedule comes in as data (BeatEntry): the entry's name, its task, the reprs
of its arguments as Celery puts them in task events, and a function that gives
the due time after a run (made from Celery's own schedule classes outside the
model, see celery_stalk/schedules/). Runs are seen on the event stream: the
task-sent event of a task whose name and argument reprs match an entry (else,
when the producer sends no task-sent events, its task-received). Beat marks its
messages with a header (celery_beat_task), but Celery does not put headers in
task events, so a run of the same task with the same arguments sent by other
code counts as a run of the entry, and two entries with the same task and
arguments cannot be told apart: a run goes to the one due first.

For each entry, from the run's own timestamp (beat's clock):

- a run at or after its due time (or up to ``tolerance`` before it) is on time
  or late by ``run - due``; the next due time is computed from the run, as beat
  does (an interval counts from the last run, a crontab from the clock);
- a due time passed by more than ``grace`` (exporter's clock) with no run is a
  missed run; the entry moves on to its following due time, and a run that
  comes later still is the late run of the missed one (beat catching up after
  a restart);
- any other run, before its due time while the last one was on time, is a
  duplicate: a second beat, or the same task sent by hand with the same
  arguments.

While the event stream is down no run is counted missed (runs sent meanwhile
cannot be seen); after it, entries past due start over as after a start. Until
an entry's first run is seen (after a start or a schedule change) the
exporter does not know when it last ran: its due time is the first one after
the start (the upper bound for a healthy beat), and its first run, whenever it
comes, is no duplicate.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .fields import MAX_DURATION, number
from .labels import OTHER, label_value
from .ledger import Histogram, HistogramView
from .settings import ModelSettings

# How late a run was sent: from beat's usual milliseconds to a late catch-up.
DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# How early a run may come and still be the due one: beat computes the next
# due time from when it reserved the run, a few milliseconds before it sends.
EARLY_TOLERANCE = 1.0  # seconds, and at most a tenth of the period
MAX_MISSES_PER_TICK = 1000  # a tiny interval after a long pause catches up over a few ticks
RECENT_RUNS = 10_000  # task ids of matched runs kept, so sent and received count once


@dataclass(frozen=True)
class BeatEntry:
    name: str
    task: str
    args: str | None = None  # repr as in task events; None: not known (lazy arguments), any
    kwargs: str | None = None
    schedule: str = ""  # how the dashboard shows it: "every 10 seconds", "crontab 0 4 * * *"
    # The first due time after a run at the given time (seconds since the epoch);
    # None: no more runs. Without one, only ``due`` from the source is known.
    next_due: Callable[[float], float | None] | None = None
    due: float | None = None  # the next due time as the source knows it (RedBeat)
    last_run: float | None = None  # when it last ran, as the source knows it


class EntryState:
    __slots__ = ("entry", "label", "due", "last_run", "runs", "missed", "duplicates", "delay",
                 "late_due", "last_missed", "anchored")

    def __init__(self, entry: BeatEntry, label: str, now: float):
        self.entry = entry
        self.label = label
        self.runs = 0
        self.missed = 0
        self.duplicates = 0
        self.delay = Histogram(len(DELAY_BUCKETS))
        self.late_due: float | None = None  # due time of the last missed run, until it runs
        self.last_missed: float | None = None  # due time of the last missed run
        self.last_run = entry.last_run
        self.due: float | None = None
        self.anchored = False
        self.schedule(now)

    def schedule(self, now: float) -> None:
        """Due time from what the source knows, else the first one after now."""
        entry = self.entry
        self.anchored = entry.due is not None or entry.last_run is not None
        if entry.due is not None:
            self.due = entry.due
        elif entry.last_run is not None:
            self.due = self.next_due(entry.last_run)
        else:
            self.due = self.next_due(now)

    def adopt_due(self, due: float | None) -> None:
        """A due time the source computed, if it is one this entry has not run or missed."""
        if due is None or self.due is not None:
            return
        if due > max(self.last_run or -math.inf, self.last_missed or -math.inf):
            self.due = due

    def next_due(self, after: float) -> float | None:
        if self.entry.next_due is None:
            return None
        try:
            due = self.entry.next_due(after)
        except Exception:  # a schedule class that cannot answer: no due time, no false misses
            return None
        return due if due is not None and math.isfinite(due) else None

    def tolerance(self, due: float) -> float:
        following = self.next_due(due)
        if following is None or following <= due:
            return EARLY_TOLERANCE
        return min(EARLY_TOLERANCE, (following - due) / 10)

    def ran(self, at: float) -> None:
        self.runs += 1
        due = self.due
        if due is not None and at >= due - self.tolerance(due):
            self._observe(at - due)
            following = self.next_due(at)
            if following is not None and following <= due + self.tolerance(due):
                following = self.next_due(due)  # a fixed clock (crontab): the slot after this one
            self.due = following
        elif self.late_due is not None:  # beat catching up a missed run
            self._observe(at - self.late_due)
            self.due = self.next_due(at)
        elif not self.anchored:  # the first run seen: now the schedule's phase is known
            self.due = self.next_due(at)
        else:
            self.duplicates += 1
            return
        self.anchored = True
        self.late_due = None
        if self.last_run is None or at > self.last_run:
            self.last_run = at

    def _observe(self, delay: float) -> None:
        if not delay <= MAX_DURATION:  # a clock far off: no lateness at all
            return
        value = max(delay, 0.0)
        self.delay.counts[bisect_left(DELAY_BUCKETS, value)] += 1
        self.delay.total += value

    def check(self, now: float, grace: float) -> None:
        for _ in range(MAX_MISSES_PER_TICK):
            due = self.due
            if due is None or now <= due + grace:
                return
            self.missed += 1
            self.late_due = self.last_missed = due
            following = self.next_due(due)
            self.due = following if following is not None and following > due else None


@dataclass
class BeatEntryView:
    task: str
    schedule: str
    last_run: float | None
    next_run: float | None
    last_missed: float | None
    runs: int
    missed: int
    duplicates: int
    delay: HistogramView


@dataclass
class BeatSnapshot:
    beat_entries: dict[str, BeatEntryView]  # by label; OTHER sums the entries past the cap
    beat_delay_buckets: tuple[float, ...]
    beat_schedule_up: bool | None  # None: no schedule source that can fail


class BeatTracker:
    def __init__(self, settings: ModelSettings):
        self.grace = settings.beat_grace
        self.max_entries = settings.max_beat_entries
        self.entries: dict[str, EntryState] = {}
        # Task name -> the entries that run it. TaskEvents looks every
        # task-sent/received name up here: empty without a schedule.
        self.by_task: dict[str, list[EntryState]] = {}
        self.recent_runs: dict[str, None] = {}  # task ids, oldest first
        self.schedule_up: bool | None = None
        self.linked = True  # runs can be seen: the event stream is up
        # Counts of entries dropped from the schedule, kept so the OTHER series stay monotonic.
        self._other_runs = self._other_missed = self._other_duplicates = 0
        self._other_delay = Histogram(len(DELAY_BUCKETS))

    # -- input -------------------------------------------------------------------

    def set_schedule(self, entries: Iterable[BeatEntry], now: float) -> list[str]:
        """Replace the schedule; returns the names refused (not label values).

        An entry whose name, task, arguments and schedule are unchanged keeps
        its state; a changed one keeps its counts and is scheduled again.
        """
        refused, wanted = [], {}
        for entry in entries:
            if label_value(entry.name) is None or entry.name == OTHER:
                refused.append(entry.name)
            else:
                wanted[entry.name] = entry
        labelled = set(sorted(wanted)[: self.max_entries])
        kept: dict[str, EntryState] = {}
        for name, entry in wanted.items():
            label = name if name in labelled else OTHER
            state = self.entries.get(name)
            if state is None:
                state = EntryState(entry, label, now)
            elif _definition(state.entry) != _definition(entry):
                state.entry = entry
                state.late_due = None
                state.schedule(now)
            elif entry.next_due is None:  # due times only from the source (RedBeat's score)
                state.adopt_due(entry.due)
            state.label = label
            kept[name] = state
        for name, state in self.entries.items():
            if name not in kept and state.label == OTHER:
                self._keep_other(state)
        self.entries = kept
        self.by_task.clear()  # in place: TaskEvents holds it
        for state in kept.values():
            self.by_task.setdefault(state.entry.task, []).append(state)
        return refused

    def run(self, task_id: str, event: dict, now: float) -> None:
        """A task-sent or task-received whose task name is in the schedule."""
        candidates = self.by_task.get(event.get("name"))  # type: ignore[arg-type]
        if not candidates or task_id in self.recent_runs:
            return  # its other event, or a retry (same id)
        args, kwargs = event.get("args"), event.get("kwargs")
        matching = [s for s in candidates
                    if (s.entry.args is None or s.entry.args == args)
                    and (s.entry.kwargs is None or s.entry.kwargs == kwargs)]
        if not matching or number(event.get("retries")):
            return
        recent = self.recent_runs
        recent[task_id] = None
        if len(recent) > RECENT_RUNS:
            del recent[next(iter(recent))]
        at = number(event.get("timestamp"))
        state = min(matching, key=lambda s: math.inf if s.due is None else s.due)
        state.ran(now if at is None else at)

    def tick(self, now: float) -> None:
        if not self.linked:  # runs sent now cannot be seen: none counts as missed
            return
        grace = self.grace
        for state in self.entries.values():
            state.check(now, grace)

    def link_down(self) -> None:
        self.linked = False

    def link_up(self, now: float) -> None:
        """Back from an outage of the event stream: runs due meanwhile may have been sent
        unseen, so entries past due start over from now, as after a start."""
        if not self.linked:
            for state in self.entries.values():
                if state.due is not None and state.due + self.grace < now:
                    state.due = state.next_due(now)
                    state.anchored = False
                    state.late_due = None
        self.linked = True

    def schedule_read(self, ok: bool) -> None:
        self.schedule_up = ok

    # -- output ------------------------------------------------------------------

    def snapshot(self) -> BeatSnapshot:
        views: dict[str, BeatEntryView] = {}
        other = BeatEntryView("", "", None, None, None, self._other_runs, self._other_missed,
                              self._other_duplicates, _view(self._other_delay))
        for state in self.entries.values():
            if state.label == OTHER:
                other.runs += state.runs
                other.missed += state.missed
                other.duplicates += state.duplicates
                other.delay = HistogramView([a + b for a, b in zip(other.delay.counts,
                                                                   state.delay.counts)],
                                            other.delay.total + state.delay.total)
                continue
            entry = state.entry
            views[state.label] = BeatEntryView(entry.task, entry.schedule, state.last_run,
                                               state.due, state.last_missed, state.runs,
                                               state.missed,
                                               state.duplicates, _view(state.delay))
        if any(s.label == OTHER for s in self.entries.values()) or other.runs or other.missed:
            views[OTHER] = other
        return BeatSnapshot(beat_entries=views, beat_delay_buckets=DELAY_BUCKETS,
                            beat_schedule_up=self.schedule_up)

    def _keep_other(self, state: EntryState) -> None:
        self._other_runs += state.runs
        self._other_missed += state.missed
        self._other_duplicates += state.duplicates
        for i, count in enumerate(state.delay.counts):
            self._other_delay.counts[i] += count
        self._other_delay.total += state.delay.total


def _view(hist: Histogram) -> HistogramView:
    """A histogram's values at snapshot time: the model keeps changing the histogram."""
    return HistogramView(hist.counts[:], hist.total)


def _definition(entry: BeatEntry) -> tuple:
    return entry.task, entry.args, entry.kwargs, entry.schedule

