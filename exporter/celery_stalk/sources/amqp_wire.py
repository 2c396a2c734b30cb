"""AMQP 0-9-1 on the wire, as much of it as an event consumer needs.

Encoding: the handful of methods a consumer sends (the handshake, declares,
bind, consume, heartbeats, closing). Decoding: the frames of deliveries
(Basic.Deliver, the content header, body frames), fast, straight from the
bytes read off the socket, and the few methods a broker sends a consumer
unasked (Connection.Close, Channel.Close, Basic.Cancel).

The parser never builds an object per frame: a delivery costs three
``struct.unpack_from`` calls and a slice. What it cannot make sense of
is a ``FrameError``: the stream is out of step and the connection is
broken; there is no skipping a bad frame in AMQP.
"""

from __future__ import annotations

import struct

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_OVERHEAD = 8  # type, channel, size before the payload; the end octet after
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# (class, method)
CONNECTION_START = (10, 10)
CONNECTION_SECURE = (10, 20)
CONNECTION_TUNE = (10, 30)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
EXCHANGE_DECLARE_OK = (40, 11)
QUEUE_DECLARE_OK = (50, 11)
QUEUE_BIND_OK = (50, 21)
BASIC_CONSUME_OK = (60, 21)
BASIC_CANCEL = (60, 30)
BASIC_DELIVER = (60, 60)

_FRAME_HEAD = struct.Struct(">BHI").unpack_from
_METHOD_ID = struct.Struct(">HH").unpack_from
_CONTENT_HEAD = struct.Struct(">QH").unpack_from  # body size, property flags
_CONTENT_TYPE_FLAG = 0x8000  # the first property: content-type


class FrameError(ConnectionError):
    """Bytes that are not the AMQP frame the protocol allows here."""


# -- encoding ----------------------------------------------------------------------------


def shortstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    if len(data) > 255:
        raise ValueError(f"too long for an AMQP short string: {data[:40]!r}...")
    return bytes((len(data),)) + data


def longstr(data: str | bytes) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(data)) + data


def table(values: dict) -> bytes:
    """A field table of strings, booleans, integers and nested tables."""
    out = []
    for key, value in values.items():
        out.append(shortstr(key))
        if isinstance(value, bool):
            out.append(b"t" + (b"\x01" if value else b"\x00"))
        elif isinstance(value, int):
            out.append(b"l" + struct.pack(">q", value))
        elif isinstance(value, dict):
            out.append(b"F" + table(value))
        else:
            out.append(b"S" + longstr(str(value)))
    body = b"".join(out)
    return struct.pack(">I", len(body)) + body


def method_frame(channel: int, method: tuple[int, int], arguments: bytes = b"") -> bytes:
    payload = struct.pack(">HH", *method) + arguments
    return struct.pack(">BHI", FRAME_METHOD, channel, len(payload)) + payload + b"\xce"


def bits(*flags: bool) -> bytes:
    return bytes((sum(1 << i for i, flag in enumerate(flags) if flag),))


def start_ok(client_properties: dict, mechanism: str, response: bytes) -> bytes:
    return method_frame(0, (10, 11), table(client_properties) + shortstr(mechanism)
                        + longstr(response) + shortstr("en_US"))


def tune_ok(channel_max: int, frame_max: int, heartbeat: int) -> bytes:
    return method_frame(0, (10, 31), struct.pack(">HIH", channel_max, frame_max, heartbeat))


def connection_open(vhost: str) -> bytes:
    return method_frame(0, (10, 40), shortstr(vhost) + shortstr("") + bits(False))


def connection_close() -> bytes:
    return method_frame(0, CONNECTION_CLOSE, struct.pack(">H", 200) + shortstr("bye")
                        + struct.pack(">HH", 0, 0))


def connection_close_ok() -> bytes:
    return method_frame(0, CONNECTION_CLOSE_OK)


def channel_open(channel: int) -> bytes:
    return method_frame(channel, (20, 10), shortstr(""))


def channel_close_ok(channel: int) -> bytes:
    return method_frame(channel, CHANNEL_CLOSE_OK)


def exchange_declare(channel: int, name: str, kind: str, durable: bool) -> bytes:
    # passive, durable, auto-delete, internal, no-wait
    return method_frame(channel, (40, 10), struct.pack(">H", 0) + shortstr(name) + shortstr(kind)
                        + bits(False, durable, False, False, False) + table({}))


def queue_declare(channel: int, name: str, durable: bool, auto_delete: bool,
                  arguments: dict) -> bytes:
    # passive, durable, exclusive, auto-delete, no-wait
    return method_frame(channel, (50, 10), struct.pack(">H", 0) + shortstr(name)
                        + bits(False, durable, False, auto_delete, False) + table(arguments))


def queue_bind(channel: int, queue: str, exchange: str, routing_key: str) -> bytes:
    return method_frame(channel, (50, 20), struct.pack(">H", 0) + shortstr(queue) + shortstr(exchange)
                        + shortstr(routing_key) + bits(False) + table({}))


def basic_consume(channel: int, queue: str, consumer_tag: str, no_ack: bool) -> bytes:
    # no-local, no-ack, exclusive, no-wait
    return method_frame(channel, (60, 20), struct.pack(">H", 0) + shortstr(queue)
                        + shortstr(consumer_tag) + bits(False, no_ack, False, False) + table({}))


# -- decoding ------------------------------------------------------------------------------


def read_shortstr(data: bytes, at: int) -> tuple[str, int]:
    n = data[at]
    return data[at + 1:at + 1 + n].decode("utf-8", "replace"), at + 1 + n


def read_longstr(data: bytes, at: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", data, at)
    return data[at + 4:at + 4 + n], at + 4 + n


def split_frame(buffer: bytes, frame_max: int) -> tuple[int, int, bytes, int] | None:
    """The first whole frame of ``buffer``: (type, channel, payload, bytes used), or None."""
    if len(buffer) < FRAME_OVERHEAD:
        return None
    kind, channel, size = _FRAME_HEAD(buffer, 0)
    if size > frame_max:
        raise FrameError(f"a frame of {size} bytes, more than the {frame_max} agreed")
    stop = 7 + size
    if len(buffer) <= stop:
        return None
    if buffer[stop] != FRAME_END:
        raise FrameError(f"frame end octet {buffer[stop]:#x}, not 0xce")
    return kind, channel, buffer[7:stop], stop + 1


def method_of(payload: bytes) -> tuple[int, int]:
    if len(payload) < 4:
        raise FrameError("a method frame too short to name its method")
    return _METHOD_ID(payload, 0)


def close_reason(payload: bytes) -> tuple[int, str]:
    """Reply code and text of Connection.Close or Channel.Close."""
    try:
        (code,) = struct.unpack_from(">H", payload, 4)
        text, _ = read_shortstr(payload, 6)
    except (struct.error, IndexError):
        raise FrameError("a Close method that cannot be read") from None
    return code, text


class DeliveryParser:
    """Deliveries out of a stream of frames, as (content type, body).

    ``feed`` takes whatever bytes the socket gave; ``parse`` appends every
    message complete so far to a list and keeps the rest, a partial frame or
    a delivery whose body has not all arrived, for the next feed. Frames of
    other kinds go to ``on_method`` (methods other than Basic.Deliver), and
    heartbeats are dropped: any byte at all tells the caller the link lives.
    """

    def __init__(self, frame_max: int, on_method):
        self.frame_max = frame_max
        self.on_method = on_method  # (channel, (class, method), payload) -> None
        self.buffer = b""
        self.expect = FRAME_METHOD  # the frame type a delivery needs next
        self.content_type: str | None = None
        self.remaining = 0  # body bytes of the current delivery still to come
        self.parts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data

    def parse(self, messages: list) -> None:
        buffer = self.buffer
        end = len(buffer)
        pos = 0
        frame_max = self.frame_max
        expect = self.expect
        head = _FRAME_HEAD
        try:
            while end - pos >= 7:  # a frame's type, channel and size
                kind, channel, size = head(buffer, pos)
                stop = pos + 7 + size
                if stop >= end:
                    if size > frame_max:
                        raise FrameError(f"a frame of {size} bytes, more than the {frame_max} agreed")
                    break
                if buffer[stop] != FRAME_END:
                    raise FrameError(f"frame end octet {buffer[stop]:#x}, not 0xce")
                if kind == FRAME_BODY:
                    if expect != FRAME_BODY:
                        raise FrameError("a body frame outside a delivery")
                    remaining = self.remaining - size
                    if remaining == 0 and not self.parts:  # the usual case: one body frame
                        messages.append((self.content_type, buffer[pos + 7:stop]))
                        expect = FRAME_METHOD
                    elif remaining >= 0:
                        self.parts.append(buffer[pos + 7:stop])
                        if remaining == 0:
                            messages.append((self.content_type, b"".join(self.parts)))
                            self.parts = []
                            expect = FRAME_METHOD
                    else:
                        raise FrameError("a body longer than its header said")
                    self.remaining = remaining
                elif kind == FRAME_HEADER:
                    if expect != FRAME_HEADER or size < 14:
                        raise FrameError("a content header outside a delivery")
                    body_size, flags = _CONTENT_HEAD(buffer, pos + 11)
                    content_type = None
                    if flags & _CONTENT_TYPE_FLAG:
                        n = buffer[pos + 21]
                        if pos + 22 + n > stop:
                            raise FrameError("a content type longer than its header")
                        content_type = buffer[pos + 22:pos + 22 + n].decode("utf-8", "replace")
                    if body_size == 0:
                        messages.append((content_type, b""))
                        expect = FRAME_METHOD
                    else:
                        self.content_type, self.remaining = content_type, body_size
                        expect = FRAME_BODY
                elif kind == FRAME_METHOD:
                    if expect != FRAME_METHOD:
                        raise FrameError("a method frame inside a delivery")
                    if size < 4:
                        raise FrameError("a method frame too short to name its method")
                    method = _METHOD_ID(buffer, pos + 7)
                    if method == BASIC_DELIVER:
                        expect = FRAME_HEADER
                    else:
                        self.on_method(channel, method, buffer[pos + 7:stop])
                elif kind != FRAME_HEARTBEAT:
                    raise FrameError(f"unknown frame type {kind}")
                pos = stop + 1
        finally:
            self.expect = expect
            self.buffer = buffer[pos:] if pos else buffer
