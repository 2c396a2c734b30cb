"""The schedule of a Celery app (``celery -A proj stalk``): beat_schedule through Celery's own classes."""

from __future__ import annotations

import logging

from celery.beat import ScheduleEntry

from ..model import BeatEntry
from .due import args_repr, describe, kwargs_repr, next_due_function

log = logging.getLogger(__name__)

REDBEAT_DEFAULT_PREFIX = "redbeat:"


def entries_from_app(app) -> list[BeatEntry]:
    """Every entry of ``app.conf.beat_schedule``, as beat itself reads it
    (celery.beat.ScheduleEntry: a number is an interval in seconds, schedules
    are bound to the app and so to its timezone)."""
    maxlevels = app.conf.task_repr_maxlevels
    entries = []
    for name, spec in (app.conf.beat_schedule or {}).items():
        try:
            entry = ScheduleEntry(app=app, name=name, **dict(spec))
        except Exception as exc:  # beat would refuse it too
            log.warning("beat_schedule[%r] cannot be read (%s: %s): not followed",
                        name, type(exc).__name__, exc)
            continue
        entries.append(BeatEntry(
            name=str(name),
            task=entry.task,
            args=args_repr(entry.args, maxlevels),
            kwargs=kwargs_repr(entry.kwargs, maxlevels),
            schedule=describe(entry.schedule),
            next_due=next_due_function(entry.schedule),
        ))
    return entries


def redbeat_from_app(app) -> tuple[str, str] | None:
    """(key prefix, Redis URL) when the app's beat runs RedBeat, as RedBeat
    reads its settings (redbeat_key_prefix, redbeat_redis_url, else the broker)."""
    scheduler = app.conf.beat_scheduler
    name = scheduler if isinstance(scheduler, str) else getattr(scheduler, "__module__", "")
    if "redbeat" not in name.lower():
        return None
    conf = app.conf
    prefix = conf.get("redbeat_key_prefix") or REDBEAT_DEFAULT_PREFIX
    url = conf.get("redbeat_redis_url") or conf.broker_url
    return prefix, url
