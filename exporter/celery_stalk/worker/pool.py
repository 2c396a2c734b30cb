"""The worker's pool as the main process sees it: slots, busy, reserved, processes, memory."""

from __future__ import annotations

import os
import threading
from typing import Any

from .counts import TaskCounts

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int, parent: int | None = None) -> int | None:
    """RSS of ``pid`` from /proc; None if it is gone (or, with ``parent``, is no longer
    that process' child: its pid was reused)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields are counted after
    # its last ")". Field 4 is the parent's pid, field 24 the RSS in pages.
    fields = stat.rsplit(b")", 1)[1].split()
    if fields[0] == b"Z":  # exited, not yet reaped (the pool replaces it lazily)
        return None
    if parent is not None and int(fields[1]) != parent:
        return None
    return int(fields[21]) * PAGE_SIZE


class PoolProcesses:
    """Prefork pool processes by slot index, told by each process when it starts.

    A process that starts in a slot that had one before replaces it: a restart.
    Bounded by the number of slots.
    """

    def __init__(self, counts: TaskCounts):
        self.counts = counts
        self._lock = threading.Lock()
        self.pids: dict[int, int] = {}  # slot index -> pid

    def started(self, index: int, pid: int) -> None:
        with self._lock:
            replaced = index in self.pids
            self.pids[index] = pid
        if replaced:
            self.counts.restarted()

    def memory(self) -> dict[str, int]:
        """RSS by slot index of the processes alive now."""
        with self._lock:
            slots = sorted(self.pids.items())
        main = os.getpid()
        found = {}
        for index, pid in slots:
            rss = resident_bytes(pid, parent=main)
            if rss is not None:
                found[str(index)] = rss
        return found


def pool_size(pool: Any) -> int | None:
    """The pool's slots now (autoscale changes them), or None before it exists."""
    if pool is None:
        return None
    try:
        return int(pool.num_processes)
    except (AttributeError, TypeError):  # prefork before its processes start
        limit = getattr(pool, "limit", None)
        return int(limit) if limit else None
