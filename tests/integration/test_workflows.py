"""Workflows on real workers: chains, groups, chords (a failing member, a retried member, a
nested chain, chord_unlock polling), counted exactly by the exporter over /metrics."""

from __future__ import annotations

import gc
import socket
import time
from datetime import timezone

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError

from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_worker_up
from tests.workflow_app import make_app

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
SETTLE = 1.0
SCRAPE_INTERVAL = 1.0  # how close a workflow's duration must be to what the backend recorded



@pytest.fixture
def workflows(redis_server, fleet, tmp_path, request):
    """An exporter, a worker of tests/workflow_app.py and a producer on one Redis database;
    the result backend is Redis (native chords) or files (celery.chord_unlock)."""
    url = redis_server.fresh_url()
    backend = url if request.param == "redis" else f"file://{tmp_path}"
    exporter = fleet(ExporterProcess(url, "--workflow-settle", str(SETTLE)))
    worker = fleet(WorkerProcess(url, f"wf-{request.param}@{HOST}", concurrency=4,
                                 app="tests.workflow_app", env={"STALK_TEST_BACKEND": backend}))
    wait_worker_up(exporter, worker.nodename)
    producer = make_app(url, backend)
    yield exporter, producer
    # Results unsubscribe from the Redis backend when collected: now, while Redis is up.
    gc.collect()
    producer.close()


def finished(exporter, workflow: str, outcome: str, count: int = 1):
    def check():
        m = exporter.scrape()
        done = m.get("celery_workflow_finished_total", workflow=workflow, outcome=outcome)
        return m if (done or 0) >= count else None

    return eventually(check, 30, message=f"{count} {workflow} {outcome}")


def backend_duration(sent_at: float, result) -> float:
    """The truth: from our apply_async to the last task's end, as the backend recorded it."""
    done = result.date_done.replace(tzinfo=result.date_done.tzinfo or timezone.utc)
    return done.timestamp() - sent_at


def assert_settled(m) -> None:
    assert m.sum("celery_workflows_in_flight") == 0
    assert m.get("celery_stalk_workflow_orphan_tasks_total") == 0
    assert m.sum("celery_stalk_workflows_evicted_total") == 0


@pytest.mark.parametrize("workflows", ["redis"], indirect=True)
def test_chain_group_and_chords_are_counted_exactly(workflows):
    exporter, app = workflows
    s = app.signature
    sent_at = time.time()
    chained = chain(s("wf.chain", (1,)), s("wf.add", (2,)), s("wf.add", (3,))).apply_async()
    group_sent = chain(s("wf.group", (1,)), group(s("wf.add", (1,)), s("wf.add", (2,)),
                                                  s("wf.add", (3,)))).apply_async()
    chorded = chain(s("wf.chord", (1,)),
                    chord([s("wf.add", (1,)), s("wf.add", (2,))], s("wf.total"))).apply_async()
    nested = chain(s("wf.chord_nested", (1,)),
                   chord([chain(s("wf.add", (1,)), s("wf.add", (2,))), s("wf.add", (3,))],
                         s("wf.total"))).apply_async()
    retried = chain(s("wf.chord_retried", (1,)),
                    chord([s("wf.add", (1,)), s("wf.flaky")], s("wf.total"))).apply_async()
    failing = chain(s("wf.chord_failing", (1,)),
                    chord([s("wf.add", (1,)), s("wf.fail")], s("wf.total"))).apply_async()
    assert chained.get(timeout=30) == 6 and chorded.get(timeout=30) == 5
    assert nested.get(timeout=30) == 8 and retried.get(timeout=30) == 3
    group_sent.get(timeout=30)
    # its callback never runs: the result raises the member's error, or the chord's if the
    # header's result was not ready yet when asked
    with pytest.raises((ValueError, ChordError)):
        failing.get(timeout=30)

    for workflow in ("chain", "group", "chord", "chord_nested", "chord_retried"):
        finished(exporter, f"wf.{workflow}", "succeeded")
    m = finished(exporter, "wf.chord_failing", "failed")
    time.sleep(SETTLE + 1)  # anything counted twice, or late, would show now
    m = exporter.scrape()
    tasks = {"chain": 3, "group": 4, "chord": 4, "chord_nested": 5, "chord_retried": 4,
             "chord_failing": 3}  # the failing chord's callback never runs
    for workflow, count in tasks.items():
        label = f"wf.{workflow}"
        assert m.get("celery_workflow_started_total", workflow=label) == 1, label
        outcome = "failed" if workflow == "chord_failing" else "succeeded"
        assert m.get("celery_workflow_finished_total", workflow=label, outcome=outcome) == 1
        assert m.get("celery_workflow_tasks_count", workflow=label) == 1
        assert m.get("celery_workflow_tasks_sum", workflow=label) == count, label
    assert m.sum("celery_workflow_finished_total") == 6
    assert m.get("celery_workflow_task_failed_total", workflow="wf.chord_failing",
                 task="wf.fail", exception="ValueError") == 1
    assert m.sum("celery_workflow_task_failed_total") == 1  # the retry is no failure
    assert m.get("celery_task_retried_total", task="wf.flaky", queue="work") == 1
    for label, result in (("wf.chain", chained), ("wf.chord_nested", nested)):
        truth = backend_duration(sent_at, result)
        measured = m.get("celery_workflow_duration_seconds_sum", workflow=label)
        assert abs(measured - truth) < SCRAPE_INTERVAL, (label, measured, truth)
    assert_settled(m)


@pytest.mark.parametrize("workflows", ["files"], indirect=True)
def test_chord_unlock_polling_does_not_end_a_workflow_early(workflows):
    """Without native chords Celery sends celery.chord_unlock, which retries every second
    until the header is done: the workflow stays in flight meanwhile, and ends once."""
    exporter, app = workflows
    s = app.signature
    result = chain(s("wf.chord_unlock", (1,)),
                   chord([s("wf.slow_add", (1,)), s("wf.slow_add", (2,)), s("wf.add", (3,))],
                         s("wf.total"))).apply_async()
    eventually(lambda: exporter.scrape().get("celery_task_retried_total",
                                             task="celery.chord_unlock", queue="work"), 30,
               message="chord_unlock polling")
    m = exporter.scrape()
    assert m.get("celery_workflows_in_flight", workflow="wf.chord_unlock") == 1
    assert m.get("celery_workflow_finished_total", workflow="wf.chord_unlock",
                 outcome="succeeded") is None
    assert result.get(timeout=30) == 9
    m = finished(exporter, "wf.chord_unlock", "succeeded")
    time.sleep(SETTLE + 1)
    m = exporter.scrape()
    assert m.get("celery_workflow_started_total", workflow="wf.chord_unlock") == 1
    assert m.sum("celery_workflow_finished_total") == 1
    # the root, three header tasks, the unlock task (however often it retried), the callback
    assert m.get("celery_workflow_tasks_sum", workflow="wf.chord_unlock") == 6
    assert_settled(m)


@pytest.mark.parametrize("workflows", ["redis"], indirect=True)
def test_a_group_sent_by_a_client_is_no_workflow(workflows):
    """Celery gives each member of a group sent from outside a task its own root_id."""
    exporter, app = workflows
    s = app.signature
    group(s("wf.add", (1, 1)), s("wf.add", (2, 2))).apply_async().get(timeout=30)
    eventually(lambda: exporter.scrape().get("celery_task_succeeded_total", task="wf.add",
                                             queue="work") == 2, 30, message="group done")
    time.sleep(SETTLE + 1)
    m = exporter.scrape()
    assert m.sum("celery_workflow_started_total") == 0
    assert_settled(m)
