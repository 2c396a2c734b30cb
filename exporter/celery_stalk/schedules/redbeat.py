"""The beat schedule from RedBeat's keys in Redis, without the app.

RedBeat (celery-redbeat) keeps, under its key prefix P (``redbeat:`` unless
``redbeat_key_prefix`` says otherwise):

- ``P:schedule``, a sorted set: one member per entry, the entry's key ``P<name>``,
  scored with its next due time in seconds since the epoch (UTC; -1 when it
  will not run again);
- ``P<name>``, a hash: ``definition``, the JSON of the entry (name, task, args,
  kwargs, options, schedule, enabled), and ``meta``, the JSON of its
  last_run_at and total_run_count.

Schedules and datetimes are JSON objects tagged with ``__type__``: an
interval is ``{"every": seconds, "relative": bool}``, a crontab its five
fields, a datetime its parts and a ``timezone`` (a zone name, or an offset in
seconds). Intervals and crontabs become Celery's own schedule classes, so their
due times follow Celery's rules; any other type (rrule) is followed by its
score alone. A crontab runs in the app's timezone, which RedBeat does not
store: it is read from the zone of the entry's last_run_at (beat writes it in
the app's timezone), else ``default_timezone``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import redis
from celery import Celery
from celery.schedules import crontab, schedule

from ..model import BeatEntry
from .due import args_repr, describe, kwargs_repr, next_due_function

log = logging.getLogger(__name__)

CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


class RedBeatReader:
    def __init__(self, url: str, prefix: str, timeout: float = 5.0, ssl: dict | None = None,
                 default_timezone: str = "UTC"):
        self.prefix = prefix
        self.schedule_key = prefix + ":schedule"
        self.default_timezone = default_timezone
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=0, decode_responses=True, **(ssl or {}))
        self._apps: dict[str, Celery] = {}

    def read(self) -> list[BeatEntry]:
        """The entries RedBeat schedules now. Raises on a Redis error; an entry
        that cannot be read is logged and left out, not fatal to the others."""
        members = self.client.zrange(self.schedule_key, 0, -1, withscores=True)
        pipe = self.client.pipeline(transaction=False)
        for key, _ in members:
            pipe.hmget(key, "definition", "meta")
        entries = []
        for (key, score), (definition, meta) in zip(members, pipe.execute()):
            if definition is None:
                continue  # its hash is gone (expired or evicted): RedBeat drops it too
            try:
                entry = self.entry(key, json.loads(definition), json.loads(meta or "{}"), score)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("RedBeat entry %r cannot be read (%s: %s): not followed",
                            key, type(exc).__name__, exc)
                continue
            if entry is not None:
                entries.append(entry)
        return entries

    def entry(self, key: str, definition: dict, meta: dict, score: float) -> BeatEntry | None:
        if not definition.get("enabled", True):
            return None
        last_run, zone = _datetime(meta.get("last_run_at"))
        spec = definition.get("schedule") or {}
        sched = self._schedule(spec, zone or self.default_timezone)
        name = definition.get("name") or key[len(self.prefix):]
        return BeatEntry(
            name=str(name),
            task=str(definition["task"]),
            args=args_repr(definition.get("args")),
            kwargs=kwargs_repr(definition.get("kwargs")),
            schedule=describe(sched) if sched is not None else str(spec.get("__type__", "?")),
            next_due=next_due_function(sched) if sched is not None else None,
            due=score if score >= 0 else None,
            last_run=last_run,
        )

    def _schedule(self, spec: dict, zone: str):
        kind = spec.get("__type__")
        if kind == "interval":
            return schedule(run_every=float(spec["every"]), relative=bool(spec.get("relative")),
                            app=self._app(zone))
        if kind == "crontab":
            return crontab(**{field: spec[field] for field in CRONTAB_FIELDS if field in spec},
                           app=self._app(zone))
        return None

    def _app(self, zone: str) -> Celery:
        """A bare app that only carries the timezone for Celery's schedule classes."""
        app = self._apps.get(zone)
        if app is None:
            app = self._apps[zone] = Celery("redbeat-schedule", set_as_current=False)
            app.conf.timezone = zone
        return app

    def close(self) -> None:
        self.client.close()


def _datetime(value) -> tuple[float | None, str | None]:
    """(seconds since the epoch, zone name) of RedBeat's JSON datetime."""
    if not isinstance(value, dict) or value.get("__type__") != "datetime":
        return None, None
    zone = value.get("timezone", "UTC")
    tz: tzinfo
    if isinstance(zone, (int, float)):
        tz, name = timezone(timedelta(seconds=zone)), None
    else:
        tz, name = ZoneInfo(zone), zone
    parts = {k: int(value[k]) for k in ("year", "month", "day", "hour", "minute", "second",
                                        "microsecond")}
    return datetime(tzinfo=tz, **parts).timestamp(), name
