"""The Redis event reader (sources/redis.py) against a real redis-server: events published
by Celery's own EventDispatcher through kombu, in every shape workers use, plus garbage,
plus Redis dropping the subscriber for falling behind."""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest
from celery.events import Event
from celery_stalk.sources.redis import subscribe_pattern

from tests.brokers import RedisServer
from tests.celery_app import make_app
from tests.harness import ExporterProcess, check_every_shape_counted, eventually

pytestmark = pytest.mark.integration



def task_events(task_id: str, name: str, queue: str = "work") -> list[Event]:
    return [
        Event("task-sent", uuid=task_id, name=name, queue=queue, routing_key=queue,
              timestamp=time.time(), hostname="producer@web"),
        Event("task-received", uuid=task_id, name=name, timestamp=time.time(),
              hostname="w1@host"),
        Event("task-started", uuid=task_id, timestamp=time.time(), hostname="w1@host"),
        Event("task-succeeded", uuid=task_id, runtime=0.2, timestamp=time.time(),
              hostname="w1@host"),
    ]


def send(dispatcher, events: list[Event]) -> None:
    for event in events:
        fields = {k: v for k, v in event.items() if k not in ("type", "timestamp", "hostname")}
        dispatcher.send(event["type"], **fields)


def envelope(body: str, encoding: str | None = "base64", content_type="application/json") -> bytes:
    """kombu's Redis envelope around a body, for hand-made messages."""
    if encoding == "base64":
        body = base64.b64encode(body.encode()).decode()
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": content_type,
        "headers": {}, "properties": {
            "delivery_mode": 1, "priority": 0, "body_encoding": encoding,
            "delivery_info": {"exchange": "celeryev", "routing_key": "task.sent"},
            "delivery_tag": "e8a5f7f0-0000-4000-8000-000000000000",
        },
    }).encode()


def counted(exporter, metric="celery_stalk_events_total", **labels) -> float:
    return exporter.scrape().get(metric, 0, **labels)


def test_batched_single_base64_utf8_and_garbage(redis_server, fleet):
    url = redis_server.fresh_url()
    db = url.rsplit("/", 1)[1]
    exporter = fleet(ExporterProcess(url))
    app = make_app(url)
    client = redis_server.client(db=int(db))
    watcher = client.pubsub()  # to check that each shape really was published
    watcher.psubscribe(f"/{db}.celeryev/*")

    # A gevent worker and a producer: one event per message, bodies as plain JSON
    # (kombu's body_encoding=utf-8 transport option).
    plain = make_app(url, {"body_encoding": "utf-8"})
    with plain.connection_for_write() as connection:
        producer = plain.events.Dispatcher(connection, hostname="producer@web")
        for i in range(10):
            send(producer, task_events(f"batched-{i}", "app.batched")[:1])
        for i in range(5):
            send(producer, task_events(f"single-{i}", "app.single"))

    # A prefork worker: task events buffered and published as task.multi (base64 bodies).
    with app.connection_for_write() as connection:
        worker = app.events.Dispatcher(connection, hostname="w1@host", buffer_group=["task"],
                                       buffer_limit=24)
        for i in range(10):  # 30 worker events: one full batch of 24, then a flush of 6
            send(worker, task_events(f"batched-{i}", "app.batched")[1:])
        worker.flush()
        worker.send("worker-heartbeat", freq=2.0, active=0, processed=10)

    shapes = set()
    while (message := watcher.get_message(timeout=1)) is not None:
        if message["type"] == "pmessage":
            sent = json.loads(message["data"])
            shapes.add((message["channel"].decode().rsplit("/", 1)[1],
                        sent["properties"]["body_encoding"], sent["body"][0] in "[{"))
    watcher.close()
    assert shapes == {("task.sent", "utf-8", True), ("task.received", "utf-8", True),
                      ("task.started", "utf-8", True), ("task.succeeded", "utf-8", True),
                      ("task.multi", "base64", False), ("worker.heartbeat", "base64", False)}

    # What the exporter must count and skip, each once.
    channel = f"/{db}.celeryev/task.sent"
    garbage = {
        "not_json": [envelope("{truncated", encoding="utf-8"), envelope("")],
        "bad_envelope": [b"\x00\xffnot json at all", b"[1, 2, 3]", b'{"no": "properties"}',
                         envelope("{}", encoding="rot13"),
                         json.dumps({"body": "e30=", "properties": {}}).encode()],  # no tag
        "content_type": [envelope("(dp0\n.", content_type="application/x-python-serialize")],
        "not_an_object": [envelope('[{"type": "task-sent", "uuid": "x", "name": "n"}, 42]')],
    }
    for messages in garbage.values():
        for message in messages:
            assert client.publish(channel, message) == 1  # our subscriber got it

    # task-sent: 15 sent plus the valid one beside the 42
    expected = {"task-sent": 16, "task-received": 15, "task-started": 15, "task-succeeded": 15}
    m = check_every_shape_counted(exporter, expected,
                                  {reason: len(messages) for reason, messages in garbage.items()})
    # the valid event beside the 42 was applied; the 42 is counted, not fatal
    assert m.get("celery_task_sent_total", task="n", queue="unknown") == 1


def test_transport_options_reach_the_same_channels_as_kombu(redis_server, fleet):
    url = redis_server.fresh_url()
    options = {"global_keyprefix": "acme:", "fanout_prefix": "/custom-{db}."}
    exporter = fleet(ExporterProcess(
        url, "--broker-transport-option", 'global_keyprefix="acme:"',
        "--broker-transport-option", 'fanout_prefix="/custom-{db}."',
    ))
    app = make_app(url, options)
    with app.connection_for_write() as connection:
        send(app.events.Dispatcher(connection, hostname="producer@web"),
             task_events("prefixed", "app.prefixed"))
    eventually(lambda: counted(exporter, "celery_task_succeeded_total", task="app.prefixed",
                               queue="work") == 1, 30, message="prefixed events counted")


@pytest.mark.parametrize("options,pattern", [
    ({}, "/3.celeryev/*"),
    ({"global_keyprefix": "acme:"}, "acme:/3.celeryev/*"),
    ({"fanout_prefix": False}, "celeryev/*"),
    ({"fanout_prefix": "x[{db}]*"}, "x\\[3\\]\\*celeryev/*"),
    ({"fanout_patterns": False}, "/3.celeryev"),
])
def test_subscribe_pattern_follows_kombu_transport_options(options, pattern):
    assert subscribe_pattern(3, options) == pattern


def test_a_subscriber_redis_drops_for_falling_behind_is_noticed_counted_and_reported(fleet):
    with RedisServer() as server:
        client = server.client()
        # A small pubsub limit, so the drop is quick to provoke; the mechanism is Redis's own.
        client.config_set("client-output-buffer-limit", "pubsub 1mb 512kb 1")
        exporter = fleet(ExporterProcess(server.url))
        assert exporter.scrape().get("celery_stalk_broker_reconnects_total") == 0

        exporter.proc.send_signal(signal.SIGSTOP)  # an exporter that cannot keep up
        try:
            event = json.dumps([{"type": "task-started", "uuid": "u", "hostname": "w1@h",
                                 "timestamp": 1.0, "padding": "x" * 4000}] * 20)
            message = envelope(event)
            receivers = [client.publish("/0.celeryev/task.multi", message) for _ in range(1000)]
        finally:
            exporter.proc.send_signal(signal.SIGCONT)
        assert receivers[0] == 1 and receivers[-1] == 0  # Redis dropped it on the way

        m = eventually(lambda: (m := exporter.scrape()).get(
            "celery_stalk_broker_reconnects_total") == 1 and m.get(
            "celery_stalk_events_connected") == 1 and m, 30, message="reconnected and counted")
        assert "client-output-buffer-limit pubsub" in exporter.output(), exporter.output()[-2000:]
        assert exporter.ready()
        # what it had read before the drop was applied, not thrown away
        assert m.get("celery_stalk_events_total", type="task-started") > 0
        client.publish("/0.celeryev/task.sent", envelope(json.dumps(
            {"type": "task-sent", "uuid": "after", "name": "app.after", "queue": "work"})))
        eventually(lambda: counted(exporter, "celery_task_sent_total", task="app.after",
                                   queue="work") == 1, 10, message="events after the drop")


def test_tls_with_a_password_and_a_fast_stream(fleet):
    with RedisServer(tls=True, password="s3cret") as server:
        url = f"{server.url}?ssl_cert_reqs=required&ssl_ca_certs={server.ca_file}"
        exporter = fleet(ExporterProcess(url))
        batch = json.dumps([{"type": "task-started", "uuid": f"t{i}", "hostname": "w1@h",
                             "timestamp": 1.0} for i in range(20)])
        pipe = server.client().pipeline(transaction=False)
        for _ in range(500):  # 10,000 events as fast as Redis takes them, TLS record by record
            pipe.publish("/0.celeryev/task.multi", envelope(batch))
        assert set(pipe.execute()) == {1}
        eventually(lambda: counted(exporter, type="task-started") == 10_000, 30,
                   message=f"all events over TLS\n{exporter.output()}")
        assert "s3cret" not in exporter.output()
        assert exporter.scrape().get("celery_stalk_broker_reconnects_total") == 0
