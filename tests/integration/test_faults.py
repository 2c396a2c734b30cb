"""Faults on real parts: brokers stopped and restarted under a running worker, a broker
absent at start, a connection that goes silently dead, SIGTERM during a scrape.

Throughout, a watcher scrapes every half second and checks that /metrics keeps
answering and that no counter ever goes backwards."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.brokers import RabbitMQServer, RedisServer
from tests.celery_app import make_app
from tests.harness import ExporterProcess, Metrics, WorkerProcess, eventually, wait_worker_up
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
MONOTONIC = re.compile(r"(_total|_count|_sum|_bucket)$")


class Watcher:
    """Scrapes on its own thread; records every failure to answer and every counter
    that went backwards, and what /readyz said."""

    def __init__(self, exporter: ExporterProcess):
        self.exporter = exporter
        self.problems: list[str] = []
        self.scrapes: list[Metrics] = []
        self.readyz: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        previous: dict = {}
        while not self._stop.wait(0.5):
            try:
                m = self.exporter.scrape()
            except Exception as exc:
                self.problems.append(f"/metrics failed: {exc!r}")
                continue
            self.scrapes.append(m)
            for key, value in m.samples.items():
                if MONOTONIC.search(key[0]) and value < previous.get(key, 0):
                    self.problems.append(f"{key} went from {previous[key]} to {value}")
            previous = {k: v for k, v in m.samples.items() if MONOTONIC.search(k[0])}
            try:
                urllib.request.urlopen(self.exporter.url + "/readyz", timeout=5)
                self.readyz.append(200)
            except urllib.error.HTTPError as exc:
                self.readyz.append(exc.code)
            except Exception as exc:
                self.problems.append(f"/readyz failed: {exc!r}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def send_and_wait(exporter, url, n, expected_total):
    producer = make_app(url)
    for i in range(n):
        producer.send_task("tests.add", args=(i, i))
    eventually(lambda: exporter.scrape().sum("celery_task_succeeded_total") >= expected_total, 60,
               message=f"{expected_total} tasks succeeded\n{exporter.output()[-3000:]}")
    time.sleep(1.5)  # a late or doubled event would show now
    assert exporter.scrape().sum("celery_task_succeeded_total") == expected_total


def reconnect_delays(output: str) -> list[float]:
    return [float(d) for d in re.findall(r"reconnecting in ([\d.]+) s", output)]


def check_backoff(delays: list[float], base: float = 0.5, cap: float = 10.0):
    """Each delay is the capped exponential step, jittered down by at most half."""
    assert len(delays) >= 3, delays
    for attempt, delay in enumerate(delays):
        step = min(cap, base * 2 ** attempt)
        assert step / 2 - 0.05 <= delay <= step + 0.05, (attempt, delays)


def outage_and_recovery(server, url, fleet, heartbeat_wait=30):
    """Stop the broker under a running worker and exporter, check what the exporter
    says during the outage, bring the broker back, check it resumes counting. The least
    worker timeout there is (5 s): the worker, retrying on Celery's own schedule, can come
    back well after the exporter, and is not lost for it."""
    exporter = fleet(ExporterProcess(url, "--worker-timeout", "5"))
    worker = fleet(WorkerProcess(url, f"outage-{server.name}@{HOST}", concurrency=1))
    wait_worker_up(exporter, worker.nodename, 60)
    send_and_wait(exporter, url, 4, 4)

    with Watcher(exporter) as watch:
        server.stop()
        down = eventually(
            lambda: (m := exporter.scrape()).get("celery_stalk_broker_up") == 0
            and m.get("celery_stalk_events_connected") == 0 and not exporter.ready() and m,
            30, message="outage reported")
        assert down.get("celery_stalk_collector_success", collector="queues") == 0
        # several reconnect attempts while the broker is away
        eventually(lambda: len(reconnect_delays(exporter.output())) >= 3, 30,
                   message="three reconnect attempts")
        during = exporter.scrape()
        # the fleet is not declared dead because the exporter cannot hear it
        assert during.get("celery_worker_up", worker=worker.nodename) == 1
        server.start()
        restarted = time.time()
        eventually(exporter.ready, 60, message="exporter ready again")
        # the worker reconnects too; wait until its heartbeats reach us again
        eventually(lambda: exporter.scrape().get("celery_worker_last_heartbeat_timestamp_seconds",
                                                 worker=worker.nodename) > restarted,
                   heartbeat_wait, message="worker heard again")
        send_and_wait(exporter, url, 4, 8)

    assert watch.problems == [], watch.problems
    assert 503 in watch.readyz and watch.readyz[-1] == 200
    # scraped all along: served during the outage (how many times depends on the machine's
    # pace) and after it
    assert [m for m in watch.scrapes if m.get("celery_stalk_broker_up") == 0]
    assert watch.scrapes[-1].get("celery_stalk_broker_up") == 1
    m = exporter.scrape()
    assert m.get("celery_stalk_broker_up") == 1 and m.get("celery_stalk_events_connected") == 1
    assert m.get("celery_stalk_broker_reconnects_total") == 1, exporter.output()
    assert m.get("celery_worker_lost_total") == 0, exporter.output()
    assert m.get("celery_stalk_events_stalls_total") == 0, exporter.output()
    check_backoff(reconnect_delays(exporter.output()))
    assert exporter.proc.poll() is None
    return exporter


def test_redis_stopped_and_restarted_while_events_flow(fleet):
    with RedisServer() as server:
        outage_and_recovery(server, server.url, fleet)


def test_rabbitmq_stopped_and_restarted_while_events_flow(fleet):
    with RabbitMQServer() as server:
        exporter = outage_and_recovery(server, server.url, fleet, heartbeat_wait=60)
        # the event queue died with the node (not durable) and was declared anew
        queues = server.ctl("list_queues", "name")
        assert len(re.findall(r"^celeryev\.celery-stalk\.", queues, flags=re.M)) == 1, queues
        exporter.stop()


def test_broker_unreachable_at_start_then_reachable():
    server = RedisServer()  # port chosen, not started yet
    try:
        exporter = ExporterProcess(server.url)
        exporter.start(wait_ready=False)
        try:
            m = exporter.scrape()
            assert m.get("celery_stalk_broker_up") == 0
            assert not exporter.ready()
            eventually(lambda: len(reconnect_delays(exporter.output())) >= 3, 20,
                       message="retries with backoff")
            server.start()
            eventually(exporter.ready, 30, message="connected once the broker is there")
            m = exporter.scrape()
            assert m.get("celery_stalk_broker_up") == 1
            assert m.get("celery_stalk_broker_reconnects_total") == 0  # first connect
            check_backoff(reconnect_delays(exporter.output()))
        finally:
            assert exporter.stop() == 0
    finally:
        server.close()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_silently_dead_connection_is_noticed_and_replaced(broker, request, fleet):
    """A failover behind the exporter's back: its connection stays open but nothing
    arrives any more. The watchdog notices (workers are up, yet no event) before
    any worker would be declared lost, reconnects, and counting resumes."""
    server = request.getfixturevalue(f"{broker}_server")
    url = server.url if broker == "rabbitmq" else server.fresh_url()
    with TcpProxy(server.port) as proxy:
        exporter = fleet(ExporterProcess(proxy.url(url), "--events-stall-timeout", "6",
                                         "--worker-timeout", "30"))
        worker = fleet(WorkerProcess(url, f"stall-{broker}@{HOST}", concurrency=1))
        wait_worker_up(exporter, worker.nodename, 60)
        base = exporter.scrape().sum("celery_task_succeeded_total")

        frozen_at = time.monotonic()
        proxy.freeze()
        m = eventually(lambda: (m := exporter.scrape()).get("celery_stalk_events_stalls_total") == 1
                       and m, 30, message="stall noticed")
        assert time.monotonic() - frozen_at < 15
        eventually(lambda: exporter.scrape().get("celery_stalk_broker_reconnects_total") >= 1, 5,
                   message="reconnected after the stall")
        eventually(exporter.ready, 20, message="ready on a fresh connection")
        send_and_wait(exporter, url, 3, base + 3)
        m = exporter.scrape()
        assert m.get("celery_worker_up", worker=worker.nodename) == 1
        assert m.get("celery_worker_lost_total") == 0
        assert m.get("celery_stalk_events_stalls_total") == 1
        assert "looks silently lost" in exporter.output()


def test_rabbitmq_event_queue_deleted_under_the_consumer_is_declared_again(rabbitmq_server, fleet):
    url = rabbitmq_server.url
    exporter = fleet(ExporterProcess(url))
    worker = fleet(WorkerProcess(url, f"requeue@{HOST}", concurrency=1))
    wait_worker_up(exporter, worker.nodename, 60)
    before = exporter.scrape().sum("celery_task_succeeded_total")
    name = re.search(r"^(celeryev\.celery-stalk\.\S+)", rabbitmq_server.ctl("list_queues", "name"),
                     flags=re.M).group(1)
    rabbitmq_server.ctl("delete_queue", name)
    eventually(lambda: exporter.scrape().get("celery_stalk_broker_reconnects_total") >= 1, 30,
               message="consumer cancelled by the broker reconnects")
    ours = name.rsplit(".", 1)[0] + "."  # the exporter's own prefix; a new queue per connect
    eventually(lambda: ours in rabbitmq_server.ctl("list_queues", "name"), 30,
               message="event queue declared again")
    eventually(exporter.ready, 20)
    send_and_wait(exporter, url, 2, before + 2)


def test_sigterm_finishes_the_scrape_in_flight_and_exits_0_within_5s(redis_server):
    url = redis_server.fresh_url()
    with TcpProxy(redis_server.port) as proxy:
        exporter = ExporterProcess(proxy.url(url), "--queue", "work", "--queue-read-timeout", "5")
        exporter.start()
        try:
            proxy.delay = 1.5  # every broker reply now takes 1.5 s: a slow scrape
            idle = socket.create_connection(("127.0.0.1", exporter.port))  # sends nothing, ever
            result = {}

            def slow_scrape():
                started = time.monotonic()
                try:
                    result["metrics"] = exporter.scrape()
                except Exception as exc:
                    result["error"] = exc
                result["took"] = time.monotonic() - started

            scraper = threading.Thread(target=slow_scrape)
            scraper.start()
            time.sleep(0.5)  # the scrape is now waiting on the broker
            term_at = time.monotonic()
            exporter.proc.send_signal(signal.SIGTERM)
            code = exporter.proc.wait(10)
            exited_after = time.monotonic() - term_at
            scraper.join(10)
            idle.close()
        finally:
            exporter.stop()
    assert code == 0, exporter.output()
    assert exited_after < 5, exited_after
    assert "error" not in result, result
    assert result["took"] >= 1.5  # it really was in flight across the SIGTERM
    m = result["metrics"]
    assert m.get("celery_stalk_broker_up") == 1 and m.get("celery_queue_messages", queue="work") == 0
    assert "received SIGTERM" in exporter.output() and "stopped" in exporter.output()
