"""The worker registry: who is up, who shut down cleanly, who was lost.

Liveness is judged by the exporter's own receive time, so worker clocks and
time zones cannot fool it. The registry is told when the event stream is up or
down (link_up/link_down): while down, it keeps every worker's last verdict
instead of declaring the fleet dead.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fields import MAX_HEARTBEAT_INTERVAL, gauge_int, label_refusal, number
from .labels import OTHER, LabelCap
from .settings import ModelSettings

WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")


class Worker:
    __slots__ = ("last_seen", "active", "processed", "freq", "offline", "lost", "version")

    def __init__(self) -> None:
        self.last_seen = 0.0  # exporter's receive time: worker clocks cannot fool it
        self.active = 0
        self.processed = 0
        self.freq = 2.0
        self.offline = False  # said goodbye (worker-offline): a clean shutdown
        self.lost = False  # went silent without saying goodbye
        self.version = ""


@dataclass
class WorkerView:
    up: bool
    offline: bool  # said goodbye (worker-offline): down, but not lost
    last_heartbeat: float
    active: int
    processed: int
    version: str


@dataclass
class WorkerSnapshot:
    workers: dict[str, WorkerView]
    workers_lost: int


class WorkerRegistry:
    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.workers: dict[str, Worker] = {}
        self.lost_total = 0
        self.names = LabelCap(settings.max_workers)
        self.linked = False
        self.linked_since = 0.0

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
            if self.names.admit(hostname, now) == OTHER:
                return None  # counted as overflow; the event itself was fine
            worker = self.workers[hostname] = Worker()
        worker.last_seen = now
        worker.lost = False
        worker.offline = event["type"] == "worker-offline"
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
        return None

    def link_up(self, now: float) -> None:
        if not self.linked:
            # Back from an outage: every worker gets a full timeout to be
            # heard again. Not after a stall, which never took the link down:
            # a worker that is really gone keeps its clock running.
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
        return silent_for <= self._timeout_for(worker)

    def expected_event_interval(self) -> float | None:
        """The shortest heartbeat interval among workers that are up: some event
        must arrive at least this often. None when no worker is up, so silence
        proves nothing."""
        intervals = [w.freq for w in self.workers.values() if not (w.offline or w.lost)]
        return min(intervals, default=None)

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
        for hostname in forget:
            del self.workers[hostname]
            self.names.discard(hostname)

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
                )
                for name, w in self.workers.items()
            },
            workers_lost=self.lost_total,
        )
