"""The instrumentation of one process: its counts and where each kind of count goes.

One per process (a module global made by install()). A prefork pool process
inherits it through fork and sends what it counts to the main process over the
PoolChannel; everywhere else counts are applied in place.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from ..model import ModelSettings
from .channel import PoolChannel
from .counts import TaskCounts
from .observe import Errors, Observer
from .pool import PoolProcesses
from .publish import Publishing

log = logging.getLogger("celery_stalk.worker")


class Instrumentation:
    def __init__(self, settings: ModelSettings | None = None):
        self.counts = TaskCounts(settings)
        self.errors = Errors(self._count_error)
        self.observer = Observer(self.counts, self.errors)
        self.publishing = Publishing(self.sent, self.errors)
        self.processes = PoolProcesses(self.counts)
        self.channel: PoolChannel | None = None  # set in a prefork worker's main process
        self.worker: Any = None  # the WorkController, once this process runs a worker
        self.listening: socket.socket | None = None  # the /metrics socket of the main process

    def _pool_channel(self) -> PoolChannel | None:
        """The channel to the main process, if this is a prefork pool process."""
        channel = self.channel
        return channel if channel is not None and channel.in_pool_process() else None

    # -- counts, wherever they happen ---------------------------------------------

    def sent(self, name: object, queue: object) -> None:
        channel = self._pool_channel()
        if channel is not None:
            channel.send("sent", name, queue)
        else:
            self.counts.count("task-sent", self.counts.labels(name, queue))

    def _count_error(self, where: str) -> None:
        channel = self._pool_channel()
        if channel is not None:
            channel.send("error", where)
        else:
            self.counts.error(where)

    def pool_process_started(self, index: object, pid: int) -> None:
        """In a prefork pool process, as it starts (worker_process_init)."""
        if self.channel is None:  # spawned, not forked: nothing was inherited
            log.warning("celery-stalk: this pool process was spawned, not forked: tasks it "
                        "publishes are not counted (use Celery's default fork start method)")
            return
        channel = self._pool_channel()
        if channel is None:
            return
        if self.listening is not None:  # inherited through fork: only the main process serves
            self.listening.close()
        if isinstance(index, int):
            channel.send("up", index, pid)

    # -- the main process ------------------------------------------------------------

    def open_channel(self) -> PoolChannel:
        """Before the prefork pool forks: where its processes send their counts."""
        self.channel = PoolChannel()
        self.channel.start_reader(self.apply, lambda: self.errors("pool_channel"))
        return self.channel

    def apply(self, record: list) -> None:
        """A record from a pool process (PoolChannel)."""
        kind = record[0]
        if kind == "sent":
            self.counts.count("task-sent", self.counts.labels(record[1], record[2]))
        elif kind == "up":
            self.processes.started(int(record[1]), int(record[2]))
        elif kind == "error":
            self.counts.error(str(record[1]))
        else:
            raise ValueError(f"unknown record {kind!r}")
