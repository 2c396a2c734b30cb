"""Prefork pool processes → the worker's main process: counts as datagrams.

Almost everything is counted in the main process (observe.py). What happens
only inside a pool process is small: tasks published from a task (retries,
subtasks, chains: celery_task_sent_total), a pool process starting, and errors
of the instrumentation there. Each is one datagram on a Unix socket pair made
before the pool forks, sent the moment it happens, so a pool process that
exits (max_tasks_per_child) or is killed (hard time limit) has nothing left
unsent: nothing lost. A datagram is applied once by the main process and holds
a single event, never a running total: nothing counted twice. No files, no
per-process state: memory stays flat however many processes come and go.

A full socket buffer (the main process stalled) makes the sender wait at most
SEND_TIMEOUT, then drop the record and log it; a task is never blocked longer.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
from typing import Callable

log = logging.getLogger("celery_stalk.worker")

SEND_TIMEOUT = 1.0  # seconds
MAX_RECORD = 4096  # bytes: a record is a kind and two label values of at most 300 characters


class PoolChannel:
    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.main_pid = os.getpid()
        self.dropped = 0

    def in_pool_process(self) -> bool:
        return os.getpid() != self.main_pid

    def send(self, *record: object) -> None:
        """From a pool process: one record (a kind and its values)."""
        data = json.dumps(record).encode()
        try:
            self._writer.send(data, socket.MSG_DONTWAIT)
            return
        except BlockingIOError:
            pass
        if select.select([], [self._writer], [], SEND_TIMEOUT)[1]:
            try:
                self._writer.send(data, socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                pass
        self.dropped += 1
        log.warning("celery-stalk: the worker's main process did not take a count from pool "
                    "process %s within %.0f s; dropped %r", os.getpid(), SEND_TIMEOUT, record)

    def start_reader(self, apply: Callable[[list], None], on_error: Callable[[], None]) -> threading.Thread:
        """In the main process: apply every record as it arrives, on a thread of its own."""

        def run() -> None:
            while True:
                try:
                    data = self._reader.recv(MAX_RECORD)
                except OSError:  # closed at shutdown
                    return
                if not data:  # shut down
                    return
                try:
                    apply(json.loads(data))
                except Exception:
                    on_error()

        thread = threading.Thread(target=run, name="celery-stalk-pool-channel", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        for sock in (self._reader, self._writer):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread
            except OSError:
                pass
            sock.close()
