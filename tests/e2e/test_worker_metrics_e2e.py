"""The rules and dashboards on metrics from inside the workers: a real Prometheus scraping two
instrumented prefork workers (celery_stalk.worker, events off; one recycles its pool processes
after every two tasks) and the exporter with --task-metrics-source workers (queue depth, worker liveness),
all in one job. Every dashboard panel and every recording rule returns data, and the task
counts add up over the workers, counted once."""

from __future__ import annotations

import json
import math
import socket
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import celery_stalk.worker
import pytest
import yaml
from celery_stalk.mixin import RULES, render
from celery_stalk.mixin.config import TEST
from celery_stalk.mixin.dashboards import once

from tests.alerts.promql import series_names
from tests.celery_app import make_app
from tests.e2e.stack import Prometheus
from tests.e2e.test_alerts_and_dashboards import DASHBOARDS, has_a_number, substitute
from tests.harness import ExporterProcess, eventually, wait_worker_up
from tests.instrumented import InstrumentedWorker

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
QUEUE = "e2e"
PINNED = "e2e-pinned"  # consumed by one worker only
PARKED = "e2e-parked"  # consumed by no worker
# Only RabbitMQ counts consumers: no panel of it can have data on Redis.
RABBITMQ_ONLY = {"celery_queue_consumers", "celery_queue_messages_unacked",
                 "celery_queue_consumer_utilisation"}
# Where a task is (pending, running) and whether a worker's task events arrive are judged from
# task events, which this mode does not apply (README, "Tasks in flight").
FROM_TASK_EVENTS = {"celery_queue_oldest_pending_seconds", "celery_task_oldest_running_seconds",
                    "celery_worker_task_events_enabled", "celery_task_orphaned_total"}
# Beat runs and workflows are followed in task events, which this mode leaves to the workers
# (README: "not with --task-metrics-source workers"): that dashboard and those rules have no
# data here.
EVENTS_ONLY = {"celery-beat-workflows"}
EVENTS_ONLY_RULES = {"celery-stalk.beat", "celery-stalk.workflows"}
# a raised Reject is a rejection, not a failure
PER_WAVE = {"succeeded": 7, "failed": 3, "retried": 1, "rejected": 1, "revoked": 1}


def send_wave(broker: str) -> None:
    producer = make_app(broker)
    producer.conf.task_send_sent_event = False  # the stamp, not events, gives the queue wait
    celery_stalk.worker.install(producer)
    for i in range(6):
        producer.send_task("tests.add", args=(i, i), queue=QUEUE)
    producer.send_task("tests.flaky", args=(1,), queue=QUEUE)  # one retry, then success
    producer.send_task("tests.fail_value", queue=QUEUE)
    producer.send_task("tests.fail_key", queue=QUEUE)
    # always the same worker: increase() sees a time limit hit only on a series it saw before
    producer.send_task("tests.sleep_past_soft_limit", queue=PINNED)
    producer.send_task("tests.reject", queue=QUEUE)
    producer.send_task("tests.add", args=(0, 0), queue=QUEUE,  # expired: revoked, never run
                       expires=datetime.now(timezone.utc) - timedelta(minutes=1))


@pytest.fixture(scope="module")
def stack(redis_server):
    started = []

    def start(process):
        started.append(process)
        return process.start()

    try:
        broker = redis_server.fresh_url()
        exporter = start(ExporterProcess(broker, "--task-metrics-source", "workers",
                                         "--queue", QUEUE, "--queue", PARKED, "--worker-timeout", "5",
                                         # pool sizes for the utilisation panels, every second
                                         "--inspect-interval", "1", "--inspect-timeout", "1"))
        workers = [
            start(InstrumentedWorker(broker, f"pre@{HOST}", pool="prefork",
                                     queues=f"{QUEUE},{PINNED}", max_tasks_per_child=2)),
            # prefork too: only it stops a task at its soft time limit
            start(InstrumentedWorker(broker, f"pre2@{HOST}", pool="prefork", queues=QUEUE)),
        ]
        for worker in workers:
            worker.wait_serving()
            wait_worker_up(exporter, worker.nodename)  # heartbeats: the fleet view stays
        # A message that waits all along: the oldest message's age has a value to show.
        make_app(broker).send_task("tests.add", args=(0, 0), queue=PARKED)
        targets = [f"127.0.0.1:{p.port}" for p in (exporter, *workers)]
        prometheus = start(Prometheus(render(TEST)[RULES], targets=targets,
                                      alertmanager="127.0.0.1:9"))
        eventually(lambda: len(prometheus.api("query", query="up == 1")["result"]) == 3, 30,
                   message="the exporter and both workers scraped")
        yield SimpleNamespace(broker=broker, exporter=exporter, workers=workers,
                              prometheus=prometheus, started=time.time())
    finally:
        for process in reversed(started):
            process.stop()


def value(prometheus, expr: str) -> float | None:
    result = prometheus.api("query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def test_dashboards_and_rules_return_data_from_two_instrumented_workers(stack):
    prometheus = stack.prometheus
    for wave in (1, 2):  # the second wave moves every rate() and quantile
        send_wave(stack.broker)
        for kind, per_wave in PER_WAVE.items():
            query, want = f"sum(celery_task_{kind}_total)", per_wave * wave
            eventually(lambda q=query, n=want: (value(prometheus, q) or 0) >= n, 60,
                       message=f"wave {wave}: {kind}")
    time.sleep(3)  # a few more scrapes, so every rate window holds two samples after it

    # Counted once, by the workers: the exporter (workers mode) has no task series, and
    # the totals over instances are exactly the traffic.
    exporter = f"127.0.0.1:{stack.exporter.port}"
    assert value(prometheus, f'count(celery_task_received_total{{instance="{exporter}"}})') is None
    assert value(prometheus, "sum(celery_task_succeeded_total)") == 2 * PER_WAVE["succeeded"]
    assert value(prometheus, "sum(celery_task_failed_total)") == 2 * PER_WAVE["failed"]
    assert value(prometheus, "count(count by (instance) (celery_task_started_total))") == 2
    assert value(prometheus, "sum(celery_task_queue_wait_seconds_count)") == \
        value(prometheus, "sum(celery_task_started_total)")
    # As the dashboards and rules take each series once (one of an exporter HA pair), the
    # workers still add up: their series differ by worker, not only by instance.
    for kind, per_wave in PER_WAVE.items():
        query = f"sum({once(f'celery_task_{kind}_total')})"
        assert value(prometheus, query) == 2 * per_wave, query

    end = time.time()
    span = math.ceil(end - stack.started) + 1
    empty, checked = [], 0
    for path in DASHBOARDS:
        if path.stem in EVENTS_ONLY:
            continue
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if series_names(target["expr"]) <= RABBITMQ_ONLY | FROM_TASK_EVENTS:
                    continue
                expr = substitute(target["expr"], span)
                result = prometheus.api("query_range", query=expr, start=stack.started, end=end,
                                        step="1s")["result"]
                checked += 1
                if not has_a_number(result):
                    empty.append(f"{path.stem} / {panel['title']} / {target['refId']}: {expr}")
    assert checked > 50
    assert not empty, "panels with no data:\n" + "\n".join(empty)

    rules = yaml.safe_load(render(TEST)[RULES])["groups"]
    recorded = [r["record"] for g in rules for r in g["rules"]
                if "record" in r and g["name"] not in EVENTS_ONLY_RULES
                and not series_names(r["expr"]) - {"up"} <= FROM_TASK_EVENTS]
    assert recorded
    missing = [name for name in recorded
               if not prometheus.api("query_range", query=name, start=stack.started, end=end,
                                     step="1s")["result"]]
    assert not missing, f"recording rules with no data: {missing}"
    # every task metric an alert reads is there, from the workers
    alerts = [r["expr"] for g in rules for r in g["rules"] if "alert" in r]
    task_series = {n for e in alerts for n in series_names(e)
                   if n.startswith("celery_task_")} - FROM_TASK_EVENTS
    assert task_series
    absent = [n for n in task_series if value(prometheus, f"count({n})") is None]
    assert not absent, f"task series the alerts read, not scraped: {absent}"
