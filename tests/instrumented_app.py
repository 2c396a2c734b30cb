"""The Celery app of tests/celery_app.py, instrumented with celery_stalk.worker.

Workers of this module serve their own /metrics (--stalk-port); the test
process that imports it to send tasks is an instrumented producer.
"""

from __future__ import annotations

import os
import time

import celery_stalk.worker

from tests.celery_app import app

# STALK_TEST_EVENTS=off: no task events at all, from the workers or the producer.
if os.environ.get("STALK_TEST_EVENTS") == "off":
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
app.conf.worker_max_tasks_per_child = int(os.environ.get("STALK_TEST_MAX_TASKS_PER_CHILD", "0")) or None

celery_stalk.worker.install(app)

if os.environ.get("STALK_TEST_BREAK_COUNTING"):
    # Fault injection: counting a start or a success raises inside the instrumentation.
    # The tasks must run anyway, and the errors be counted.
    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    counts = celery_stalk.worker._instrumentation().counts
    counts.started = counts.succeeded = broken


@app.task(name="tests.sleep_past_hard_limit", time_limit=1)
def sleep_past_hard_limit():
    """Killed by its hard time limit: the pool process running it is killed."""
    time.sleep(10)


@app.task(name="tests.note")
def note(key):
    """Leaves a mark in Redis: proof that the task ran."""
    import redis

    redis.Redis.from_url(app.conf.broker_url).set(key, "ran")


@app.task(name="tests.publish_child")
def publish_child():
    """Publishes another task from inside a task (sent from a pool process)."""
    app.send_task("tests.add", args=(1, 2), queue="work")
