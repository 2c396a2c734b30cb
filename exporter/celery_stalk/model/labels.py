"""Label values: what an event may put in a label, and the caps on how many.

Every label set is capped: past ``limit`` distinct values new ones become
``other`` (counted), so a flood of names cannot grow the series without bound.
A cap is not a one-way door, though: once it is full, a value that has been
idle for ``ttl`` seconds is forgotten to make room for the new one, as
statsd_exporter expires stale series, so years of renamed tasks do not push
every new name into ``other``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Callable

UNKNOWN = "unknown"
OTHER = "other"

# Bounds on what one event may carry into the model. Real task names, queues
# and nodenames are far shorter (a DNS name is at most 253 characters); longer
# strings are garbage or an attack and would become megabyte-sized labels.
MAX_LABEL_LENGTH = 300

# ``safe_repr(exc)`` as Celery sends it: "ValueError('boom')",
# "celery.exceptions.SoftTimeLimitExceeded()", "TimeLimitExceeded(60.0,)"; also
# "module.Class: message" and a bare "Class". Anything else ("reject requeue=False:
# not now", the repr of Celery's Reject) is a message, never a class name.
_EXCEPTION_CLASS = re.compile(r"\s*([A-Za-z_][\w.]*)\s*(?:\(|:|$)")
# The line a Python traceback ends with: "billiard.exceptions.TimeLimitExceeded: ...".
_TRACEBACK_CLASS = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")
# billiard wraps an exception raised outside the task (a hard time limit, a pool
# process lost under its task) so that its traceback survives pickling; Celery 5.3+
# sends the wrapper's repr, "ExceptionWithTraceback()", and the real class only in
# the traceback.
WRAPPERS = frozenset({"ExceptionWithTraceback"})
TRACEBACK_TAIL = 8192  # the final exception is at the end: never scan megabytes


def label_value(value: object) -> str | None:
    """``value`` if it can be a label value (a non-empty string of valid UTF-8 no
    longer than MAX_LABEL_LENGTH), else None."""
    if not isinstance(value, str) or not value or len(value) > MAX_LABEL_LENGTH:
        return None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: undecodable bytes upstream
            return None
    return value


def exception_class(text: object, traceback: object = None) -> str:
    """Class name (no module, never the message) of a task-failed event's exception:
    from its ``exception`` field, else (billiard's wrapper, or a repr not of the
    ``Class(...)`` form) from the last exception of its ``traceback``."""
    name = None
    if isinstance(text, str):
        match = _EXCEPTION_CLASS.match(text[: 4 * MAX_LABEL_LENGTH])
        if match:
            name = match.group(1).rsplit(".", 1)[-1]
    if name is None or name in WRAPPERS:
        name = _traceback_class(traceback) or name
        if name in WRAPPERS:  # and no traceback to look through: the class is not known
            name = None
    return (label_value(name) if name else None) or UNKNOWN


def _traceback_class(traceback: object) -> str | None:
    """The class of the exception a formatted traceback ends with: the first
    unindented line after its last frame ("  File ...")."""
    if not isinstance(traceback, str) or not traceback:
        return None
    lines = traceback[-TRACEBACK_TAIL:].splitlines()
    start = 0
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("  File "):
            start = index + 1
            break
    for line in lines[start:]:
        if line and not line[0].isspace() and not line.startswith("Traceback "):
            match = _TRACEBACK_CLASS.match(line)
            return match.group(1).rsplit(".", 1)[-1] if match else None
    return None


class LabelCap:
    """Admits at most ``limit`` distinct values; past it, new ones become ``other``
    unless a value idle for ``ttl`` can be forgotten (``on_forget(value)``) to
    make room. ``pinned`` values count towards the limit and are never forgotten."""

    __slots__ = ("limit", "ttl", "pinned", "last_used", "overflow", "forgotten", "on_forget",
                 "_no_room_until")

    def __init__(self, limit: int, pinned: Iterable[str] = (), ttl: float = math.inf,
                 on_forget: Callable[[str], None] | None = None):
        self.limit = limit
        self.ttl = ttl
        self.pinned = frozenset(pinned)
        self.last_used: dict[str, float] = dict.fromkeys(self.pinned, -math.inf)
        self.overflow = 0
        self.forgotten = 0
        self.on_forget = on_forget
        # No value can be idle for ttl before this (exporter's clock): a flood
        # of new values past the cap does not rescan the cap on every event.
        self._no_room_until = -math.inf

    def admit(self, value: str, now: float) -> str:
        last_used = self.last_used
        size = len(last_used)
        last_used[value] = now  # one hash lookup for the common case, a known value
        if len(last_used) == size or size < self.limit:
            return value
        del last_used[value]  # a new value past the cap
        if self._make_room(now):
            last_used[value] = now
            return value
        self.overflow += 1
        return OTHER

    def __contains__(self, value: str) -> bool:
        return value in self.last_used

    def values(self) -> set[str]:
        return set(self.last_used)

    def discard(self, value: str) -> None:
        if value not in self.pinned:
            self.last_used.pop(value, None)
            self._no_room_until = -math.inf

    def _make_room(self, now: float) -> bool:
        if now < self._no_room_until:
            return False
        candidates = [(used, value) for value, used in self.last_used.items()
                      if value not in self.pinned]
        if not candidates:
            self._no_room_until = math.inf
            return False
        used, value = min(candidates)
        if now - used < self.ttl:
            self._no_room_until = used + self.ttl
            return False
        del self.last_used[value]
        self.forgotten += 1
        if self.on_forget is not None:
            self.on_forget(value)
        return True
