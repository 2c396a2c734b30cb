"""RabbitMQ's management API on a real node with the plugin enabled, real workers, real scrapes.

The node is a module-scoped one of its own: the plugin slows the boot of the shared node
every other RabbitMQ test uses.
"""

from __future__ import annotations

import socket
import time

import kombu
import pytest

from tests.brokers import RabbitMQServer
from tests.celery_app import make_app
from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def rabbitmq_management():
    with RabbitMQServer(management=True) as server:
        yield server


def management_exporter(server: RabbitMQServer, *args: str, env: dict | None = None):
    return ExporterProcess(server.url, "--rabbitmq-management-url", server.management_url,
                           "--rabbitmq-management-interval", "1", *args, env=env)


def test_management_api_reports_every_queue_of_the_vhost_with_unacked_and_consumers(
        rabbitmq_management, fleet):
    server = rabbitmq_management
    producer = make_app(server.url)
    producer.conf.task_send_sent_event = False  # the exporter learns no queue from events
    worker = fleet(WorkerProcess(server.url, f"w1@{HOST}", queues="busy", concurrency=1))
    exporter = fleet(management_exporter(server))
    wait_worker_up(exporter, worker.nodename)

    for i in range(3):
        producer.send_task("tests.add", args=(i, i), queue="reports")  # nobody consumes it
    for _ in range(4):  # one runs, one is prefetched (unacked), two stay ready
        producer.send_task("tests.sleep", args=(30,), queue="busy")
    # A message whose producer set the AMQP timestamp: the API dates the queue's head.
    stamped_at = int(time.time()) - 100
    with kombu.Connection(server.url) as conn:
        queue = kombu.Queue("stamped", routing_key="stamped")
        conn.Producer().publish({"x": 1}, routing_key="stamped", declare=[queue],
                                timestamp=stamped_at)

    def reported():
        m = exporter.scrape()
        return (m.get("celery_queue_messages", queue="reports") == 3
                and m.get("celery_queue_messages", queue="busy") == 2
                and m.get("celery_queue_messages_unacked", queue="busy") == 1
                and m.get("celery_queue_messages", queue="stamped") == 1 and m)

    m = eventually(reported, 40, message="the management API's counts reached /metrics")
    # None of these queues was named on the command line or in a task-sent event.
    assert m.get("celery_queue_consumers", queue="reports") == 0
    assert m.get("celery_queue_consumers", queue="busy") == 1
    assert m.get("celery_queue_messages_unacked", queue="reports") == 0
    # RabbitMQ reports a consumed queue's utilisation with its next statistics (every 5 s)
    (utilisation,) = eventually(lambda: (u := exporter.scrape().get(
        "celery_queue_consumer_utilisation", queue="busy")) is not None and (u,), 20,
        message="consumer utilisation of the consumed queue")
    assert 0 <= utilisation <= 1
    # Celery sets no message timestamp: no age rather than an invented one.
    assert m.get("celery_queue_oldest_message_age_seconds", queue="reports") is None
    before = time.time()
    age = exporter.scrape().get("celery_queue_oldest_message_age_seconds", queue="stamped")
    assert before - stamped_at - 3 <= age <= time.time() - stamped_at + 1
    # Celery's own plumbing is not a work queue.
    assert not [q for q in m.label_values("celery_queue_messages", "queue")
                if q.startswith("celeryev") or "pidbox" in q]
    assert m.get("celery_stalk_broker_up") == 1
    assert m.get("celery_stalk_rabbitmq_management_polls_failed_total") == 0
    assert time.time() - m.get(
        "celery_stalk_rabbitmq_management_last_success_timestamp_seconds") < 10


@pytest.mark.parametrize("given_by", ["env", "file"])
def test_rejected_credentials_are_a_failure_metric_and_never_printed(rabbitmq_management, fleet,
                                                                    tmp_path, given_by):
    server = rabbitmq_management
    secret = "not-the-password-9f3c"
    if given_by == "env":
        args, env = (), {"CELERY_STALK_RABBITMQ_MANAGEMENT_PASSWORD": secret}
    else:
        (tmp_path / "password").write_text(secret + "\n")
        args, env = ("--rabbitmq-management-password-file", str(tmp_path / "password")), {}
    exporter = fleet(management_exporter(
        server, "--rabbitmq-management-user", "guest", *args, env=env))
    m = eventually(lambda: (m := exporter.scrape()).get(
        "celery_stalk_rabbitmq_management_polls_failed_total", default=0) >= 2 and m, 20)
    assert m.get("celery_stalk_broker_up") == 0
    assert m.get("celery_stalk_rabbitmq_management_last_success_timestamp_seconds") is None
    assert m.get("celery_stalk_collector_success", collector="queues") == 0
    time.sleep(0.5)
    output = exporter.output()
    assert "HTTP 401" in output and "check the user and password" in output
    assert secret not in output and secret not in m.text
