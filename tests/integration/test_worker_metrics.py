"""Metrics from inside the workers (celery_stalk.worker) on a real Redis, real workers of
every pool, scraped over HTTP: exact counts after 200 mixed tasks, with events off."""

from __future__ import annotations

import importlib.util
import socket
import time

import celery_stalk.worker
import pytest
from prometheus_client import REGISTRY

from tests.celery_app import make_app
from tests.harness import ExporterProcess, eventually, wait_worker_up
from tests.instrumented import InstrumentedWorker, Mix, by_task, wait_finished

pytestmark = pytest.mark.integration

HOST = socket.gethostname()



def instrumented_producer(url: str):
    """This test process as an instrumented producer: stamps, and counts what it sends."""
    producer = make_app(url)
    producer.conf.task_send_sent_event = False  # no task-sent events: the stamp is all there is
    celery_stalk.worker.install(producer)
    return producer


def sent_here(task: str, queue: str = "work") -> float:
    """celery_task_sent_total counted by this (producer) process, in the default registry."""
    return REGISTRY.get_sample_value("celery_task_sent_total", {"task": task, "queue": queue}) or 0


def pool_available(pool: str) -> bool:
    return pool not in ("gevent", "eventlet") or importlib.util.find_spec(pool) is not None


POOLS = [
    # (pool, can it kill a task at its hard time limit, max_tasks_per_child)
    pytest.param("prefork", True, 2, id="prefork-max_tasks_per_child=2"),
    pytest.param("threads", False, None, id="threads"),
    pytest.param("solo", False, None, id="solo"),
    pytest.param("gevent", True, None, id="gevent"),
    # The slowest by far (about 150 s here): Celery's eventlet worker on Redis with task
    # events off and worker_prefetch_multiplier=1 (the tests' app) finishes a task or two a
    # second however it is instrumented (a plain app's worker, the same settings, no
    # instrumentation: 60 no-op tasks in 43 s; with -E or the default multiplier: 0.3 s).
    # wait_finished waits as long as tasks keep finishing.
    pytest.param("eventlet", False, None, id="eventlet"),
]


@pytest.mark.parametrize("pool,kills,max_tasks_per_child", POOLS)
def test_200_mixed_tasks_are_counted_exactly_with_events_off(redis_server, fleet, pool, kills,
                                                             max_tasks_per_child):
    if not pool_available(pool):
        pytest.skip(f"{pool} does not install here")
    url = redis_server.fresh_url()
    worker = fleet(InstrumentedWorker(url, f"{pool}@{HOST}", pool=pool, concurrency=2,
                                      max_tasks_per_child=max_tasks_per_child))
    worker.wait_serving()
    producer = instrumented_producer(url)
    mix = Mix(hard_limit=kills)
    sent_before = {task: sent_here(task) for task in mix.received()}
    mix.send(producer)

    wait_finished(worker, mix.finished())
    time.sleep(1.5)  # anything late would show up now as a wrong count
    m = worker.scrape()

    received = mix.received()
    assert by_task(m, "celery_task_received_total") == received
    assert by_task(m, "celery_task_started_total") == received
    assert by_task(m, "celery_task_succeeded_total") == mix.succeeded()
    failed = {}
    for (task, _), count in mix.failed().items():
        failed[task] = failed.get(task, 0) + count
    assert by_task(m, "celery_task_failed_total") == failed
    assert by_task(m, "celery_task_retried_total") == {"tests.flaky": mix.flaky}
    assert by_task(m, "celery_task_rejected_total") == {"tests.reject": mix.rejects}
    assert by_task(m, "celery_task_revoked_total") == {}
    exceptions = {(dict(labels)["task"], dict(labels)["exception"]): value
                  for (name, labels), value in m.samples.items()
                  if name == "celery_task_exceptions_total"}
    assert exceptions == mix.failed()
    # run time of every success, queue wait of every start (the producer stamped them all)
    assert by_task(m, "celery_task_runtime_seconds_count") == mix.succeeded()
    assert by_task(m, "celery_task_queue_wait_seconds_count") == received
    assert m.get("celery_stalk_queue_wait_clock_skew_total") == 0
    # the retries were published from inside the worker (a pool process under prefork)
    assert by_task(m, "celery_task_sent_total") == {"tests.flaky": mix.flaky}
    # ... and the 200 first sends where they were made: in this producer
    assert {task: sent_here(task) - sent_before[task] for task in received} == {
        task: count - (mix.flaky if task == "tests.flaky" else 0) for task, count in received.items()}

    worker_label = {"worker": worker.nodename}
    assert m.get("celery_worker_time_limit_kills_total", **worker_label) == mix.kills
    assert m.get("celery_worker_pool_size", **worker_label) == (1 if pool == "solo" else 2)
    assert m.get("celery_worker_pool_busy", **worker_label) == 0
    assert m.get("celery_worker_tasks_reserved", **worker_label) == 0
    memory = {dict(labels)["process"]: value for (name, labels), value in m.samples.items()
              if name == "celery_worker_process_memory_bytes"}
    assert memory["main"] > 10_000_000
    if pool == "prefork":
        # 210 runs, at most 2 per pool process (one killed early): at least 105
        # processes in 2 slots, every replacement counted. The memory of each slot's
        # live process (one that exited may not be replaced yet: billiard does it lazily).
        assert m.get("celery_worker_pool_restarts_total", **worker_label) >= 103
        assert {"main"} < set(memory) <= {"main", "0", "1"}
        assert all(v > 10_000_000 for v in memory.values())
    else:
        assert m.get("celery_worker_pool_restarts_total", **worker_label) == 0
        assert set(memory) == {"main"}
    errors = {dict(labels)["where"]: value for (name, labels), value in m.samples.items()
              if name == "celery_stalk_instrumentation_errors_total"}
    assert errors and set(errors.values()) == {0}
    assert m.get("celery_stalk_collector_success", collector="tasks") == 1
    assert m.get("celery_stalk_collector_success", collector="worker") == 1


def test_queue_wait_is_measured_from_the_instrumented_producer(redis_server, fleet):
    """Tasks wait in the queue while no worker runs: the wait is the producer's send time to
    the start, without task-sent events; a countdown's wait runs from its ETA."""
    url = redis_server.fresh_url()
    producer = instrumented_producer(url)
    for i in range(3):
        producer.send_task("tests.add", args=(i, i), queue="work")
    producer.send_task("tests.add", args=(0, 0), queue="work", countdown=3)
    sent_at = time.time()
    time.sleep(2)
    worker = fleet(InstrumentedWorker(url, f"wait@{HOST}", pool="solo", concurrency=1))
    worker.wait_serving()
    m = wait_finished(worker, 4, timeout=60)
    started_by = time.time()
    labels = {"task": "tests.add", "queue": "work", "worker": worker.nodename}
    assert m.get("celery_task_queue_wait_seconds_count", **labels) == 4
    waited = m.get("celery_task_queue_wait_seconds_sum", **labels)
    # three waited at least the 2 s before the worker came; the ETA one from its ETA on
    assert 3 * 2.0 <= waited <= 3 * (started_by - sent_at) + 1.0
    assert m.get("celery_task_queue_wait_seconds_bucket", le="1.0", **labels) <= 1
    assert m.get("celery_task_queue_wait_seconds_bucket", le="2.5", **labels) == 4 or \
        m.get("celery_task_queue_wait_seconds_bucket", le="5.0", **labels) == 4


def test_the_exporter_in_workers_mode_counts_no_task_but_keeps_queues_and_workers(redis_server, fleet):
    """Workers with -E and instrumented, and the exporter with --task-metrics-source workers:
    task metrics only from the workers (nothing counted twice); the exporter still sees the
    worker through its heartbeats and reads the queue's depth."""
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url, "--task-metrics-source", "workers", "--queue", "work"))
    worker = fleet(InstrumentedWorker(url, f"both@{HOST}", pool="threads", events=True))
    worker.wait_serving()
    wait_worker_up(exporter, worker.nodename)
    producer = instrumented_producer(url)
    for i in range(20):
        producer.send_task("tests.add", args=(i, i), queue="work")
    wait_finished(worker, 20)
    events = eventually(
        lambda: (m := exporter.scrape()).get("celery_stalk_events_total", type="task-succeeded") == 20 and m,
        30, message="the exporter received the task events")
    assert events.sum("celery_task_succeeded_total") == 0
    assert events.sum("celery_task_received_total") == 0
    assert events.get("celery_stalk_task_metrics_from_events") == 0
    assert events.get("celery_worker_up", worker=worker.nodename) == 1
    assert events.get("celery_queue_messages", queue="work") == 0
    assert worker.scrape().get("celery_task_succeeded_total", task="tests.add", queue="work",
                              worker=worker.nodename) == 20
