"""The oldest message's age on a real Redis, with real workers and real scrapes.

A queue nobody consumes shows the age of its oldest message growing with the wall
clock: exact (to the time a scrape takes) when the exporter saw the task-sent event,
including a message waiting in a priority sub-list; a lower bound, from when the
exporter first saw the message, when producers send no task-sent events.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.celery_app import make_app
from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
AGE = "celery_queue_oldest_message_age_seconds"


def timed_age(exporter: ExporterProcess, queue: str) -> tuple[float, float, float | None]:
    """(time before the scrape, time after it, the queue's age in it)."""
    before = time.time()
    m = exporter.scrape()
    return before, time.time(), m.get(AGE, queue=queue)


def test_age_of_an_unconsumed_queue_follows_the_wall_clock_from_task_sent(redis_server, fleet):
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url))
    worker = fleet(WorkerProcess(url, f"w1@{HOST}", queues="work"))
    wait_worker_up(exporter, worker.nodename)
    producer = make_app(url)

    # The oldest message waits in a priority sub-list: reading the base list alone
    # would report the younger messages sent after it.
    sent_from = time.time()
    producer.send_task("tests.add", args=(1, 1), queue="stuck", priority=9)
    sent_until = time.time()
    time.sleep(2.0)
    for i in range(3):
        producer.send_task("tests.add", args=(i, i), queue="stuck")
    producer.send_task("tests.add", args=(0, 0), queue="work")  # consumed at once
    eventually(lambda: exporter.scrape().sum("celery_task_sent_total", queue="stuck") == 4,
               20, message="the task-sent events were applied")

    for _ in range(3):
        before, after, age = timed_age(exporter, "stuck")
        assert before - sent_until <= age <= after - sent_from, (before, after, age)
        assert age >= 2.0
        time.sleep(1.5)
    m = exporter.scrape()
    assert m.get("celery_queue_messages", queue="stuck") == 4
    # A queue its worker keeps empty has no age at all.
    eventually(lambda: exporter.scrape().get("celery_queue_messages", queue="work") == 0, 20)
    assert exporter.scrape().get(AGE, queue="work") is None
    assert m.get("celery_stalk_queue_heads_invalid_total", reason="not_json") == 0

    # A worker for the queue drains it: its age goes away with its last message.
    fleet(WorkerProcess(url, f"w2@{HOST}", queues="stuck"))
    eventually(lambda: (m := exporter.scrape()).get("celery_queue_messages", queue="stuck") == 0
               and m.get(AGE, queue="stuck") is None, 30, message="the drained queue has no age")


def test_without_task_sent_the_age_counts_from_when_the_exporter_first_saw_the_head(
        redis_server, fleet):
    url = redis_server.fresh_url()
    producer = make_app(url)
    producer.conf.task_send_sent_event = False
    sent_at = time.time()
    producer.send_task("tests.add", args=(1, 1), queue="quiet")
    producer.send_task("tests.add", args=(2, 2), queue="quiet", priority=6)
    time.sleep(3.0)  # waited before the exporter could see it: not in the lower bound

    exporter = fleet(ExporterProcess(url, "--queue", "quiet"))
    first_before, first_after, first = timed_age(exporter, "quiet")
    assert first is not None and first <= first_after - first_before + 0.5
    time.sleep(2.0)
    before, after, age = timed_age(exporter, "quiet")
    # Grows with the wall clock from the first sight...
    assert before - first_after <= age <= after - first_before, (first, age)
    # ...and stays below the true wait, which it bounds from below.
    assert age < after - sent_at - 2.5
    assert exporter.scrape().get("celery_queue_messages", queue="quiet") == 2


def celery_message_bytes(url: str) -> bytes:
    """One real task message, as the producer left it in Redis (taken from a scratch list)."""
    import redis

    producer = make_app(url)
    producer.conf.task_send_sent_event = False
    producer.send_task("tests.add", args=(1, 1), queue="scratch")
    return redis.Redis.from_url(url).rpop("scratch")


def test_a_foreign_head_is_counted_and_skipped_and_a_key_of_another_type_is_empty(redis_server, fleet):
    import redis

    url = redis_server.fresh_url()
    client = redis.Redis.from_url(url)
    client.lpush("foreign", b"not a kombu message")
    client.set("stringy", b"a key of another type: WRONGTYPE for LLEN and LINDEX")
    client.lpush("stringy\x06\x163", celery_message_bytes(url))
    exporter = fleet(ExporterProcess(url, "--queue", "foreign", "--queue", "stringy"))
    m = exporter.scrape()
    assert m.get("celery_queue_messages", queue="foreign") == 1
    assert m.get(AGE, queue="foreign") is None
    # The errors are read in step: the next list of the same queue still counts.
    assert m.get("celery_queue_messages", queue="stringy") == 1
    assert m.get(AGE, queue="stringy") >= 0
    assert m.get("celery_stalk_broker_up") == 1
    m = exporter.scrape()
    assert m.get("celery_stalk_queue_heads_invalid_total", reason="not_json") == 1  # once


def test_a_redis_that_stops_answering_is_broker_down_within_the_read_timeout(fleet):
    """The replies are read off the socket within --queue-read-timeout in all; the
    connection is then dropped, and the next read after Redis is back is whole again."""
    import os
    import signal

    from tests.brokers import RedisServer

    with RedisServer() as server:
        url = server.url
        producer = make_app(url)
        producer.send_task("tests.add", args=(1, 1), queue="held")
        exporter = fleet(ExporterProcess(url, "--queue", "held", "--queue-read-timeout", "1"))
        assert exporter.scrape().get(AGE, queue="held") >= 0
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            m = exporter.scrape()
            took = time.monotonic() - started
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert m.get("celery_stalk_broker_up") == 0
        assert took < 1 + 1.0, took
        m = eventually(lambda: (m := exporter.scrape()).get("celery_stalk_broker_up") == 1 and m,
                       10, message="read again once Redis answers")
        assert m.get("celery_queue_messages", queue="held") == 1
        assert m.get(AGE, queue="held") >= 0
