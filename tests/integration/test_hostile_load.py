"""Hostile load on the event stream, on real sockets: a real worker stays visible while a
flood of made-up worker hostnames fills --max-workers many times over.

A worker is kept through such a flood once it has been heard twice (a worker heard only once
when the flood begins may drop out until its next heartbeat, at most 2 s later: see
model/workers.py)."""

from __future__ import annotations

import json
import socket
import time

import pytest
from kombu import Connection, Exchange

from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
EXCHANGE = Exchange("celeryev", type="fanout")


def test_a_real_worker_stays_visible_through_a_hostname_flood(redis_server, fleet):
    url = redis_server.fresh_url()
    exporter = fleet(ExporterProcess(url, "--max-workers", "100"))
    worker = fleet(WorkerProcess(url, f"real@{HOST}", concurrency=1))
    wait_worker_up(exporter, worker.nodename, 60)
    first = exporter.scrape().get("celery_worker_last_heartbeat_timestamp_seconds",
                                  worker=worker.nodename)
    eventually(lambda: exporter.scrape().get("celery_worker_last_heartbeat_timestamp_seconds",
                                             worker=worker.nodename) > first,
               10, message="heard twice")
    with Connection(url) as connection:
        producer = connection.Producer()
        sent, seen_up, scrapes = 0, [], 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # 80 made-up hostnames a second, each heard once: 160 per heartbeat
            # interval of the real worker, against a cap of 100
            for _ in range(8):
                body = json.dumps({"type": "worker-heartbeat", "hostname": f"fake-{sent}@flood",
                                   "freq": 2.0, "active": 0, "processed": 0,
                                   "timestamp": time.time()})
                producer.publish(body, exchange=EXCHANGE, routing_key="worker.heartbeat",
                                 content_type="application/json", content_encoding="utf-8",
                                 serializer=None, declare=[EXCHANGE])
                sent += 1
            time.sleep(0.1)
            m = exporter.scrape()  # served while the flood runs
            scrapes += 1
            seen_up.append(m.get("celery_worker_up", worker=worker.nodename) == 1)
    m = exporter.scrape()
    assert all(seen_up), f"the real worker vanished in scrapes {[i for i, up in enumerate(seen_up) if not up]} of {scrapes}"
    assert len(m.label_values("celery_worker_up", "worker")) == 100
    assert m.get("celery_stalk_label_forgotten_total", label="worker") >= sent - 100
    assert m.get("celery_stalk_broker_reconnects_total") == 0
