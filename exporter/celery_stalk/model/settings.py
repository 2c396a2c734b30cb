"""What the model is told by the configuration; defaults come from options.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import default


@dataclass(frozen=True)
class ModelSettings:
    worker_timeout: float = default("worker_timeout")
    worker_ttl: float = default("worker_ttl")
    max_tracked_tasks: int = default("max_tracked_tasks")
    runtime_buckets: tuple[float, ...] = default("runtime_buckets")
    wait_buckets: tuple[float, ...] = default("wait_buckets")
    max_task_names: int = default("max_task_names")
    max_queues: int = default("max_queues")
    max_exceptions: int = default("max_exceptions")
    label_ttl: float = default("label_ttl")
    max_workers: int = default("max_workers")
    workflow_settle: float = default("workflow_settle")
    max_workflows: int = default("max_workflows")
    workflow_buckets: tuple[float, ...] = default("workflow_buckets")
    beat_grace: float = default("beat_grace")
    max_beat_entries: int = default("max_beat_entries")
    # Celery itself declares a worker offline after 2.5 heartbeat intervals;
    # a worker whose own heartbeat interval is long gets at least that much.
    heartbeat_grace_factor: float = 2.5
    # Ids of tasks that ended, kept so that a second end of the same run (Celery 5.3+
    # sends two task-failed per hard time limit) is not counted again. Duplicates
    # follow the first within milliseconds; 10,000 ids take about 1 MB.
    ended_task_memory: int = 10_000
    # Seconds a task's events are held for its task-sent while nothing else can name
    # its queue (README, "Which queue a task is counted under"). The task-sent is
    # normally milliseconds late; the margin is for a producer starved of CPU, since
    # a wrong queue label stays in the counters for good and a late count does not.
    queue_hold: float = 5.0
    # Seconds within which a worker's task events must explain the work its heartbeats
    # show, else its task events count as off (model/diagnosis.py). Celery sends them
    # within milliseconds of that work; the margin is for a loaded exporter.
    task_events_grace: float = 30.0
