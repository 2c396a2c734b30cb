"""The Celery app the integration tests run real workers of.

Configured from the environment so the same module serves a worker process
(started by the tests) and the test process that sends tasks to it.
"""

from __future__ import annotations

import json
import os
import signal
import time

from celery import Celery
from celery.exceptions import Reject


def make_app(broker_url: str, transport_options: dict | None = None) -> Celery:
    """The app as both the worker and the producing test configure it."""
    celery = Celery("stalktest", broker=broker_url, set_as_current=False)
    celery.conf.update(
        task_send_sent_event=True,  # task-sent events: queue label and queue-wait metric
        worker_send_task_events=True,
        task_default_queue="work",
        # a static route, followed by `celery -A tests.celery_app stalk`
        task_routes={"tests.*": {"queue": "work"}},
        broker_transport_options=transport_options or {},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        result_backend=None,
        task_ignore_result=True,
    )
    return celery


app = make_app(
    os.environ.get("STALK_TEST_BROKER", "memory://"),
    json.loads(os.environ.get("STALK_TEST_TRANSPORT_OPTIONS", "{}")),
)
# A worker started without task events (WorkerProcess(task_events=False)).
app.conf.worker_send_task_events = os.environ.get("STALK_TEST_TASK_EVENTS", "1") == "1"


def _skew_event_clock(seconds: float) -> None:
    """Stamp this process's events ``seconds`` ahead, as a host whose clock is off would:
    Celery's Event() takes the time from its last default argument."""
    from celery.events import event

    *others, now = event.Event.__defaults__
    event.Event.__defaults__ = (*others, lambda: now() + seconds)


if os.environ.get("STALK_TEST_CLOCK_SKEW"):
    _skew_event_clock(float(os.environ["STALK_TEST_CLOCK_SKEW"]))


@app.task(name="tests.add")
def add(x, y):
    return x + y


@app.task(name="tests.noop")
def noop():
    return None


@app.task(name="tests.fail_value")
def fail_value():
    raise ValueError("secret customer data must not reach a label")


@app.task(name="tests.fail_key")
def fail_key():
    raise KeyError("missing")


@app.task(name="tests.sleep_past_soft_limit", soft_time_limit=0.5)
def sleep_past_soft_limit():
    time.sleep(5)


@app.task(name="tests.flaky", bind=True, max_retries=5)
def flaky(self, fail_times):
    """Retries itself ``fail_times`` times, then succeeds."""
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.2, exc=ConnectionError("try again"))
    return "ok"


@app.task(name="tests.reject", acks_late=True)
def reject():
    """Refuses its message for good (task-rejected); acks_late leaves a message to refuse."""
    raise Reject("not for this worker", requeue=False)


# -- failure paths (tests/integration/test_failure_paths.py, tests/fixtures/capture_events.py)


@app.task(name="tests.hard_time_limit", time_limit=2)
def hard_time_limit():
    """Killed by its hard time limit (pools that enforce one: prefork, gevent)."""
    time.sleep(5)


@app.task(name="tests.kill_own_process")
def kill_own_process():
    """Its pool process dies under it, as when the OOM killer strikes (prefork only:
    under solo and threads the pool process is the worker itself)."""
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="tests.reject_requeue", bind=True, acks_late=True)
def reject_requeue(self, marker_dir):
    """Refuses its message once asking for it back (Reject(requeue=True)), then runs.

    The first delivery leaves a marker file named after the task id in
    ``marker_dir``; the redelivery finds it and succeeds."""
    marker = os.path.join(marker_dir, self.request.id)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        os.unlink(marker)
        return "ok"
    raise Reject("not now", requeue=True)


@app.task(name="tests.sleep")
def sleep(seconds):
    """Something long-running to revoke(terminate=True)."""
    time.sleep(seconds)


@app.task(name="tests.retry_until_exhausted", bind=True, max_retries=2)
def retry_until_exhausted(self):
    """Retries itself until max_retries is exhausted; then fails with the retried error."""
    raise self.retry(countdown=0.2, exc=ConnectionError("still down"))


@app.task(name="tests.autoretry", bind=True, autoretry_for=(ConnectionError,),
          retry_kwargs={"max_retries": 5, "countdown": 0.2})
def autoretry(self, fail_times):
    """Fails ``fail_times`` times, retried by autoretry_for with a countdown; then succeeds."""
    if self.request.retries < fail_times:
        raise ConnectionError("try again")
    return "ok"
