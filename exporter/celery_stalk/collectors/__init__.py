"""Collectors: views that build fresh metric families at scrape time.

One collector per file, each reading its own part of the model (or the broker)
and nothing kept between scrapes: tasks.py, workers.py, workflows.py, beat.py,
stages.py (tasks pending, reserved, running, orphaned), capacity.py (inspect stats),
queues.py, exporter.py (the exporter's own health) and web.py (the HTTP server's).
Exporter runs them in turn and reports each one's success and duration, so one
failing part does not hide the others. The catalog of every metric is catalog.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Callable

from prometheus_client.core import Metric as Family

from .beat import BeatCollector
from .capacity import CapacityCollector
from .catalog import CATALOG, family
from .exporter import ExporterCollector
from .queues import CollectorFailed, QueueCollector
from .stages import StageCollector
from .tasks import TaskCollector
from .web import WebCollector
from .workers import WorkerCollector
from .workflows import WorkflowCollector

__all__ = ["CATALOG", "BeatCollector", "CapacityCollector", "CollectorFailed", "Exporter",
           "ExporterCollector", "QueueCollector", "StageCollector", "TaskCollector",
           "WebCollector", "WorkerCollector", "WorkflowCollector", "model_collectors"]

log = logging.getLogger(__name__)


def model_collectors(model, source, clock: Callable[[], float] = time.time) -> list:
    """The collectors that read the model and the event source, in exposition order."""
    return [TaskCollector(model), StageCollector(model, clock), WorkerCollector(model, clock),
            WorkflowCollector(model, clock), BeatCollector(model), ExporterCollector(model, source)]


class Exporter:
    """The one collector registered: runs each part, timing it and noting success."""

    def __init__(self, parts: list, version: str, clock: Callable[[], float] = time.perf_counter):
        self.parts = parts
        self.version = version
        self.clock = clock

    def collect(self) -> Iterable[Family]:
        success, duration = family("celery_stalk_collector_success"), family(
            "celery_stalk_collector_duration_seconds"
        )
        for part in self.parts:
            started, ok = self.clock(), 1
            try:
                yield from part.collect()
            except CollectorFailed:
                ok = 0
            except Exception:
                log.exception("collector %s failed", part.name)
                ok = 0
            success.add_metric([part.name], ok)
            duration.add_metric([part.name], self.clock() - started)
        build = family("celery_stalk_build_info")
        build.add_metric([self.version], 1)
        yield build
        yield success
        yield duration

    def describe(self) -> Iterable[Family]:
        return []  # families are dynamic: don't let the registry collect at registration
