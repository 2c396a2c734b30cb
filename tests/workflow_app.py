"""The Celery app of the workflow tests: canvases on real workers, with a result backend.

Chords need one: the backend is a redis:// URL (native chords: the last header
task sends the callback) or a file:// one (no native join: Celery sends
celery.chord_unlock, which polls by retrying until the header is done). Workers
read both from STALK_TEST_BROKER and STALK_TEST_BACKEND; the test builds its
producer with make_app.
"""

from __future__ import annotations

import os
import time

from celery import Celery

# Roots, one task name per kind of workflow, so each is counted under its own label.
ROOTS = ("chain", "group", "chord", "chord_failing", "chord_retried", "chord_nested",
         "chord_unlock")


def make_app(broker_url: str, backend: str | None) -> Celery:
    app = Celery("stalkworkflows", broker=broker_url, backend=backend, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,  # a chain's next step is sent by a worker: workers need it too
        worker_send_task_events=True,
        task_default_queue="work",
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    for kind in ROOTS:
        app.task(name=f"wf.{kind}", shared=False)(_identity)

    @app.task(name="wf.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="wf.slow_add", shared=False)
    def slow_add(x, y):
        time.sleep(1.5)
        return x + y

    @app.task(name="wf.total", shared=False)
    def total(values):
        return sum(values)

    @app.task(name="wf.fail", shared=False)
    def fail(x):
        raise ValueError("member fails")

    @app.task(name="wf.flaky", bind=True, max_retries=3, shared=False)
    def flaky(self, x):
        if self.request.retries < 1:
            raise self.retry(countdown=0.3)
        return x

    return app


def _identity(x):
    return x


app = make_app(os.environ.get("STALK_TEST_BROKER", "memory://"),
               os.environ.get("STALK_TEST_BACKEND") or None)
