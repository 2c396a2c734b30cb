"""Worker metrics: liveness, clean shutdowns and losses, tasks executing."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Callable

from prometheus_client.core import Metric as Family

from ..model import Model
from .catalog import family, single


class WorkerCollector:
    name = "workers"

    def __init__(self, model: Model, clock: Callable[[], float] = time.time):
        self.model = model
        self.clock = clock

    def collect(self) -> Iterable[Family]:
        snap = self.model.worker_snapshot(self.clock())
        up, offline, heartbeat, active = (
            family("celery_worker_up"),
            family("celery_worker_offline"),
            family("celery_worker_last_heartbeat_timestamp_seconds"),
            family("celery_worker_tasks_active"),
        )
        events_on, processed, offset = (
            family("celery_worker_task_events_enabled"),
            family("celery_worker_processed_total"),
            family("celery_worker_clock_offset_seconds"),
        )
        for worker, view in sorted(snap.workers.items()):
            up.add_metric([worker], 1 if view.up else 0)
            offline.add_metric([worker], 1 if view.offline else 0)
            heartbeat.add_metric([worker], view.last_heartbeat)
            active.add_metric([worker], view.active)
            d = view.diagnosis
            if d is not None:
                if d.task_events is not None:
                    events_on.add_metric([worker], 1 if d.task_events else 0)
                if d.processed_total is not None:  # a 0 before the first heartbeat would
                    # read as a counter reset, and its first value as that many new tasks
                    processed.add_metric([worker], d.processed_total)
                if d.clock_offset is not None:
                    offset.add_metric([worker], d.clock_offset)
        yield from (up, offline, heartbeat, active, events_on, processed, offset)
        yield single("celery_workers", sum(1 for v in snap.workers.values() if v.up))
        yield single("celery_worker_lost_total", snap.workers_lost)
