"""Configuration problems the model can see, each with the exact fix.

The most common reason a Celery exporter shows "no data" is configuration: workers
without task events, producers without task-sent events, clocks apart. Read from the
model's diagnosis (model/diagnosis.py); shown by the log (once each, when first
seen), the landing page and ``celery-stalk doctor``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .model import Model
from .model.diagnosis import CLOCK_SKEW_LIMIT

log = logging.getLogger("celery_stalk.problems")

TASK_EVENTS_FIX = (
    "start the worker with -E or set worker_send_task_events = True "
    "(Django, settings namespace CELERY: CELERY_WORKER_SEND_TASK_EVENTS = True); "
    "until its next restart: celery -A proj control enable_events"
)
SENT_EVENTS_FIX = (
    "set task_send_sent_event = True in the Celery config of the code that sends them "
    "(Django, settings namespace CELERY: CELERY_TASK_SEND_SENT_EVENT = True)"
)
CLOCK_FIX = "synchronise the clocks of both hosts (chrony, ntpd or systemd-timesyncd)"
# Task names listed in one problem; the others are counted.
MAX_NAMED_TASKS = 5


@dataclass(frozen=True)
class Problem:
    key: tuple[str, str]  # (kind, subject): one log line per key
    what: str
    fix: str

    def line(self) -> str:
        return f"{self.what}: {self.fix}"


def task_events_off(worker: str) -> Problem:
    return Problem(("task_events_off", worker),
                   f"worker {worker} processes tasks but sends no task events", TASK_EVENTS_FIX)


def clock_skew(worker: str, offset: float) -> Problem:
    side = "ahead of" if offset > 0 else "behind"
    return Problem(("clock_skew", worker),
                   f"worker {worker}'s clock is {abs(offset):.1f} s {side} this exporter's "
                   "(queue waits and workflow durations are off by as much)", CLOCK_FIX)


def sent_events_missing(unsent: dict[str, list[str]]) -> Problem:
    names = sorted(unsent)
    shown = ", ".join(f"{name} (queue {'/'.join(sorted(unsent[name]))})"
                      for name in names[:MAX_NAMED_TASKS])
    more = f" and {len(names) - MAX_NAMED_TASKS} more" if len(names) > MAX_NAMED_TASKS else ""
    return Problem(("task_sent_missing", ""),
                   f"tasks reach workers without task-sent events, so their queue is not "
                   f"known from them: {shown}{more}", SENT_EVENTS_FIX)


def find_problems(model: Model, now: float) -> list[Problem]:
    found = []
    for worker, view in sorted(model.worker_snapshot(now).workers.items()):
        d = view.diagnosis
        if d is None or not view.up:
            continue
        if d.task_events is False:
            found.append(task_events_off(worker))
        if d.clock_offset is not None and abs(d.clock_offset) > CLOCK_SKEW_LIMIT:
            found.append(clock_skew(worker, d.clock_offset))
    if model.counts_task_events:
        unsent = model.unsent_tasks()
        if unsent:
            found.append(sent_events_missing(unsent))
    return found


class ProblemWatch:
    """Looks for problems every few seconds on its own thread: logs each one once when
    first seen (again if it comes back after going away), keeps the current list for
    the landing page."""

    def __init__(self, model: Model, stop: threading.Event, interval: float = 5.0,
                 clock=time.time):
        self.model, self.stop, self.interval, self.clock = model, stop, interval, clock
        self.current: list[Problem] = []
        self.thread = threading.Thread(target=self.run, name="celery-stalk-problems", daemon=True)

    def check(self) -> list[Problem]:
        found = find_problems(self.model, self.clock())
        seen = {p.key for p in self.current}
        for problem in found:
            if problem.key not in seen:
                log.warning("%s", problem.line())
        self.current = found
        return found

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a bug here must not stop the exporter
                log.exception("could not look for configuration problems")
