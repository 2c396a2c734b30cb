"""The worker registry: who is up, who shut down cleanly, who was lost.

Liveness is judged by the exporter's own receive time, so worker clocks and
time zones cannot fool it. The registry is told when the event stream is up or
down (link_up/link_down): while down, it keeps every worker's last verdict
instead of declaring the fleet dead. Back from an outage, a worker not heard since
gets its timeout plus the wait of Celery's own reconnect schedule (the workers lost
the broker too, and retry further apart the longer it was away).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from .diagnosis import WorkerDiagnosis
from .fields import MAX_HEARTBEAT_INTERVAL, gauge_int, label_refusal, number
from .settings import ModelSettings

WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")
# How a Celery worker retries a lost broker connection (kombu's ensure_connection, as the
# worker's consumer calls it): 2 s after the first failure, then 2 s longer each time,
# at most 30 s apart.
RECONNECT_FIRST, RECONNECT_STEP, RECONNECT_MAX = 2.0, 2.0, 30.0


def reconnect_wait(outage: float) -> float:
    """The longest a Celery worker can still take to retry its broker connection once
    the broker is back after ``outage`` seconds: the interval it was waiting out then."""
    interval, elapsed = RECONNECT_FIRST, 0.0
    while elapsed + interval <= outage and interval < RECONNECT_MAX:
        elapsed += interval
        interval = min(interval + RECONNECT_STEP, RECONNECT_MAX)
    return interval


class Worker:
    __slots__ = ("last_seen", "active", "processed", "freq", "offline", "lost", "version",
                 "diagnosis")

    def __init__(self) -> None:
        self.last_seen = 0.0  # exporter's receive time: worker clocks cannot fool it
        self.active = 0
        self.processed = 0
        self.freq = 2.0
        self.offline = False  # said goodbye (worker-offline): a clean shutdown
        self.lost = False  # went silent without saying goodbye
        self.version = ""
        self.diagnosis = WorkerDiagnosis()  # task events on/off, processed, clock offset


@dataclass
class WorkerView:
    up: bool
    offline: bool  # said goodbye (worker-offline): down, but not lost
    last_heartbeat: float
    active: int
    processed: int
    version: str
    diagnosis: DiagnosisView | None = None


@dataclass(frozen=True)
class DiagnosisView:
    """What the worker's heartbeats and task events say about its configuration."""

    task_events: bool | None  # None: not decided yet (no task processed since first seen)
    processed_total: int | None  # None until a heartbeat said how many
    clock_offset: float | None  # seconds its clock is ahead of the exporter's (behind: < 0)
    freq: float
    system: str


@dataclass
class WorkerSnapshot:
    workers: dict[str, WorkerView]
    workers_lost: int


class WorkerRegistry:
    """Up to ``max_workers`` workers. A new worker is always taken in: when the
    registry is full, the one forgotten to make room is a down worker (the one
    down longest), else one heard from only once (the longest ago), else the
    one heard from least recently.

    A real worker heartbeats every few seconds; made-up or churning hostnames
    are each heard once. Names forgotten after being heard once are remembered
    (names only, as many as ``max_workers``), so a worker heard again after
    being pushed out is kept as one heard twice: a live worker stays visible
    through a flood of up to ``max_workers`` new hostnames per heartbeat
    interval (the default 2,000: 1,000 a second).
    """

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        # In the order they were last heard from: the first is the quietest.
        self.workers: OrderedDict[str, Worker] = OrderedDict()
        # Workers that are down (shut down or lost), in the order they went down.
        self.down: OrderedDict[str, None] = OrderedDict()
        # Workers heard from once so far, in the order they were heard.
        self.once: OrderedDict[str, None] = OrderedDict()
        # Names forgotten after being heard once, most recent last (bounded).
        self.forgotten_once: OrderedDict[str, None] = OrderedDict()
        self.lost_total = 0
        self.evicted = 0  # forgotten to make room for a new worker
        self.linked = False
        self.linked_since = 0.0
        # Told the name of each worker declared lost, and of each that said
        # worker-offline (the task stages: orphaned or handed back).
        self.on_lost: list[Callable[[str], None]] = []
        self.on_offline: list[Callable[[str], None]] = []
        # Off when task events are not applied (the workers serve task metrics).
        self.judges_task_events = True

    def handlers(self) -> dict:
        return dict.fromkeys(WORKER_EVENTS, self.on_worker_event)

    # -- input ----------------------------------------------------------------

    def on_worker_event(self, event: dict, now: float) -> str | None:
        hostname = event.get("hostname")
        refused = label_refusal(hostname)
        if refused:
            return refused
        worker = self.workers.get(hostname)
        if worker is None:
            if len(self.workers) >= self.settings.max_workers:
                self._make_room()
            worker = self.workers[hostname] = Worker()
            if self.forgotten_once.pop(hostname, False) is False:
                self.once[hostname] = None  # else: heard before, now twice
        else:
            self.workers.move_to_end(hostname)
            self.once.pop(hostname, None)
        worker.last_seen = now
        worker.lost = False
        worker.offline = event["type"] == "worker-offline"
        if worker.offline:
            self.down[hostname] = None
            self.down.move_to_end(hostname)
            for listener in self.on_offline:
                listener(hostname)
        else:
            self.down.pop(hostname, None)
        active, processed = gauge_int(event.get("active")), gauge_int(event.get("processed"))
        if active is not None:
            worker.active = active
        if processed is not None:
            worker.processed = processed
        freq = number(event.get("freq"))
        if freq is not None and 0 < freq <= MAX_HEARTBEAT_INTERVAL:
            worker.freq = freq
        version = event.get("sw_ver")
        if isinstance(version, str):
            worker.version = version[:64]
        worker.diagnosis.on_heartbeat(event, now, self.settings.task_events_grace)
        return None

    def _make_room(self) -> None:
        for candidates in (self.down, self.once, self.workers):
            if candidates:
                hostname = next(iter(candidates))
                if candidates is self.once:
                    self.forgotten_once[hostname] = None
                    if len(self.forgotten_once) > self.settings.max_workers:
                        self.forgotten_once.popitem(last=False)
                self._forget(hostname)
                self.evicted += 1
                return

    def _forget(self, hostname: str) -> None:
        del self.workers[hostname]
        self.down.pop(hostname, None)
        self.once.pop(hostname, None)

    def link_up(self, now: float) -> None:
        if not self.linked:
            # Back from an outage: every worker gets a full timeout to be heard
            # again, and the time its own reconnect may take (_is_up). Not after a
            # stall, which never took the link down: a worker that is really gone
            # keeps its clock running.
            self.linked_since = now
        self.linked = True

    def link_down(self) -> None:
        self.linked = False

    # -- liveness -------------------------------------------------------------

    def _timeout_for(self, worker: Worker) -> float:
        s = self.settings
        return max(s.worker_timeout, worker.freq * s.heartbeat_grace_factor)

    def _is_up(self, worker: Worker, now: float) -> bool:
        if worker.offline or worker.lost:
            return False
        if not self.linked:  # we cannot tell; keep the last verdict
            return True
        silent_for = now - max(worker.last_seen, self.linked_since)
        return silent_for <= self._timeout_for(worker) + self._reconnect_allowance(worker)

    def _reconnect_allowance(self, worker: Worker) -> float:
        """For a worker not heard since the link came back: the longest its own reconnect
        may still take (it lost the broker too, after it was last heard); else 0."""
        outage = self.linked_since - worker.last_seen
        return reconnect_wait(outage) if outage > 0 else 0.0

    def expected_event_interval(self) -> float | None:
        """The shortest heartbeat interval among workers that are up: some event
        must arrive at least this often. None when no worker is up, so silence
        proves nothing."""
        intervals = [w.freq for w in self.workers.values() if not (w.offline or w.lost)]
        return min(intervals, default=None)

    def reconnect_grace(self) -> float:
        """How much longer than usual the stream may stay silent: the longest reconnect
        wait of the workers up and not heard since the link came back (0 once all were)."""
        return max((self._reconnect_allowance(w) for w in self.workers.values()
                    if not (w.offline or w.lost)), default=0.0)

    def tick(self, now: float) -> None:
        """Declare silent workers lost and forget workers gone for worker_ttl."""
        forget = []
        for hostname, worker in self.workers.items():
            if worker.offline or worker.lost:
                if now - worker.last_seen > self.settings.worker_ttl:
                    forget.append(hostname)
            elif self.linked and not self._is_up(worker, now):
                worker.lost = True
                self.lost_total += 1
                self.down[hostname] = None
                for listener in self.on_lost:
                    listener(hostname)
            if self.judges_task_events:
                worker.diagnosis.judge(now, self.settings.task_events_grace)
        for hostname in forget:
            self._forget(hostname)

    # -- output ---------------------------------------------------------------

    def snapshot(self, now: float) -> WorkerSnapshot:
        return WorkerSnapshot(
            workers={
                name: WorkerView(
                    up=self._is_up(w, now),
                    offline=w.offline,
                    last_heartbeat=w.last_seen,
                    active=w.active,
                    processed=w.processed,
                    version=w.version,
                    diagnosis=self._diagnosis_view(w),
                )
                for name, w in self.workers.items()
            },
            workers_lost=self.lost_total,
        )

    def _diagnosis_view(self, w: Worker) -> DiagnosisView:
        d = w.diagnosis
        return DiagnosisView(task_events=d.events_on if self.judges_task_events else None,
                             processed_total=None if d.processed is None else d.processed_total,
                             clock_offset=d.clock_offset(),
                             freq=w.freq, system=d.system)
