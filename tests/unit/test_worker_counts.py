"""The worker instrumentation's counting parts on their own: the pool channel under process
churn (real forks, real Unix sockets, no broker), restarts by slot, and the exporter's
model when task metrics come from the workers."""

from __future__ import annotations

import os
import signal
import time

from celery_stalk.model import Model
from celery_stalk.worker.instrument import Instrumentation

from tests import events as ev


def wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_counts_from_300_short_lived_processes_arrive_once_even_from_killed_ones():
    instr = Instrumentation()
    instr.open_channel()
    per_process, processes = 5, 300
    for i in range(processes):
        pid = os.fork()
        if pid == 0:  # a pool process: counts, then exits or is killed before it can say more
            try:
                instr.pool_process_started(i % 2, os.getpid())
                for _ in range(per_process):
                    instr.sent("app.add", "work")
                if i % 3 == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    def sent():
        return instr.counts.task_snapshot().counters["task-sent"].get(("app.add", "work"), 0)

    assert wait_for(lambda: sent() == per_process * processes)
    time.sleep(0.2)  # nothing more arrives: none counted twice
    assert sent() == per_process * processes
    restarts, _, errors = instr.counts.local_snapshot()
    assert restarts == processes - 2  # every process after the first in each of the 2 slots
    assert set(errors.values()) == {0}
    # bounded by the slots, however many processes came and went
    assert len(instr.processes.pids) == 2


def test_the_main_process_counts_in_place_not_over_the_channel():
    instr = Instrumentation()
    instr.open_channel()
    instr.sent("app.add", "work")
    assert instr.counts.task_snapshot().counters["task-sent"] == {("app.add", "work"): 1}


def test_an_error_in_a_pool_process_is_counted_in_the_main_one():
    instr = Instrumentation()
    instr.open_channel()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                raise RuntimeError("in the pool process")
            except RuntimeError:
                instr.errors("publish")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert wait_for(lambda: instr.counts.local_snapshot()[2]["publish"] == 1)


def test_a_bad_record_is_an_instrumentation_error_not_a_dead_reader():
    instr = Instrumentation()
    channel = instr.open_channel()
    channel._writer.send(b"not json")
    channel._writer.send(b'["sent", "app.add", "work"]')
    assert wait_for(lambda: instr.counts.local_snapshot()[2]["pool_channel"] == 1)
    assert wait_for(lambda: instr.counts.task_snapshot().counters["task-sent"] == {("app.add", "work"): 1})


def test_label_values_are_capped_as_in_the_exporter():
    instr = Instrumentation()
    assert instr.counts.labels("x" * 301, None) == ("unknown", "unknown")
    assert instr.counts.labels("app.add", "work") == ("app.add", "work")


def test_an_exporter_that_leaves_task_metrics_to_the_workers_counts_none_but_keeps_workers():
    model = Model(count_task_events=False)
    model.link_up(1000.0)
    for event in [ev.online("w1@host"), *ev.lifecycle("t1", "app.add", "work", wait=1, runtime=1)]:
        model.apply(event, 1000.0)
    snap = model.snapshot(1000.0)
    assert all(not series for series in snap.counters.values())
    assert not snap.runtime and not snap.wait and snap.tracked_tasks == 0
    assert snap.events["task-succeeded"] == 1  # tallied, so a stalled stream still shows
    assert snap.workers["w1@host"].up


def test_readme_worker_catalog_matches_the_code():
    from celery_stalk.collectors.catalog import catalog_markdown
    from celery_stalk.worker.catalog import WORKER_CATALOG

    from tests.harness import ROOT

    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- worker-catalog:begin -->", 1)[1].split("<!-- worker-catalog:end -->", 1)[0]
    assert table.strip() == catalog_markdown(WORKER_CATALOG), \
        "README worker catalog drifted: paste `celery-stalk catalog --worker`"


def test_worker_task_metrics_are_the_exporters():
    """Same names, types, labels and HELP: the worker renders the exporter's catalog entries."""
    from celery_stalk.collectors import CATALOG, TaskCollector
    from celery_stalk.worker.catalog import TASK_METRICS

    instr = Instrumentation()
    labels = instr.counts.labels("app.add", "work")
    for kind in ("task-sent", "task-received", "task-retried", "task-rejected", "task-revoked"):
        instr.counts.count(kind, labels)
    instr.counts.started(labels, 0.5)
    instr.counts.succeeded(labels, 0.25)
    instr.counts.failed(labels, "KeyError")
    families = {f.name: f for f in TaskCollector(instr.counts).collect()}
    assert {"celery_task_sent_total", "celery_task_runtime_seconds"} <= set(TASK_METRICS)
    for name in TASK_METRICS:
        metric = CATALOG[name]
        family = families[name.removesuffix("_total")]
        assert (family.type, family.documentation) == (metric.kind, metric.help), name
        assert family.samples, name
        assert set(family.samples[0].labels) - {"le"} == set(metric.labels), name


def test_a_worker_names_itself_on_its_task_series():
    """Served by a worker, every task series carries the worker too: what keeps workers apart
    where rules and dashboards take one series of each exporter HA pair."""
    from celery_stalk.collectors import CATALOG, TaskCollector

    instr = Instrumentation()
    labels = instr.counts.labels("app.add", "work")
    instr.counts.started(labels, 0.5)
    instr.counts.succeeded(labels, 0.25)
    instr.counts.failed(labels, "KeyError")
    families = {f.name: f for f in TaskCollector(instr.counts, "w1@host").collect()}
    for name in ("celery_task_started_total", "celery_task_exceptions_total",
                 "celery_task_runtime_seconds", "celery_task_queue_wait_seconds"):
        family = families[name.removesuffix("_total")]
        for sample in family.samples:
            assert sample.labels["worker"] == "w1@host", name
            assert set(sample.labels) - {"le", "worker"} == set(CATALOG[name].labels), name
