"""End to end on a real Redis: a real worker with events on, the exporter as users run it,
and exact counts read over HTTP from /metrics."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import redis

from tests.celery_app import make_app
from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_finished, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()



def test_task_counts_exceptions_runtime_and_wait_are_exact(redis_server, fleet):
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url))
    worker = fleet(WorkerProcess(url, f"w1@{HOST}", concurrency=2))
    wait_worker_up(exporter, worker.nodename)

    producer = make_app(url)
    for i in range(5):
        producer.send_task("tests.add", args=(i, i))
    for _ in range(3):
        producer.send_task("tests.fail_value")
    for _ in range(2):
        producer.send_task("tests.fail_key")
    producer.send_task("tests.sleep_past_soft_limit")
    producer.send_task("tests.flaky", args=(2,))  # two retries, then success

    wait_finished(exporter, 12)
    time.sleep(2)  # anything late would show up now as a wrong count
    m = exporter.scrape()

    def count(metric, task, **labels):
        return m.get(metric, task=task, queue="work", **labels)

    assert count("celery_task_succeeded_total", "tests.add") == 5
    assert count("celery_task_succeeded_total", "tests.flaky") == 1
    assert count("celery_task_failed_total", "tests.fail_value") == 3
    assert count("celery_task_failed_total", "tests.fail_key") == 2
    assert count("celery_task_failed_total", "tests.sleep_past_soft_limit") == 1
    assert count("celery_task_retried_total", "tests.flaky") == 2
    assert count("celery_task_exceptions_total", "tests.fail_value", exception="ValueError") == 3
    assert count("celery_task_exceptions_total", "tests.fail_key", exception="KeyError") == 2
    assert count("celery_task_exceptions_total", "tests.sleep_past_soft_limit",
                 exception="SoftTimeLimitExceeded") == 1
    # 12 sent by the test + 2 re-sent by the worker for the retries
    assert m.sum("celery_task_sent_total") == 14
    assert m.sum("celery_task_received_total") == 14
    assert m.sum("celery_task_started_total") == 14
    assert count("celery_task_sent_total", "tests.flaky") == 3
    assert m.sum("celery_task_failed_total") == 6
    assert m.sum("celery_task_succeeded_total") == 6
    # no exception message ever becomes a label
    assert "secret customer data" not in m.text
    assert m.label_values("celery_task_succeeded_total", "queue") == {"work"}
    assert m.get("celery_stalk_task_name_unknown_total", type="task-succeeded") is None

    assert count("celery_task_runtime_seconds_count", "tests.add") == 5
    assert count("celery_task_runtime_seconds_bucket", "tests.add", le="+Inf") == 5
    # every start had its task-sent seen: one wait per start
    assert m.sum("celery_task_queue_wait_seconds_count") == 14
    assert 0 <= m.sum("celery_task_queue_wait_seconds_sum") < 60

    assert m.get("celery_worker_up", worker=worker.nodename) == 1
    assert m.get("celery_workers") == 1
    assert m.get("celery_stalk_broker_up") == 1
    assert m.get("celery_stalk_events_connected") == 1
    assert m.get("celery_stalk_events_total", type="task-succeeded") == 6
    assert m.get("celery_stalk_events_total", type="worker-heartbeat") >= 1
    assert m.get("celery_stalk_tracked_tasks") == 0
    assert not [k for k in m.samples if k[0].endswith("_created")]
    # the live exposition, not just the golden one, satisfies Prometheus' own linter
    check = subprocess.run(["promtool", "check", "metrics"], input=m.text.encode(),
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_queue_depth_counts_priority_sub_lists_in_one_read(redis_server, fleet):
    url = redis_server.fresh_url()
    producer = make_app(url)
    for i in range(8):
        producer.send_task("tests.add", args=(i, i), queue="idle")
    for i in range(4):
        producer.send_task("tests.add", args=(i, i), queue="idle", priority=9)
    client = redis.Redis.from_url(url)
    assert client.llen("idle") == 8  # the base list alone would undercount

    exporter = fleet(ExporterProcess(url, "--queue", "always-there"))
    m = exporter.scrape()
    assert m.get("celery_queue_messages", queue="idle") == 12
    # configured queues are reported even though they hold nothing and have no key
    assert m.get("celery_queue_messages", queue="always-there") == 0
    # Redis cannot tell consumers: no made-up number
    assert m.get("celery_queue_consumers", queue="idle") is None
    # Celery's own plumbing is not reported as a work queue
    assert not [q for q in m.label_values("celery_queue_messages", "queue") if "pidbox" in q]


def test_priority_steps_and_key_prefix_from_transport_options(redis_server, fleet):
    url = redis_server.fresh_url()
    options = {"priority_steps": list(range(10)), "sep": ":", "global_keyprefix": "acme:"}
    producer = make_app(url, options)
    for priority in range(10):
        producer.send_task("tests.add", args=(1, 1), queue="tenant", priority=priority)
    keys = {k.decode() for k in redis.Redis.from_url(url).keys("acme:tenant*")}
    assert len(keys) == 10 and "acme:tenant:9" in keys

    exporter = fleet(ExporterProcess(
        url,
        "--broker-transport-option", "priority_steps=[0,1,2,3,4,5,6,7,8,9]",
        "--broker-transport-option", "sep=:",
        "--broker-transport-option", 'global_keyprefix="acme:"',
    ))
    m = exporter.scrape()
    assert m.get("celery_queue_messages", queue="tenant") == 10
    # the heads are read from the same prefixed keys: the oldest message has an age
    assert m.get("celery_queue_oldest_message_age_seconds", queue="tenant") >= 0


def test_sigkilled_worker_is_down_within_30s_and_counted_lost(redis_server, fleet):
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url))  # default flags
    doomed = fleet(WorkerProcess(url, f"doomed@{HOST}", concurrency=1))
    graceful = fleet(WorkerProcess(url, f"graceful@{HOST}", concurrency=1))
    wait_worker_up(exporter, doomed.nodename)
    wait_worker_up(exporter, graceful.nodename)
    assert exporter.scrape().get("celery_workers") == 2

    graceful.stop()
    eventually(lambda: exporter.scrape().get("celery_worker_up", worker=graceful.nodename) == 0,
               20, message="graceful worker reported down")
    killed_at = time.monotonic()
    doomed.kill()
    eventually(lambda: exporter.scrape().get("celery_worker_up", worker=doomed.nodename) == 0,
               30, message="killed worker reported down")
    assert time.monotonic() - killed_at <= 30
    m = eventually(lambda: (m := exporter.scrape()).get("celery_worker_lost_total") == 1 and m,
                   5, message="lost counted")
    assert m.get("celery_workers") == 0
    # the graceful shutdown was not a loss, and each worker says which it was
    assert m.get("celery_worker_lost_total") == 1
    assert m.get("celery_worker_offline", worker=graceful.nodename) == 1
    assert m.get("celery_worker_offline", worker=doomed.nodename) == 0
    # full nodenames, never shortened
    assert m.label_values("celery_worker_up", "worker") == {doomed.nodename, graceful.nodename}
