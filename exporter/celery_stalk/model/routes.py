"""Static task name -> queue routes (--task-route), the last way to a queue label."""

from __future__ import annotations

import fnmatch
import re


class TaskRoutes:
    """Routes read as Celery reads ``task_routes``.

    A name with a ``*`` is a shell glob (fnmatch), any other is exact. Exact
    names win, then globs in the order given, as in Celery's router.
    """

    __slots__ = ("exact", "patterns", "_cache")

    def __init__(self, routes: tuple[tuple[str, str], ...] = ()):
        self.exact: dict[str, str] = {}
        self.patterns: list[tuple[re.Pattern, str]] = []
        for pattern, queue in routes:
            if "*" in pattern:
                self.patterns.append((re.compile(fnmatch.translate(pattern)), queue))
            else:
                self.exact.setdefault(pattern, queue)
        # Bounded: only names admitted by the task name cap are looked up, and
        # a name the cap forgets is dropped here too.
        self._cache: dict[str, str | None] = {}

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.exact.values(), *(q for _, q in self.patterns)]))

    def queue_for(self, name: str) -> str | None:
        if name in self.exact:
            return self.exact[name]
        if name not in self._cache:
            self._cache[name] = next((q for p, q in self.patterns if p.match(name)), None)
        return self._cache[name]

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)
