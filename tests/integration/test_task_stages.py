"""Task stages and worker capacity on real Redis with real workers (events on): a task running
past a threshold, prefetched tasks reserved, concurrency from inspect stats, a queue no worker
consumes growing old, and a SIGKILLed worker orphaning the task it ran."""

from __future__ import annotations

import socket
import time

import pytest

from tests.celery_app import make_app
from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
THRESHOLD = 3.0  # seconds a task must run to count as stuck here


def test_long_task_runs_past_a_threshold_prefetched_tasks_reserved_concurrency_from_inspect(
        redis_server, fleet):
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url, "--inspect-interval", "1", "--inspect-timeout", "1"))
    busy = fleet(WorkerProcess(url, f"busy@{HOST}", queues="work", concurrency=1))
    wide = fleet(WorkerProcess(url, f"wide@{HOST}", queues="spare", concurrency=3))
    wait_worker_up(exporter, busy.nodename)
    wait_worker_up(exporter, wide.nodename)

    # Concurrency and prefetch as the workers were started (-c; multiplier 1 in the app).
    m = eventually(lambda: (m := exporter.scrape()).get(
        "celery_worker_concurrency", worker=wide.nodename) is not None and m, 30,
        message="inspect stats answered")
    assert m.get("celery_worker_concurrency", worker=busy.nodename) == 1
    assert m.get("celery_worker_concurrency", worker=wide.nodename) == 3
    assert m.get("celery_worker_prefetch_limit", worker=busy.nodename) == 1
    assert m.get("celery_worker_prefetch_limit", worker=wide.nodename) == 3
    assert m.get("celery_stalk_inspect_failures_total") == 0
    assert abs(m.get("celery_stalk_inspect_last_success_timestamp_seconds") - time.time()) < 10

    # One pool process busy for a while, three more tasks queued: one prefetched, two waiting.
    producer = make_app(url)
    producer.send_task("tests.sleep", args=(12,), queue="work")
    for _ in range(3):
        producer.send_task("tests.add", args=(1, 1), queue="work")
    key = {"task": "tests.sleep", "queue": "work"}
    m = eventually(lambda: (m := exporter.scrape()).get(
        "celery_task_oldest_running_seconds", **key, default=0) > THRESHOLD and m, 20,
        message="the sleeping task running past the threshold")
    assert m.get("celery_worker_tasks_reserved", worker=busy.nodename) == 1
    assert m.get("celery_worker_tasks_reserved", worker=wide.nodename) == 0
    # still waiting in the queue: sent, received by no worker
    assert m.get("celery_queue_oldest_pending_seconds", queue="work") > THRESHOLD - 1
    first, first_at = m.get("celery_task_oldest_running_seconds", **key), time.monotonic()
    time.sleep(2)
    later = exporter.scrape().get("celery_task_oldest_running_seconds", **key)
    assert later - first == pytest.approx(time.monotonic() - first_at, abs=0.5)  # the wall clock

    # Once it ends, nothing runs or waits any more.
    m = eventually(lambda: (m := exporter.scrape()).get(
        "celery_task_succeeded_total", task="tests.add", queue="work", default=0) == 3 and m, 30,
        message="the queue drained")
    assert m.get("celery_task_oldest_running_seconds", **key) is None
    assert m.get("celery_worker_tasks_reserved", worker=busy.nodename) == 0
    assert m.get("celery_queue_oldest_pending_seconds", queue="work") is None
    assert m.sum("celery_task_orphaned_total") == 0


def test_queue_no_worker_consumes_shows_its_pending_age_growing_with_the_clock(redis_server,
                                                                                 fleet):
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url, "--inspect-interval", "0"))
    producer = make_app(url)
    producer.send_task("tests.add", args=(1, 1), queue="nobody")
    sent_at = time.monotonic()
    eventually(lambda: exporter.scrape().get("celery_queue_oldest_pending_seconds",
                                             queue="nobody") is not None, 10,
               message="pending seen")
    producer.send_task("tests.add", args=(2, 2), queue="nobody")  # younger: not the oldest
    time.sleep(3)
    m = exporter.scrape()
    age = m.get("celery_queue_oldest_pending_seconds", queue="nobody")
    assert age == pytest.approx(time.monotonic() - sent_at, abs=1.0)
    assert m.get("celery_queue_messages", queue="nobody") == 2
    # --inspect-interval 0: nothing asked, nothing reported about it
    assert "celery_stalk_inspect" not in m.text and "celery_worker_concurrency{" not in m.text


def test_sigkilled_worker_orphans_the_task_it_was_running(redis_server, fleet):
    url = redis_server.fresh_url()
    # Celery workers heartbeat every 2 s and get 2.5 intervals: lost about 5 s after the kill.
    exporter = fleet(ExporterProcess(url, "--worker-timeout", "2", "--inspect-interval", "0"))
    doomed = fleet(WorkerProcess(url, f"doomed@{HOST}", queues="doom", concurrency=1))
    wait_worker_up(exporter, doomed.nodename)
    make_app(url).send_task("tests.sleep", args=(60,), queue="doom")
    key = {"task": "tests.sleep", "queue": "doom"}
    eventually(lambda: exporter.scrape().get("celery_task_oldest_running_seconds", **key)
               is not None, 20, message="the task started")
    assert exporter.scrape().get("celery_task_orphaned_total", **key) is None

    doomed.kill()
    m = eventually(lambda: (m := exporter.scrape()).get(
        "celery_task_orphaned_total", **key) == 1 and m, 20, message="orphan counted")
    assert m.get("celery_worker_lost_total") == 1
    assert m.get("celery_task_oldest_running_seconds", **key) is None  # no longer running
    assert m.get("celery_worker_tasks_reserved", worker=doomed.nodename) == 0


def test_inspect_against_an_unreachable_broker_counts_failures_and_never_slows_a_scrape():
    exporter = ExporterProcess("redis://127.0.0.1:1/0", "--inspect-interval", "1",
                               "--inspect-timeout", "1")
    exporter.start(wait_ready=False)  # no broker answers: serving, never ready
    try:
        m = eventually(lambda: (m := exporter.scrape()).get(
            "celery_stalk_inspect_failures_total", default=0) >= 2 and m, 30,
            message=f"inspect failures counted\n{exporter.output()}")
        assert m.get("celery_stalk_inspect_last_success_timestamp_seconds") is None
        assert "celery_worker_concurrency{" not in m.text
        started = time.monotonic()
        exporter.scrape()
        assert time.monotonic() - started < 1.0  # the broadcast runs on its own thread
    finally:
        exporter.stop()
