"""The Celery app of bench/worker_overhead.py: a task that does nothing, and markers.

BENCH_BROKER: the broker URL; BENCH_INSTRUMENT=1: celery_stalk.worker.install(app).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_BROKER"], set_as_current=False)
app.conf.update(
    task_default_queue="bench",
    worker_prefetch_multiplier=4,
    task_ignore_result=True,
    result_backend=None,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if os.environ.get("BENCH_INSTRUMENT") == "1":
    import celery_stalk.worker

    celery_stalk.worker.install(app)


@app.task(name="bench.noop")
def noop():
    return None


@app.task(name="bench.mark")
def mark(key):
    """Records when the worker ran it (the first and the last task of a run)."""
    redis.Redis.from_url(os.environ["BENCH_BROKER"]).set(key, repr(time.time()))
