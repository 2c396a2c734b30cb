"""Worker capacity from the inspect stats loop: pool size and prefetch count per worker."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric as Family

from ..capacity import CapacityPoller
from .catalog import family, single


class CapacityCollector:
    name = "capacity"

    def __init__(self, poller: CapacityPoller):
        self.poller = poller

    def collect(self) -> Iterable[Family]:
        snap = self.poller.snapshot()
        concurrency = family("celery_worker_concurrency")
        prefetch = family("celery_worker_prefetch_limit")
        for worker, capacity in sorted(snap.workers.items()):
            if capacity.concurrency is not None:
                concurrency.add_metric([worker], capacity.concurrency)
            if capacity.prefetch_count is not None:
                prefetch.add_metric([worker], capacity.prefetch_count)
        yield from (concurrency, prefetch)
        if snap.last_success is not None:
            yield single("celery_stalk_inspect_last_success_timestamp_seconds", snap.last_success)
        yield single("celery_stalk_inspect_failures_total", snap.failures)
