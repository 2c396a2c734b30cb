"""`celery -A tests.celery_app stalk`: the exporter configured from the app, as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request

import pytest
import redis

from tests.celery_app import make_app
from tests.harness import ROOT, ExporterProcess, WorkerProcess, eventually, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()


def celery_stalk(broker_url: str, *args: str, transport_options: dict | None = None,
                 env: dict | None = None) -> ExporterProcess:
    """The plugin run through Celery's own CLI; the app reads its broker from the env."""
    process = ExporterProcess(broker_url, env={
        "STALK_TEST_BROKER": broker_url,
        "STALK_TEST_TRANSPORT_OPTIONS": json.dumps(transport_options or {}),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    })
    process.args = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "stalk",
                    "--listen-address", f"127.0.0.1:{process.port}", *args]
    return process


def test_no_flags_needed_broker_transport_options_queues_and_routes_come_from_the_app(
        redis_server, fleet):
    url = redis_server.fresh_url()
    # priority_steps that differ from kombu's default: only followed if taken from the app
    options = {"priority_steps": [0, 5]}
    exporter = fleet(celery_stalk(url, transport_options=options))

    landing = urllib.request.urlopen(exporter.url + "/", timeout=5).read().decode()
    assert f"127.0.0.1:{redis_server.port}/{url.rsplit('/', 1)[1]}" in landing
    metrics = exporter.scrape()
    assert metrics.get("celery_queue_messages", queue="work") == 0  # the app's default queue

    client = redis.Redis.from_url(url)
    client.lpush("work\x06\x165", b"a message of priority step 5")
    eventually(lambda: exporter.scrape().get("celery_queue_messages", queue="work") == 1, 10,
               message="priority step 5 counted")
    client.delete("work\x06\x165")

    worker = fleet(WorkerProcess(url, f"routed@{HOST}", transport_options=options))
    wait_worker_up(exporter, worker.nodename)
    producer = make_app(url, options)
    producer.conf.task_send_sent_event = False  # only the app's route can name the queue
    for i in range(3):
        producer.send_task("tests.add", args=(i, i))

    eventually(lambda: exporter.scrape().get("celery_task_succeeded_total", task="tests.add",
                                             queue="work") == 3, 30, message="3 routed successes")
    metrics = exporter.scrape()
    assert metrics.sum("celery_task_succeeded_total", queue="unknown") == 0
    assert metrics.sum("celery_task_sent_total") == 0


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_flag_or_env_var_overrides_the_app(redis_server, how):
    nothing_listens = "redis://127.0.0.1:1/0"
    if how == "flag":
        process = celery_stalk(redis_server.url, "--broker-url", nothing_listens)
    else:
        process = celery_stalk(redis_server.url, env={"CELERY_STALK_BROKER_URL": nothing_listens})
    process.start(wait_ready=False)
    try:
        landing = urllib.request.urlopen(process.url + "/", timeout=5).read().decode()
        assert "127.0.0.1:1/0" in landing
        assert process.scrape().get("celery_stalk_broker_up") == 0
    finally:
        assert process.stop() == 0
