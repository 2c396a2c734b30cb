"""The AMQP 0-9-1 codec of the RabbitMQ event reader (sources/amqp_wire.py), against frames
and arguments encoded and decoded by py-amqp's own serializer, so a mistake is not
made twice the same way. The reader against a real RabbitMQ is in
tests/integration/test_rabbitmq_events.py."""

from __future__ import annotations

import struct

import pytest
from amqp.basic_message import Message as AmqpMessage
from amqp.serialization import dumps, loads
from celery_stalk.sources import amqp_wire as wire

FRAME_MAX = 4096


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def method(channel: int, class_method: tuple[int, int], argsig: str = "", args=()) -> bytes:
    return frame(1, channel, struct.pack(">HH", *class_method) + (dumps(argsig, args) if argsig else b""))


def delivery(body: bytes, frame_max: int = FRAME_MAX, **properties) -> bytes:
    """Basic.Deliver, the content header (properties as py-amqp serializes them), body frames."""
    deliver = method(1, (60, 60), "sLbss", ("ctag", 7, False, "celeryev", "task.multi"))
    props = AmqpMessage(body, **properties)._serialize_properties()
    header = frame(2, 1, struct.pack(">HHQ", 60, 0, len(body)) + props)
    step = frame_max - 8
    bodies = b"".join(frame(3, 1, body[i:i + step]) for i in range(0, len(body), step))
    return deliver + header + bodies


HEARTBEAT = frame(8, 0, b"")


def parse_all(data: bytes, chunk: int) -> tuple[list, list]:
    methods: list = []
    parser = wire.DeliveryParser(FRAME_MAX, lambda channel, m, payload: methods.append((channel, m)))
    messages: list = []
    for i in range(0, len(data), chunk):
        parser.feed(data[i:i + chunk])
        parser.parse(messages)
    assert parser.buffer == b"" and parser.expect == wire.FRAME_METHOD
    return messages, methods


STREAM_BODIES = [
    (b'[{"type": "task-started", "uuid": "a"}]', {"content_type": "application/json",
                                                  "content_encoding": "utf-8",
                                                  "application_headers": {"hostname": "w@h"},
                                                  "delivery_mode": 1, "priority": 0}),
    (b'{"type": "worker-heartbeat"}' + b" " * 10_000, {"content_type": "application/json"}),  # 3 frames
    (b"", {"content_type": "application/json"}),  # no body frame at all
    (b'{"type": "task-sent"}', {}),  # no properties: no content type
    (b"(dp0\n.", {"content_type": "application/x-python-serialize", "priority": 9}),
]


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
def test_deliveries_come_out_whole_however_the_bytes_are_cut(chunk):
    data = HEARTBEAT
    for body, properties in STREAM_BODIES:
        data += delivery(body, **properties) + HEARTBEAT
    data += method(1, (60, 31), "s", ("ctag",))  # Basic.CancelOk: not a delivery
    messages, methods = parse_all(data, chunk)
    assert messages == [(p.get("content_type"), body) for body, p in STREAM_BODIES]
    assert methods == [(1, (60, 31))]


def test_a_close_from_the_broker_comes_after_the_deliveries_before_it():
    close = method(0, wire.CONNECTION_CLOSE, "BsBB", (320, "CONNECTION_FORCED - shutdown", 0, 0))
    messages: list = []

    def on_method(channel, m, payload):
        assert (channel, m) == (0, wire.CONNECTION_CLOSE)
        assert wire.close_reason(payload) == (320, "CONNECTION_FORCED - shutdown")
        raise ConnectionError("closed")

    parser = wire.DeliveryParser(FRAME_MAX, on_method)
    parser.feed(delivery(b"{}", content_type="application/json") + close)
    with pytest.raises(ConnectionError):
        parser.parse(messages)
    assert messages == [("application/json", b"{}")]


@pytest.mark.parametrize("data, problem", [
    (frame(3, 1, b"{}"), "a body frame outside a delivery"),
    (frame(2, 1, struct.pack(">HHQH", 60, 0, 2, 0)), "a content header outside a delivery"),
    (delivery(b"{}")[:-1] + b"\x00", "frame end octet"),
    (method(1, (60, 60), "sLbss", ("c", 1, False, "e", "r")) + method(1, (60, 31), "s", ("c",)),
     "a method frame inside a delivery"),
    (frame(9, 0, b""), "unknown frame type 9"),
    # a header that promises 1 byte, then a body frame of 2
    (method(1, (60, 60), "sLbss", ("c", 1, False, "e", "r"))
     + frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0)) + frame(3, 1, b"{}"),
     "a body longer than its header said"),
    # a size past the agreed frame_max is refused before any of it is buffered
    (struct.pack(">BHI", 3, 1, 1 << 31), "more than the 4096 agreed"),
])
def test_what_is_not_amqp_is_a_broken_connection(data, problem):
    parser = wire.DeliveryParser(FRAME_MAX, lambda *args: None)
    parser.feed(data)
    with pytest.raises(wire.FrameError, match=problem):
        parser.parse([])


def args_of(frame_bytes: bytes, argsig: str, class_method: tuple[int, int], channel: int = 1):
    kind, on, payload, used = wire.split_frame(frame_bytes, FRAME_MAX)
    assert (kind, on, used) == (1, channel, len(frame_bytes))
    assert wire.method_of(payload) == class_method
    return loads(argsig, payload, 4)[0]


def test_the_methods_a_consumer_sends_read_back_with_py_amqp():
    assert args_of(wire.queue_declare(1, "celeryev.x", durable=False, auto_delete=True,
                                      arguments={"x-expires": 60000}),
                   "BsbbbbbF", (50, 10)) == [0, "celeryev.x", False, False, False, True, False,
                                             {"x-expires": 60000}]
    assert args_of(wire.exchange_declare(1, "celeryev", "topic", durable=True),
                   "BssbbbbbF", (40, 10)) == [0, "celeryev", "topic", False, True, False, False,
                                              False, {}]
    assert args_of(wire.queue_bind(1, "celeryev.x", "celeryev", "#"), "BsssbF", (50, 20)) == [
        0, "celeryev.x", "celeryev", "#", False, {}]
    assert args_of(wire.basic_consume(1, "celeryev.x", "tag", no_ack=True), "BssbbbbF",
                   (60, 20)) == [0, "celeryev.x", "tag", False, True, False, False, {}]
    properties = {"product": "celery-stalk", "capabilities": {"consumer_cancel_notify": True}}
    assert args_of(wire.start_ok(properties, "PLAIN", b"\0u\0p"), "FsSs", (10, 11), channel=0) == [
        properties, "PLAIN", "\0u\0p", "en_US"]
    assert args_of(wire.tune_ok(2047, 131072, 10), "BlB", (10, 31), channel=0) == [2047, 131072, 10]
    assert args_of(wire.connection_open("ops/events"), "ssb", (10, 40), channel=0) == [
        "ops/events", "", False]
    assert args_of(wire.connection_close(), "BsBB", (10, 50), channel=0)[0] == 200
    assert wire.HEARTBEAT_FRAME == frame(8, 0, b"")


def test_split_frame_waits_for_a_whole_frame():
    data = wire.channel_open(1)
    assert wire.split_frame(data[:-1], FRAME_MAX) is None
    kind, channel, payload, used = wire.split_frame(data + b"more", FRAME_MAX)
    assert (kind, channel, used) == (1, 1, len(data)) and wire.method_of(payload) == (20, 10)
