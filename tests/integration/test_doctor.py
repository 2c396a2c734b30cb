"""Configuration problems named with their fix, on a real Redis broker with real workers:
one worker with task events (-E), one without; a producer with task_send_sent_event
and one without. The exporter's metrics, log and landing page, and `celery-stalk
doctor`'s checklist and exit status, each say the right thing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.celery_app import make_app
from tests.harness import ROOT, ExporterProcess, WorkerProcess, eventually, free_port, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
ON, OFF = f"evented@{HOST}", f"silent@{HOST}"


class Producers:
    """Sends tasks until stopped, with task-sent events: tests.noop to the silent queue,
    tests.add to the others; and tests.sleep (0 s) to the evented worker from a producer
    that sends none. One task name per queue: a task whose task-received beats its
    task-sent is counted under the queue its name was last sent to (README, "Which queue
    a task is counted under")."""

    def __init__(self, url: str, sent_events: bool = True, unsent: bool = True,
                 queues=("evented", "silent")):
        self.with_sent = make_app(url)
        self.without_sent = make_app(url)
        self.without_sent.conf.task_send_sent_event = False
        self.sent_events, self.unsent, self.queues = sent_events, unsent, queues
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for queue in self.queues:
                if queue == "silent":
                    self.with_sent.send_task("tests.noop", queue=queue)
                else:
                    self.with_sent.send_task("tests.add", args=(1, 2), queue=queue)
            if self.unsent:
                self.without_sent.send_task("tests.sleep", args=(0,), queue="evented")
            self.stop.wait(0.5)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def doctor(url: str, *args: str, command=("-m", "celery_stalk", "doctor")) -> subprocess.CompletedProcess:
    env = {**os.environ, "STALK_TEST_BROKER": url,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *command, "--broker-url", url, *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def mixed_fleet(redis_server):
    """An exporter watching a worker with task events and one without, fed by both
    producers for the whole module."""
    url = redis_server.fresh_url()
    exporter = ExporterProcess(url, "--queue", "evented,silent").start()
    workers = [WorkerProcess(url, ON, queues="evented").start(),
               WorkerProcess(url, OFF, queues="silent", task_events=False).start()]
    try:
        for worker in workers:
            wait_worker_up(exporter, worker.nodename)
        with Producers(url) as producers:
            yield url, exporter, producers
    finally:
        for worker in workers:
            worker.stop()
        exporter.stop()


def test_metrics_log_and_landing_page_name_the_worker_without_task_events(mixed_fleet):
    url, exporter, _ = mixed_fleet
    m = eventually(lambda: (lambda m: m if m.get("celery_worker_task_events_enabled",
                                                 worker=OFF) == 0 else None)(exporter.scrape()),
                   75, message="the silent worker's task events judged off")
    assert m.get("celery_worker_task_events_enabled", worker=ON) == 1
    # both workers' throughput, task events or not
    assert m.get("celery_worker_processed_total", worker=OFF) > 0
    assert m.get("celery_worker_processed_total", worker=ON) > 0
    for worker in (ON, OFF):  # one host, one clock
        assert abs(m.get("celery_worker_clock_offset_seconds", worker=worker)) < 2.0
    # the silent worker's tasks show only as sent; the evented one's as succeeded
    assert m.get("celery_task_sent_total", task="tests.noop", queue="silent") > 0
    assert m.sum("celery_task_received_total", task="tests.noop") == 0
    assert m.sum("celery_task_succeeded_total", task="tests.noop") == 0
    assert m.get("celery_task_succeeded_total", task="tests.add", queue="evented") > 0
    # tests.sleep's producer sends no task-sent: counted under queue unknown
    eventually(lambda: exporter.scrape().get("celery_stalk_task_sent_missing_total",
                                             task="tests.sleep", queue="unknown", default=0) > 0,
               30, message="tasks without task-sent counted")

    def logged():
        out = exporter.output()
        return ("sent no task events" not in out
                and f"worker {OFF} processes tasks but sends no task events: start the worker "
                    "with -E or set worker_send_task_events = True" in out
                and "task_send_sent_event = True" in out and out)

    out = eventually(logged, 20, message="problems logged")
    assert out.count(f"worker {OFF} processes tasks but sends no task events") == 1  # once
    assert f"worker {ON} processes tasks" not in out
    assert "CELERY_WORKER_SEND_TASK_EVENTS = True" in out
    assert "tests.sleep (queue unknown)" in out
    assert "tests.add (queue" not in out and "tests.noop (queue" not in out  # sent events on
    assert "clock" not in out

    page = urllib.request.urlopen(exporter.url + "/", timeout=5).read().decode()
    assert f"worker {OFF} processes tasks but sends no task events" in page
    assert "start the worker with -E" in page
    assert "tests.sleep (queue unknown)" in page
    assert f"worker {ON} processes" not in page


def test_doctor_checklist_names_each_problem_and_exits_1(mixed_fleet):
    url, _, _ = mixed_fleet
    result = doctor(url, "--listen", "12", "--queue", "evented,silent")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "[ok]   broker reachable (redis)" in out
    assert "[ok]   event stream flowing" in out
    assert f"[ok]   worker {ON}: task events on; Celery 5." in out
    assert f"[FAIL] worker {OFF}: task events OFF" in out
    assert "heartbeat every 2 s" in out and "pool prefork x2" in out
    assert "clock +0.0 s" in out
    assert "fix: start the worker with -E or set worker_send_task_events = True" in out
    assert "[FAIL] tasks reach workers without task-sent events" in out
    assert "tests.sleep (queue unknown)" in out
    assert "fix: set task_send_sent_event = True" in out
    assert "[ok]   queue evented:" in out and "[ok]   queue silent:" in out
    assert "[ok]   --worker-timeout 20 s covers 10.0 heartbeat intervals" in out
    assert out.rstrip().endswith("2 to fix.")
    assert "Traceback" not in result.stderr

    as_json = doctor(url, "--listen", "8", "--format", "json")
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["status"] == 1
    by_worker = {c["subject"]: c for c in report["checks"] if c["check"] == "worker"}
    assert by_worker[OFF]["status"] == "fail" and "-E" in by_worker[OFF]["fix"]
    assert by_worker[ON]["status"] == "ok"
    assert report["workers"][OFF]["task_events"] is False
    assert report["workers"][ON]["task_events"] is True
    assert report["workers"][ON]["pool"] == "pool prefork x2"
    assert report["workers"][ON]["heartbeat_interval_seconds"] == 2.0
    assert abs(report["workers"][ON]["clock_offset_seconds"]) < 2.0
    assert report["workers"][OFF]["processed"] > 0
    assert set(report["queues"]) >= {"evented", "silent"}


def test_doctor_exits_0_when_all_is_well(redis_server):
    url = redis_server.fresh_url()
    worker = WorkerProcess(url, f"alone@{HOST}", queues="evented").start()
    try:
        with Producers(url, unsent=False, queues=("evented",)):
            result = doctor(url, "--listen", "10")
    finally:
        worker.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"[ok]   worker alone@{HOST}: task events on" in result.stdout
    assert "[ok]   task-sent events arrive" in result.stdout
    assert result.stdout.rstrip().endswith("all well.")


@pytest.mark.parametrize("how", ["celery-stalk", "celery -A proj stalk"])
def test_doctor_against_a_stopped_broker_exits_2_with_one_line(redis_server, how):
    stopped = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    command = (("-m", "celery_stalk", "doctor") if how == "celery-stalk"
               else ("-m", "celery", "-A", "tests.celery_app", "stalk", "doctor"))
    started = time.monotonic()
    result = doctor(stopped, "--listen", "5", command=command)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("celery-stalk doctor: error: broker redis://:***@127.0.0.1:")
    assert "cannot be read" in lines[0] and "check --broker-url" in lines[0]
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def test_enable_events_turns_task_events_on_for_a_worker_started_without_them(redis_server,
                                                                               fleet):
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url, "--enable-events", "2"))
    worker = fleet(WorkerProcess(url, OFF, queues="silent", task_events=False))
    wait_worker_up(exporter, worker.nodename)
    producer = make_app(url)

    def counted():
        producer.send_task("tests.noop", queue="silent")
        m = exporter.scrape()
        return m if m.get("celery_task_succeeded_total", task="tests.noop",
                          queue="silent", default=0) > 0 else None

    m = eventually(counted, 40, interval=1.0,
                   message=f"task events from the worker\n{exporter.output()}\n{worker.output()}")
    assert m.get("celery_stalk_enable_events_broadcasts_total", result="sent") >= 1
    assert m.get("celery_stalk_enable_events_broadcasts_total", result="failed") == 0
    eventually(lambda: exporter.scrape().get("celery_worker_task_events_enabled",
                                             worker=OFF) == 1, 10, message="judged on")
    assert "broadcasting enable_events to the workers every 2 s" in exporter.output()


def test_doctor_on_rabbitmq_names_the_worker_without_task_events(rabbitmq_server):
    url, queue = rabbitmq_server.url, "doctor-silent-amqp"
    worker = WorkerProcess(url, f"amqp-silent@{HOST}", queues=queue, task_events=False).start()
    try:
        with Producers(url, unsent=False, queues=(queue,)):
            result = doctor(url, "--listen", "12", "--queue", queue)
    finally:
        worker.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[ok]   broker reachable (amqp)" in result.stdout
    assert f"[FAIL] worker amqp-silent@{HOST}: task events OFF" in result.stdout
    assert "pool prefork x2" in result.stdout
    assert f"[ok]   queue {queue}: " in result.stdout and "consumers 1" in result.stdout


def test_a_worker_clock_ahead_is_measured_logged_and_named_by_the_doctor(redis_server, fleet):
    url, skewed = redis_server.fresh_url(), f"skewed@{HOST}"
    exporter = fleet(ExporterProcess(url))
    fleet(WorkerProcess(url, skewed, queues="evented", env={"STALK_TEST_CLOCK_SKEW": "10"}))
    wait_worker_up(exporter, skewed)
    m = eventually(lambda: (lambda m: m if m.get("celery_worker_clock_offset_seconds",
                                                 worker=skewed, default=0) > 9 else None)(
        exporter.scrape()), 20, message="offset measured")
    assert 9.0 < m.get("celery_worker_clock_offset_seconds", worker=skewed) < 10.5
    line = f"worker {skewed}'s clock is 10.0 s ahead of this exporter's"
    eventually(lambda: line in exporter.output(), 20, message="clock skew logged")
    assert "chrony" in exporter.output()
    page = urllib.request.urlopen(exporter.url + "/", timeout=5).read().decode()
    assert line.replace("'", "&#x27;") in page

    result = doctor(url, "--listen", "6")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"[FAIL] {line}" in result.stdout
    assert "fix: synchronise the clocks of both hosts" in result.stdout
