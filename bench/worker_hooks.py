"""Benchmark: the main-process cost per task of what -E does against what the
instrumentation does, each alone, in one process on one core.

* events: the three task events a worker sends per task (task-received with its
  fields, task-started, task-succeeded with result and run time) through a real
  celery EventDispatcher as the prefork worker configures it (task events
  buffered, flushed as task.multi every 24), published to a real redis-server;
* instrumented: celery_stalk.worker's observer for the same three transitions
  (received, started with the queue wait, succeeded with the run time), on a
  request object with the fields Celery's Request has.

The end-to-end figure is bench/worker_overhead.py; this one isolates the code
that differs, where the worker's own per-task cost (over a millisecond on a
shared 2-core machine) does not drown it.

    .venv/bin/python bench/worker_hooks.py --tasks 200000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery import Celery  # noqa: E402
from celery_stalk.worker.instrument import Instrumentation  # noqa: E402
from celery_stalk.worker.observe import QUEUE_HEADER, SENT_HEADER, ObservedRequest  # noqa: E402

from tests.brokers import RedisServer  # noqa: E402


class BenchRequest(ObservedRequest):
    """The fields of celery.worker.request.Request that the observer reads."""

    __slots__ = ("name", "request_dict", "delivery_info", "eta", "time_start", "__dict__")

    def __init__(self, now: float):
        self.name = "proj.tasks.add"
        self.request_dict = {SENT_HEADER: now - 0.01, QUEUE_HEADER: "default"}
        self.delivery_info = {"routing_key": "default"}
        self.eta = None
        self.time_start = now


def instrumented(tasks: int) -> float:
    instr = Instrumentation()
    observer = instr.observer
    now = time.time()
    requests = [BenchRequest(now) for _ in range(tasks)]
    started = time.perf_counter()
    for request in requests:
        observer.received(request)
        observer.event(request, "task-started", {})
        observer.event(request, "task-succeeded", {"result": "3", "runtime": 0.0004})
    return (time.perf_counter() - started) / tasks * 1e6


def events(tasks: int, url: str) -> float:
    app = Celery("bench", broker=url, set_as_current=False)
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="celery@bench", enabled=True,
                                           buffer_group=["task"])
        ids = [str(uuid.uuid4()) for _ in range(tasks)]
        started = time.perf_counter()
        for task_id in ids:
            dispatcher.send("task-received", uuid=task_id, name="proj.tasks.add", args="(1, 2)",
                            kwargs="{}", root_id=task_id, parent_id=None, retries=0, eta=None,
                            expires=None)
            dispatcher.send("task-started", uuid=task_id)
            dispatcher.send("task-succeeded", uuid=task_id, result="3", runtime=0.0004)
        dispatcher.flush()
        elapsed = time.perf_counter() - started
        dispatcher.close()
    return elapsed / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = {"events": [], "instrumented": []}
    with RedisServer() as server:
        for _ in range(args.runs):
            runs["events"].append(events(args.tasks, server.url))
            runs["instrumented"].append(instrumented(args.tasks))
    for name, values in runs.items():
        print(f"{name:<14}{statistics.median(values):8.1f} µs/task  (runs: "
              f"{', '.join(f'{v:.1f}' for v in values)})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
