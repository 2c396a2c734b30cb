"""End to end on a real RabbitMQ node started by the tests."""

from __future__ import annotations

import socket
import time

import pytest

from tests.celery_app import make_app
from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_finished, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()


def test_counts_exceptions_and_queue_consumers_on_rabbitmq(rabbitmq_server, fleet):
    url = rabbitmq_server.url
    exporter = fleet(ExporterProcess(url, "--queue", "work", "--queue", "never-declared"))
    worker = fleet(WorkerProcess(url, f"rw1@{HOST}", concurrency=2))
    wait_worker_up(exporter, worker.nodename)

    producer = make_app(url)
    for i in range(4):
        producer.send_task("tests.add", args=(i, i))
    for _ in range(2):
        producer.send_task("tests.fail_value")
    producer.send_task("tests.sleep_past_soft_limit")
    producer.send_task("tests.flaky", args=(1,))
    # a queue nobody consumes, so its backlog stays put
    for i in range(3):
        producer.send_task("tests.add", args=(i, i), queue="orphan")

    wait_finished(exporter, 8)
    time.sleep(2)
    m = exporter.scrape()
    assert m.get("celery_task_succeeded_total", task="tests.add", queue="work") == 4
    assert m.get("celery_task_succeeded_total", task="tests.flaky", queue="work") == 1
    assert m.get("celery_task_retried_total", task="tests.flaky", queue="work") == 1
    assert m.get("celery_task_failed_total", task="tests.fail_value", queue="work") == 2
    assert m.get("celery_task_exceptions_total", task="tests.fail_value", queue="work",
                 exception="ValueError") == 2
    assert m.get("celery_task_exceptions_total", task="tests.sleep_past_soft_limit",
                 queue="work", exception="SoftTimeLimitExceeded") == 1
    assert m.sum("celery_task_sent_total") == 12  # 11 by the test, 1 retry by the worker
    assert m.sum("celery_task_received_total") == 9
    assert m.get("celery_task_sent_total", task="tests.add", queue="orphan") == 3

    # passive declares: ready messages and consumers, per queue
    assert m.get("celery_queue_messages", queue="orphan") == 3
    assert m.get("celery_queue_consumers", queue="orphan") == 0
    assert m.get("celery_queue_messages", queue="work") == 0
    assert m.get("celery_queue_consumers", queue="work") == 1
    # a configured queue that does not exist holds nothing, has no consumer, breaks nothing
    assert m.get("celery_queue_messages", queue="never-declared") == 0
    assert m.get("celery_queue_consumers", queue="never-declared") == 0
    assert m.get("celery_stalk_broker_up") == 1
    assert m.get("celery_stalk_collector_success", collector="queues") == 1


def test_sigkilled_worker_goes_down_on_rabbitmq(rabbitmq_server, fleet):
    exporter = fleet(ExporterProcess(rabbitmq_server.url, "--worker-timeout", "5"))
    worker = fleet(WorkerProcess(rabbitmq_server.url, f"rdoomed@{HOST}", concurrency=1))
    wait_worker_up(exporter, worker.nodename)
    worker.kill()
    eventually(lambda: exporter.scrape().get("celery_worker_up", worker=worker.nodename) == 0,
               15, message="killed worker down")
    eventually(lambda: exporter.scrape().get("celery_worker_lost_total") == 1, 5)


def test_event_queue_expires_after_the_exporter_leaves(rabbitmq_server, fleet):
    """Our event queue must not pile up events on the broker once we are gone."""
    exporter = fleet(ExporterProcess(rabbitmq_server.url))
    queues = rabbitmq_server.ctl("list_queues", "name", "arguments")
    ours = [line for line in queues.splitlines() if line.startswith("celeryev.celery-stalk.")]
    assert len(ours) == 1 and "x-expires" in ours[0]
    exporter.stop()
    # auto-delete removes it as soon as its consumer is gone
    eventually(lambda: "celeryev.celery-stalk." not in rabbitmq_server.ctl("list_queues", "name"),
               15, message="event queue removed")


def test_deeply_nested_json_on_rabbitmq_is_counted_not_a_traceback(rabbitmq_server, fleet):
    from kombu import Connection, Exchange

    exporter = fleet(ExporterProcess(rabbitmq_server.url))
    exchange = Exchange("celeryev", type="topic")  # as Celery declares it on AMQP
    nested = b"[" * 2000 + b"]" * 2000
    with Connection(rabbitmq_server.url) as connection:
        producer = connection.Producer()

        def publish(body: bytes) -> None:
            producer.publish(body, exchange=exchange, routing_key="task.multi",
                             content_type="application/json", content_encoding="binary",
                             serializer=None, declare=[exchange])

        for i in range(50):
            publish(b'{"type": "task-received", "uuid": "n%d", "name": "app.good", '
                    b'"hostname": "w@h", "timestamp": 1.0}' % i)
            if i % 10 == 0:
                publish(nested)
    m = eventually(lambda: (m := exporter.scrape()).get("celery_task_received_total",
                                                      task="app.good", queue="unknown") == 50 and m,
                   20, message="the good events counted")
    assert m.get("celery_stalk_events_invalid_total", reason="too_deep") == 5
    assert m.get("celery_stalk_broker_reconnects_total") == 0
    assert "Traceback" not in exporter.output()
