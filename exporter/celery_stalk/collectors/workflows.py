"""Workflow metrics: tasks sharing a root_id, started, finished, in flight, and where they break."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from itertools import accumulate

from prometheus_client.core import Metric as Family
from prometheus_client.utils import floatToGoString

from ..model import Model
from .catalog import family, labelled, single


class WorkflowCollector:
    name = "workflows"

    def __init__(self, model: Model, clock: Callable[[], float] = time.time):
        self.model = model
        self.clock = clock

    def collect(self) -> Iterable[Family]:
        snap = self.model.workflow_snapshot(self.clock())
        yield labelled("celery_workflow_started_total", snap.workflows_started)
        finished = family("celery_workflow_finished_total")
        for (workflow, outcome), count in sorted(snap.workflows_finished.items()):
            finished.add_metric([workflow, outcome], count)
        yield finished
        yield histogram("celery_workflow_duration_seconds", snap.workflow_duration,
                        snap.workflow_buckets)
        yield histogram("celery_workflow_tasks", snap.workflow_tasks, snap.workflow_tasks_buckets)
        yield labelled("celery_workflows_in_flight", snap.workflows_in_flight)
        oldest = family("celery_workflow_oldest_in_flight_age_seconds")
        for workflow, age in sorted(snap.workflow_oldest_age.items()):
            oldest.add_metric([workflow], age)
        yield oldest
        failed = family("celery_workflow_task_failed_total")
        for key, count in sorted(snap.workflow_task_failed.items()):
            failed.add_metric(list(key), count)
        yield failed
        yield labelled("celery_stalk_workflows_evicted_total", snap.workflows_evicted)
        yield single("celery_stalk_workflow_orphan_tasks_total", snap.workflow_orphan_tasks)


def histogram(name: str, hists: dict, bounds: tuple[float, ...]) -> Family:
    """A histogram family with one label, from the model's HistogramViews."""
    fam = family(name)
    les = [floatToGoString(b) for b in bounds] + ["+Inf"]
    for label, hist in sorted(hists.items()):
        fam.add_metric([label], list(zip(les, accumulate(hist.counts))), hist.total)
    return fam
