"""Where tasks in flight are: pending age per queue, longest runs, orphans, reserved per worker."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Callable

from prometheus_client.core import Metric as Family

from ..model import Model
from .catalog import family


class StageCollector:
    name = "stages"

    def __init__(self, model: Model, clock: Callable[[], float] = time.time):
        self.model = model
        self.clock = clock

    def collect(self) -> Iterable[Family]:
        snap = self.model.stage_snapshot(self.clock())
        pending = family("celery_queue_oldest_pending_seconds")
        for queue, age in sorted(snap.oldest_pending.items()):
            pending.add_metric([queue], age)
        running = family("celery_task_oldest_running_seconds")
        for labels, age in sorted(snap.oldest_running.items()):
            running.add_metric(list(labels), age)
        orphaned = family("celery_task_orphaned_total")
        for labels, count in sorted(snap.orphaned.items()):
            orphaned.add_metric(list(labels), count)
        reserved = family("celery_worker_tasks_reserved")
        for worker, count in sorted(snap.reserved.items()):
            reserved.add_metric([worker], count)
        yield from (pending, running, orphaned, reserved)
