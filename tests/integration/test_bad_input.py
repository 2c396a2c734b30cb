"""Malformed messages on the real consumer path: raw bytes published to the celeryev
exchange of a private Redis, the exporter as a real process, counts read from /metrics.
The consumer never dies or reconnects; every bad message or event is counted by reason;
the good events around them are counted exactly."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Exchange

from tests.harness import ExporterProcess, eventually

pytestmark = pytest.mark.integration

EXCHANGE = Exchange("celeryev", type="fanout")
serial = itertools.count()


def good_event() -> dict:
    n = next(serial)
    return {"type": "task-received", "uuid": f"good-{n}", "name": "app.good", "hostname": "w@h",
            "timestamp": 1.0, "utcoffset": 0, "pid": 1, "clock": n}


def raw_messages():
    """(how to publish, payload, content type, {metric label: expected increase})."""
    good = st.builds(good_event)
    return st.one_of(
        st.builds(lambda e: ("kombu", json.dumps(e).encode(), "application/json",
                             {"task-received": 1}), good),
        # a task.multi batch with good and bad events mixed
        st.builds(lambda a, b: ("kombu", json.dumps([a, {"type": "task-received"}, 7, b]).encode(),
                                "application/json",
                                {"task-received": 2, "missing_field": 1, "not_an_object": 1}),
                  good, good),
        # a name that is not UTF-8 next to a good event: only the bad one is lost
        st.builds(lambda e: ("kombu", b'[{"type":"task-received","uuid":"x","name":"\xff\xfe"},'
                             + json.dumps(e).encode() + b"]", "application/json",
                             {"task-received": 1, "bad_value": 1}), good),
        st.builds(lambda n: ("kombu", json.dumps({**good_event(), "name": "n" * n}).encode(),
                             "application/json", {"bad_value": 1}), st.integers(301, 200_000)),
        st.builds(lambda b: ("kombu", b"\x00" + b, "application/json", {"not_json": 1}),
                  st.binary(max_size=64)),
        st.builds(lambda ct: ("kombu", json.dumps(good_event()).encode(), ct, {"content_type": 1}),
                  st.sampled_from(["application/x-python-serialize", "text/plain",
                                   "application/x-yaml"])),
        st.just(("kombu", json.dumps({"type": "task-from-the-future", "uuid": "u"}).encode(),
                 "application/json", {"other": 1})),
        # nested thousands deep: a few KB that would exhaust a recursive decoder
        st.builds(lambda depth: ("kombu", b"[" * depth + b"]" * depth, "application/json",
                                 {"too_deep": 1}), st.integers(1100, 5000)),
        st.builds(lambda depth: ("raw", b"[" * depth + b"]" * depth, None, {"bad_envelope": 1}),
                  st.integers(1100, 5000)),
        # not a kombu envelope at all, published straight to the pub/sub channel
        st.builds(lambda b: ("raw", b"\x00" + b, None, {"bad_envelope": 1}), st.binary(max_size=32)),
        st.sampled_from([
            ("raw", b'{"no": "properties"}', None, {"bad_envelope": 1}),
            ("raw", b"[1, 2]", None, {"bad_envelope": 1}),
            ("raw", b'{"body": "!!!", "properties": {"body_encoding": "base64"}}', None,
             {"bad_envelope": 1}),
        ]),
    )


@pytest.fixture(scope="module")
def stack(redis_server):
    url = redis_server.fresh_url()
    db = url.rsplit("/", 1)[1]
    # The sentinels below are workers that never heartbeat again: keep the stall
    # watchdog (tested elsewhere) from reconnecting while examples run.
    exporter = ExporterProcess(url, "--worker-timeout", "600", "--events-stall-timeout", "300")
    exporter.start()
    connection = Connection(url)
    producer = connection.Producer()
    client = redis.Redis.from_url(url)
    sentinels = itertools.count()

    def publish(how, payload, content_type):
        if how == "raw":
            client.publish(f"/{db}.celeryev/task.multi", payload)
        else:
            producer.publish(payload, exchange=EXCHANGE, routing_key="task.multi",
                             content_type=content_type, content_encoding="binary",
                             serializer=None, declare=[EXCHANGE])

    def settle():
        """Publish a marker event until it is counted: all before it was handled then.

        Published more than once because a message read from the socket together
        with a malformed envelope waits in the client's buffer for the next one
        (in production the next worker heartbeat, at most 2 s later)."""
        host = f"sentinel-{next(sentinels)}@test"
        marker = json.dumps({"type": "worker-heartbeat", "hostname": host, "freq": 2.0,
                             "timestamp": 1.0}).encode()

        def seen():
            publish("kombu", marker, "application/json")
            m = exporter.scrape()
            return m.get("celery_worker_up", worker=host) == 1 and m

        return eventually(seen, 20, interval=0.5, message="sentinel counted")

    settle()  # subscribed
    yield publish, settle, exporter
    exporter.stop()
    connection.release()
    client.close()


def totals(m) -> Counter:
    counts = Counter()
    for (name, labels), value in m.samples.items():
        if name == "celery_stalk_events_total":
            counts[dict(labels)["type"]] += value
        elif name == "celery_stalk_events_invalid_total":
            counts[dict(labels)["reason"]] += value
    counts.pop("worker-heartbeat", None)  # the sentinels
    return counts


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=st.lists(raw_messages(), min_size=1, max_size=8))
def test_malformed_messages_on_the_wire_are_counted_and_skipped(stack, messages):
    publish, settle, exporter = stack
    before = totals(settle())
    for how, payload, content_type, _ in messages:
        publish(how, payload, content_type)
    after = settle()
    expected = Counter()
    for *_, increase in messages:
        expected.update(increase)
    delta = totals(after) - before
    assert delta == expected, exporter.output()[-3000:]
    # never mistaken for a broker outage
    assert after.get("celery_stalk_broker_reconnects_total") == 0
    assert after.get("celery_stalk_events_connected") == 1
    assert exporter.proc.poll() is None


def test_deeply_nested_json_between_good_events_loses_none_of_them(stack):
    """A flood of 2,000-deep messages (4 KB each) among good events: each is counted as
    too_deep (or bad_envelope, when not even the envelope decodes), none costs a good event,
    a reconnect or a traceback."""
    publish, settle, exporter = stack
    before = totals(settle())
    nested = b"[" * 2000 + b"]" * 2000
    for i in range(200):
        publish("kombu", json.dumps(good_event()).encode(), "application/json")
        if i % 10 == 0:
            publish("kombu", nested, "application/json")
            publish("raw", nested, None)
    after = settle()
    delta = totals(after) - before
    assert delta == Counter({"task-received": 200, "too_deep": 20, "bad_envelope": 20})
    assert after.get("celery_stalk_broker_reconnects_total") == 0
    assert "Traceback" not in exporter.output()
