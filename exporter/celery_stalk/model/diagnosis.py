"""What a worker's heartbeats tell about its configuration: task events on or off,
tasks processed, and how far its clock is from the exporter's.

Kept apart from the registry's liveness (workers.py): each worker record holds one
``WorkerDiagnosis``, fed by its heartbeats and by the task events it sends.

Task events on or off. Celery counts a task as processed when the worker accepts it
(heartbeat field ``processed``, with ``active`` the tasks running), and a worker with
task events on sends task-started for it within milliseconds, before or after the
heartbeat that shows it. So a heartbeat whose ``processed`` grew (or whose ``active``
rose) is explained by a task-started from that worker arriving within ``grace`` of
it, either side. One left unexplained for ``grace`` means task events are off; any
task-started from the worker turns the verdict back on (TaskEvents.on_started notes
it). The first heartbeat seen is only a baseline: a task that was already running
when the exporter started proves nothing either way (a long task on a worker with
events on sends no event for hours).
"""

from __future__ import annotations

from .fields import gauge_int, number

# Heartbeats whose clock offsets are kept: the offset is the largest of them, the one
# least delayed on its way (network, broker, a busy exporter only ever add delay).
CLOCK_SAMPLES = 8
# Offsets beyond this are reported as clock skew: queue waits, task timestamps and
# workflow durations mix worker and producer clocks, and are off by as much.
CLOCK_SKEW_LIMIT = 2.0


class WorkerDiagnosis:
    __slots__ = ("task_event_at", "unexplained_since", "events_on", "processed", "active",
                 "processed_total", "offsets", "system")

    def __init__(self) -> None:
        self.task_event_at: float | None = None  # receive time of its last task-started
        # Receive time of the first heartbeat showing new work that no task event explained.
        self.unexplained_since: float | None = None
        self.events_on: bool | None = None  # None: not decided (idle since first seen)
        self.processed: int | None = None  # the last heartbeat's, None before the first
        self.active: int | None = None
        self.processed_total = 0  # tasks processed, across restarts of the worker
        self.offsets: list[float] = []  # worker timestamp minus receive time, newest last
        self.system = ""  # sw_sys, e.g. Linux

    def on_heartbeat(self, event: dict, now: float, grace: float) -> None:
        processed, active = gauge_int(event.get("processed")), gauge_int(event.get("active"))
        new_work = False
        if processed is not None:
            last = self.processed
            if last is None:
                self.processed_total = processed  # counted by the worker before we saw it
            elif processed >= last:
                new_work = processed > last
                self.processed_total += processed - last
            else:  # restarted: its count began again from 0
                new_work = processed > 0
                self.processed_total += processed
            self.processed = processed
        if active is not None:
            if self.active is not None and active > self.active:
                new_work = True
            self.active = active
        if new_work and self.unexplained_since is None and (
                self.task_event_at is None or now - self.task_event_at > grace):
            self.unexplained_since = now
        stamp = number(event.get("timestamp"))
        if stamp is not None:
            offsets = self.offsets
            offsets.append(stamp - now)
            if len(offsets) > CLOCK_SAMPLES:
                del offsets[0]
        system = event.get("sw_sys")
        if isinstance(system, str):
            self.system = system[:64]

    def judge(self, now: float, grace: float) -> None:
        """Decide task events on or off from what arrived (once a second, on tick)."""
        since = self.unexplained_since
        if since is not None:
            if self.task_event_at is not None and self.task_event_at >= since:
                self.unexplained_since = None  # a task event came for it: events are on
            elif now - since >= grace:
                self.events_on = False
                return
            else:
                return  # still waiting for the task events of that work
        if self.task_event_at is not None:
            self.events_on = True

    def clock_offset(self) -> float | None:
        return max(self.offsets) if self.offsets else None
