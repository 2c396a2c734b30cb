"""Reading the fields of one event: what is refused, and why.

An event that cannot be applied is skipped and counted under a reason
(celery_stalk_events_invalid_total{reason}); the reasons are a fixed set,
never taken from the input, so the series stay bounded.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from .labels import label_value

NOT_AN_OBJECT = "not_an_object"
MISSING_TYPE = "missing_type"
MISSING_FIELD = "missing_field"  # absent or of the wrong JSON type
BAD_VALUE = "bad_value"  # right type, unusable value: empty, too long, not UTF-8

MAX_TASK_ID_LENGTH = 256  # Celery task ids are 36-character UUIDs
# Durations beyond this are clock errors, not waits or run times: observing
# them would poison the histogram's _sum for good.
MAX_DURATION = 30 * 24 * 3600.0
# Celery stamps task-sent after publishing the task, so a fast worker can start it
# a few milliseconds "before" it was sent, on one clock. A wait that negative is
# observed as 0 and is not clock skew; only clocks further apart are counted.
SEND_STAMP_LAG = 1.0
MAX_HEARTBEAT_INTERVAL = 3600.0  # a larger freq would keep a dead worker "up" forever
MAX_GAUGE_INT = 2**53  # exactly representable as a float sample


def number(value: object) -> float | None:
    """A finite float from a JSON number, else None (bools, NaN, inf, huge ints)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def gauge_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_GAUGE_INT:
        return value
    return None


def id_refusal(task_id: object) -> str | None:
    """Why an event's task id cannot be joined on, or None if it can."""
    if not isinstance(task_id, str):
        return MISSING_FIELD
    return BAD_VALUE if len(task_id) > MAX_TASK_ID_LENGTH else None


def label_refusal(value: object) -> str | None:
    """Why a task name or nodename cannot be a label value, or None if it can."""
    if not isinstance(value, str):
        return MISSING_FIELD
    return BAD_VALUE if label_value(value) is None else None


def run_of(event: dict) -> int | None:
    """Which run of its task an event belongs to: its ``retries`` number (task-sent
    and task-received carry it)."""
    retries = event.get("retries")
    return retries if type(retries) is int else None


def runnable_from(sent: float | None, eta: object) -> float | None:
    """When the task became runnable: its ETA/countdown if later than sent."""
    if sent is None:
        return None
    if isinstance(eta, str) and eta:
        try:
            when = datetime.fromisoformat(eta)
            if when.tzinfo is None:
                # Celery sends naive ETAs in UTC when enable_utc is on (the default).
                when = when.replace(tzinfo=timezone.utc)
            return max(sent, when.timestamp())
        except (ValueError, OverflowError):  # not an ISO date, or out of range
            return sent
    return sent
