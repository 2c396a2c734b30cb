"""Where the beat schedule comes from: the app's beat_schedule, or RedBeat's keys in Redis.

Both become model.BeatEntry values (data: the entry's name, task, argument
reprs and a function from a run's time to the next due time, made from
Celery's own schedule classes by due.py). The model does no I/O and never
sees a schedule class.
"""

from __future__ import annotations

from .app import entries_from_app, redbeat_from_app
from .due import args_repr, describe, kwargs_repr, next_due_function
from .redbeat import RedBeatReader
from .refresh import ScheduleRefresher

__all__ = ["RedBeatReader", "ScheduleRefresher", "args_repr", "describe", "entries_from_app",
           "kwargs_repr", "next_due_function", "redbeat_from_app"]
