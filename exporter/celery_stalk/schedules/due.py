"""Celery's schedule classes as the model needs them: a run's time in, the next due time out.

Every Celery schedule (interval, crontab, solar, and subclasses such as
RedBeat's rrule) answers ``remaining_estimate(last_run_at)``: the time from
*now* to the first due time after ``last_run_at``, in the timezone the app
sets. A copy of the schedule whose clock is stopped at the last run turns that
into the due time itself, with Celery's own rules, and no wall clock involved.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Callable

from celery.beat import BeatLazyFunc
from celery.schedules import crontab, schedule
from celery.utils.saferepr import saferepr

# What Celery's amqp.as_task_v2 cuts argument reprs to (app.amqp.argsrepr_maxsize,
# kwargsrepr_maxsize) and how deep it goes (task_repr_maxlevels' default).
REPR_MAXSIZE = 1024
REPR_MAXLEVELS = 3


def next_due_function(sched) -> Callable[[float], float | None]:
    """``next_due(last_run)``: the first due time after a run at ``last_run``
    (seconds since the epoch), or None when the schedule will not run again."""
    clock = copy.copy(sched)
    clock.app = sched.app  # a copy is rebuilt from the schedule's arguments: its app (timezone) too

    def next_due(last_run: float) -> float | None:
        at = datetime.fromtimestamp(last_run, timezone.utc)
        clock.nowfun = lambda: at
        remaining = clock.remaining_estimate(at)
        if remaining is None:
            return None
        return (at + remaining).timestamp()  # datetime arithmetic: a crontab's due time exact

    return next_due


def describe(sched) -> str:
    """The schedule as the dashboard's table shows it."""
    if isinstance(sched, crontab):
        fields = (sched._orig_minute, sched._orig_hour, sched._orig_day_of_month,
                  sched._orig_month_of_year, sched._orig_day_of_week)
        return "crontab " + " ".join(str(field) for field in fields)
    if isinstance(sched, schedule):
        seconds = sched.run_every.total_seconds()
        return f"every {seconds:g} s" + (" (relative)" if sched.relative else "")
    return repr(sched)[:200]


def args_repr(args, maxlevels: int = REPR_MAXLEVELS) -> str | None:
    """The ``args`` field of beat's task events for these entry args.

    Beat sends an entry's args as a list (empty: ``()`` by the time the message
    is built); None when an argument is computed at send time (BeatLazyFunc).
    """
    values = list(args or ())
    if any(isinstance(value, BeatLazyFunc) for value in values):
        return None
    return saferepr(values, REPR_MAXSIZE, maxlevels=maxlevels) if values else "()"


def kwargs_repr(kwargs, maxlevels: int = REPR_MAXLEVELS) -> str | None:
    values = dict(kwargs or {})
    if any(isinstance(value, BeatLazyFunc) for value in values.values()):
        return None
    return saferepr(values, REPR_MAXSIZE, maxlevels=maxlevels)
