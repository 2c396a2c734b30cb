"""The RabbitMQ event reader (sources/amqp.py) against a real RabbitMQ node: events published
by Celery's own EventDispatcher through kombu in every shape workers use, garbage, a burst
while the exporter cannot read, heartbeats both ways, a broker restart mid-burst, TLS,
vhosts with URL-encoded credentials and failover URLs."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from urllib.parse import quote

import pytest
from celery.events import Event
from kombu import Connection, Exchange

from tests.brokers import RabbitMQServer, free_port
from tests.celery_app import make_app
from tests.harness import ExporterProcess, check_every_shape_counted, eventually
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.integration

CELERYEV = Exchange("celeryev", type="topic")  # as Celery declares it on AMQP


def task_events(task_id: str, name: str, queue: str = "work") -> list[Event]:
    return [
        Event("task-sent", uuid=task_id, name=name, queue=queue, routing_key=queue,
              timestamp=time.time(), hostname="producer@web"),
        Event("task-received", uuid=task_id, name=name, timestamp=time.time(), hostname="w1@host"),
        Event("task-started", uuid=task_id, timestamp=time.time(), hostname="w1@host"),
        Event("task-succeeded", uuid=task_id, runtime=0.2, timestamp=time.time(),
              hostname="w1@host"),
    ]


def send(dispatcher, events: list[Event]) -> None:
    for event in events:
        fields = {k: v for k, v in event.items() if k not in ("type", "timestamp", "hostname")}
        dispatcher.send(event["type"], **fields)


def publish_raw(url: str, bodies: list[bytes], routing_key: str = "task.multi",
                content_type: str | None = "application/json") -> None:
    """Messages to celeryev as they are, bypassing Celery's serializer."""
    with Connection(url) as connection:
        producer = connection.Producer()
        for body in bodies:
            producer.publish(body, exchange=CELERYEV, routing_key=routing_key,
                             content_type=content_type, content_encoding="binary",
                             serializer=None, declare=[CELERYEV])


def started_batch(prefix: str, n: int, padding: int = 0) -> bytes:
    return json.dumps([{"type": "task-started", "uuid": f"{prefix}{i}", "hostname": "w1@h",
                        "timestamp": time.time(), "padding": "x" * padding}
                       for i in range(n)]).encode()


def counted(exporter, metric="celery_stalk_events_total", **labels) -> float:
    return exporter.scrape().get(metric, 0, **labels)


def our_queues(server) -> dict[str, int]:
    """Our event queues on the broker: name -> messages waiting."""
    queues = {}
    for line in server.ctl("list_queues", "-q", "name", "messages").splitlines():
        name, _, messages = line.partition("\t")
        if name.startswith("celeryev.celery-stalk."):
            queues[name] = int(messages)
    return queues


def test_every_shape_celery_sends_and_garbage_counted(rabbitmq_server, fleet):
    url = rabbitmq_server.url
    exporter = fleet(ExporterProcess(url))
    app = make_app(url)
    with app.connection_for_write() as connection:
        producer = app.events.Dispatcher(connection, hostname="producer@web")
        for i in range(10):  # a producer: one event per message
            send(producer, task_events(f"batched-{i}", "app.batched")[:1])
        for i in range(5):  # a gevent worker: every event on its own
            send(producer, task_events(f"single-{i}", "app.single"))
        worker = app.events.Dispatcher(connection, hostname="w1@host", buffer_group=["task"],
                                       buffer_limit=24)
        for i in range(10):  # a prefork worker: 30 events, a task.multi of 24 then one of 6
            send(worker, task_events(f"batched-{i}", "app.batched")[1:])
        worker.flush()
        worker.send("worker-heartbeat", freq=2.0, active=0, processed=10)
    # A body of 400 KB: several body frames (RabbitMQ's frame_max is 128 KB).
    publish_raw(url, [started_batch("large-", 100, padding=4000)])
    garbage = {
        "not_json": [b"{truncated", b""],
        "content_type": [b"(dp0\n."],
        "too_deep": [b"[" * 2000 + b"]" * 2000],
    }
    publish_raw(url, garbage["not_json"] + garbage["too_deep"])
    publish_raw(url, garbage["content_type"], content_type="application/x-python-serialize")

    expected = {"task-sent": 15, "task-received": 15, "task-started": 115, "task-succeeded": 15}
    check_every_shape_counted(exporter, expected,
                              {reason: len(bodies) for reason, bodies in garbage.items()})
    assert "Traceback" not in exporter.output()


def test_a_burst_it_cannot_read_waits_in_its_queue_and_is_all_counted(rabbitmq_server, fleet):
    """Celery's own event queues drop what waited 5 s (x-message-ttl); ours keeps it."""
    exporter = fleet(ExporterProcess(rabbitmq_server.url))
    before = counted(exporter, type="task-started")
    exporter.proc.send_signal(signal.SIGSTOP)  # an exporter that cannot keep up
    try:
        # 2,000 messages of 10 KB: more than socket buffers hold, so most wait in the queue
        publish_raw(rabbitmq_server.url, [started_batch(f"burst-{b}-", 20, padding=400)
                                          for b in range(2000)])
        waiting = sum(our_queues(rabbitmq_server).values())
        time.sleep(6)  # past the 5 s a Celery event queue keeps a message
    finally:
        exporter.proc.send_signal(signal.SIGCONT)
    assert waiting > 0  # the burst really waited on the broker
    eventually(lambda: counted(exporter, type="task-started") - before == 40_000, 60,
               message=f"the whole burst counted\n{exporter.output()[-2000:]}")
    assert list(our_queues(rabbitmq_server).values()) == [0]  # nothing left behind
    assert counted(exporter, "celery_stalk_broker_reconnects_total") == 0


def connection_timeouts(server) -> list[str]:
    """The heartbeat timeout the broker agreed with each of our connections."""
    lines = server.ctl("list_connections", "-q", "client_properties", "timeout").splitlines()
    return [line.rsplit("\t", 1)[-1] for line in lines if "celery-stalk events" in line]


def test_heartbeats_keep_a_busy_connection_and_a_silent_broker_is_left(fleet):
    """Both ways: the broker hears our heartbeats although we only ever read, for longer
    than it waits (two intervals of 10 s); a broker we stop hearing is left after two."""
    with RabbitMQServer() as server, TcpProxy(server.port) as proxy:
        exporter = fleet(ExporterProcess(proxy.url(server.url)))
        assert connection_timeouts(server) == ["10"]
        stop = time.monotonic() + 25
        sent = 0
        while time.monotonic() < stop:  # a steady stream, read as it comes
            publish_raw(server.url, [started_batch(f"hb-{sent}-", 10)])
            sent += 10
            time.sleep(0.05)
        eventually(lambda: counted(exporter, type="task-started") == sent, 30,
                   message="the stream counted")
        m = exporter.scrape()
        assert m.get("celery_stalk_broker_reconnects_total") == 0
        assert connection_timeouts(server) == ["10"]  # the same connection, still there

        # No worker is up, so the stall watchdog stays quiet: heartbeats alone notice.
        frozen_at = time.monotonic()
        proxy.freeze()
        eventually(lambda: counted(exporter, "celery_stalk_broker_reconnects_total") == 1, 40,
                   message="a silent broker left")
        assert 15 < time.monotonic() - frozen_at < 35
        assert "missed heartbeats" in exporter.output()
        assert counted(exporter, "celery_stalk_events_stalls_total") == 0
        eventually(exporter.ready, 20, message="consuming again through a new connection")


def test_broker_restarted_mid_burst(fleet):
    with RabbitMQServer() as server:
        exporter = fleet(ExporterProcess(server.url))
        stop = threading.Event()
        published = []

        def burst():
            try:
                with Connection(server.url) as connection:
                    producer = connection.Producer()
                    b = 0
                    while not stop.is_set():
                        producer.publish(started_batch(f"mid-{b}-", 20), exchange=CELERYEV,
                                         routing_key="task.multi", content_type="application/json",
                                         content_encoding="binary", serializer=None,
                                         declare=[CELERYEV])
                        published.append(b)
                        b += 1
            except Exception:  # the broker went away under the publisher: the burst ends
                pass

        publisher = threading.Thread(target=burst, daemon=True)
        publisher.start()
        eventually(lambda: counted(exporter, type="task-started") > 2000, 30,
                   message="the burst is flowing")
        server.restart()
        stop.set()
        publisher.join(30)
        eventually(exporter.ready, 60, message="consuming again after the restart")
        m = exporter.scrape()
        assert m.get("celery_stalk_broker_reconnects_total") == 1
        assert m.get("celery_stalk_events_invalid_total", 0, reason="internal_error") == 0
        during = m.get("celery_stalk_events_total", type="task-started")
        assert 2000 < during <= 20 * len(published)
        # The event queue was declared anew; what is published now is all counted.
        publish_raw(server.url, [started_batch("after-", 20) for _ in range(50)])
        eventually(lambda: counted(exporter, type="task-started") == during + 1000, 30,
                   message="events after the restart counted")
        assert len(our_queues(server)) == 1
        assert "Traceback" not in exporter.output()


def test_tls_verified_and_refused(fleet):
    with RabbitMQServer(tls=True) as server:
        # an unknown CA is refused: the default is to verify the broker
        untrusting = ExporterProcess(server.tls_url)
        untrusting.start(wait_ready=False)
        try:
            eventually(lambda: "certificate verify failed" in untrusting.output().lower(), 20,
                       message="unverified certificate refused")
            assert untrusting.scrape().get("celery_stalk_broker_up") == 0
            assert not untrusting.ready()
        finally:
            untrusting.stop()

        exporter = fleet(ExporterProcess(server.tls_url, "--broker-ssl-option",
                                         f"ca_certs={server.ca_file}", "--queue", "work"))
        publish_raw(server.url, [started_batch(f"tls-{b}-", 20) for b in range(500)])
        eventually(lambda: counted(exporter, type="task-started") == 10_000, 30,
                   message=f"all events over TLS\n{exporter.output()[-2000:]}")
        m = exporter.scrape()
        assert m.get("celery_stalk_broker_up") == 1  # the queue reader speaks TLS too
        assert m.get("celery_stalk_broker_reconnects_total") == 0
        assert "amqps://127.0.0.1" in exporter.output()


SECRET = "Pa55:w/rd@hunter2#x"  # every character a URL must escape


def test_vhost_url_encoded_credentials_and_failover(rabbitmq_server, fleet):
    server = rabbitmq_server
    server.ctl("add_vhost", "ops/events")
    server.ctl("add_user", "stalk", SECRET)
    server.ctl("set_permissions", "-p", "ops/events", "stalk", ".*", ".*", ".*")
    good = f"amqp://stalk:{quote(SECRET, safe='')}@127.0.0.1:{server.port}/{quote('ops/events', safe='')}"
    dead = f"amqp://stalk:{quote(SECRET, safe='')}@127.0.0.1:{free_port()}//"
    exporter = fleet(ExporterProcess(f"{dead};{good}", "--log-level", "debug"))
    publish_raw(good, [started_batch("vhost-", 20)])
    publish_raw(server.url, [started_batch("default-vhost-", 20)])  # another vhost: not ours
    eventually(lambda: counted(exporter, type="task-started") == 20, 30,
               message=f"events of the vhost\n{exporter.output()[-2000:]}")
    assert "vhost 'ops/events'" in exporter.output()

    wrong = good.replace(quote(SECRET, safe=""), quote(SECRET[::-1], safe=""))
    refused = ExporterProcess(wrong, "--log-level", "debug")
    refused.start(wait_ready=False)
    try:
        eventually(lambda: "ACCESS_REFUSED" in refused.output(), 20, message="login refused")
        assert not refused.ready()
    finally:
        refused.stop()
    for text in (exporter.output(), refused.output()):
        for form in (SECRET, quote(SECRET, safe=""), SECRET[::-1], "hunter2"):
            assert form not in text
    assert re.search(r"reconnecting in [\d.]+ s", refused.output())


def test_a_deleted_event_queue_is_subscribed_again_at_once(rabbitmq_server, fleet):
    """The broker cancels our consumer (Basic.Cancel) but the connection works: no backoff."""
    exporter = fleet(ExporterProcess(rabbitmq_server.url))
    time.sleep(5.5)  # a subscription that ends at once would get the backoff
    (name,) = our_queues(rabbitmq_server)
    rabbitmq_server.ctl("delete_queue", name)
    eventually(lambda: counted(exporter, "celery_stalk_broker_reconnects_total") == 1, 5,
               message="subscribed again")
    eventually(lambda: list(our_queues(rabbitmq_server)) not in ([], [name]), 10,
               message="a new event queue")
    assert "subscribing again at once" in exporter.output()
    assert "reconnecting in" not in exporter.output()  # no backoff was waited
    publish_raw(rabbitmq_server.url, [started_batch("again-", 20)])
    eventually(lambda: counted(exporter, type="task-started") >= 20, 10, message="counting again")
