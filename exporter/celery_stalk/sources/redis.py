"""Celery events read straight from Redis pub/sub, for redis:// and rediss:// brokers.

kombu's Redis transport spends most of its time per message on machinery an
exporter does not need (a Message object, a delivery tag, a callback chain).
This reader subscribes to the same channels kombu would
(``PSUBSCRIBE {global_keyprefix}/{db}.celeryev/*``), parses the RESP stream
with hiredis and unwraps kombu's envelope with orjson.

It never lets Redis drop it for being slow if it can help it: it takes
everything the socket holds, up to MAX_BACKLOG bytes kept in the process, and
keeps draining while it parses, so the backlog of a burst waits here rather
than in Redis's output buffer (client-output-buffer-limit pubsub, 32 MB by
default, past which Redis disconnects the subscriber and the events in between
are lost). If Redis drops it anyway, the loss is said as such.
"""

from __future__ import annotations

import binascii
import logging
import socket
import ssl
import time
from collections import deque
from typing import Callable

import hiredis
import redis

from .decode import BAD_ENVELOPE, decode_body
from .supervisor import Message

log = logging.getLogger(__name__)

EXCHANGE = "celeryev"
CONNECT_TIMEOUT = 5.0
# Let the kernel notice a peer that vanished (keepalive probes).
KEEPALIVE_OPTIONS = {
    getattr(socket, "TCP_KEEPIDLE", 4): 10,
    getattr(socket, "TCP_KEEPINTVL", 5): 5,
    getattr(socket, "TCP_KEEPCNT", 6): 3,
}
READ_SIZE = 1 << 20
FEED_SIZE = 16 << 10  # see _Stream
# Unparsed bytes kept in the process (about 120,000 batched events): room for a
# burst several seconds long at full speed, and a bound on memory.
MAX_BACKLOG = 64 << 20
# Messages handed over per read: the socket is drained again soon after.
MAX_FRAMES = 128
# How often, in messages, the socket is drained while parsing: a burst must
# not pile up in Redis between two reads.
READ_EVERY_FRAMES = 32
PING_INTERVAL = 10.0  # a silent half-open TCP connection is noticed in 3 intervals


class SubscriptionLost(ConnectionError):
    """Redis closed our subscription."""


def subscribe_pattern(db: int, transport_options: dict) -> str:
    """The channel pattern kombu's Redis transport publishes celeryev events under."""
    prefix = transport_options.get("fanout_prefix", True)
    if prefix is True:
        prefix = "/{db}."
    elif not prefix:
        prefix = ""
    channel = transport_options.get("global_keyprefix", "") + str(prefix).format(db=db) + EXCHANGE
    pattern = _glob_escape(channel)
    # With fanout_patterns (kombu's default) the routing key follows: celeryev/task.multi.
    return pattern + "/*" if transport_options.get("fanout_patterns", True) else pattern


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisReader:
    def __init__(self, broker_url: str, transport_options: dict, ssl_options: dict | bool,
                 invalid: Callable[[str], None], monotonic=time.monotonic):
        self.urls = [url.strip() for url in broker_url.split(";") if url.strip()]
        self.transport_options = transport_options
        self.ssl_options = ssl_options if isinstance(ssl_options, dict) else {}
        self.invalid = invalid
        self.monotonic = monotonic
        self._attempt = 0
        self._client: redis.Redis | None = None
        self._connection = None
        self._stream: _Stream | None = None
        self._last_heard = 0.0
        self._next_ping = 0.0
        self._lost: SubscriptionLost | None = None  # raised at the next read

    def connect(self) -> str:
        url = self.urls[self._attempt % len(self.urls)]  # failover URLs, in turn
        self._attempt += 1
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=CONNECT_TIMEOUT,
            socket_keepalive=True,
            socket_keepalive_options=KEEPALIVE_OPTIONS,
            health_check_interval=0,
            protocol=2,
            # rediss://: the same ssl_* options as the queue reader's
            **self.ssl_options,
        )
        connection = self._connection = self._client.connection_pool.get_connection()
        pattern = subscribe_pattern(connection.db, self.transport_options)
        connection.send_command("PSUBSCRIBE", pattern)
        # redis-py connected, authenticated and selected the db; from here the
        # socket carries only our subscription, read without redis-py's layers.
        stream = self._stream = _Stream(connection._sock)
        reply = stream.first_frame(CONNECT_TIMEOUT)
        if not (isinstance(reply, list) and reply[0] == b"psubscribe"):
            raise ConnectionError(f"unexpected reply to PSUBSCRIBE: {reply!r:.200}")
        self._last_heard = self.monotonic()
        self._next_ping = 0.0
        self._lost = None
        return f"{connection.host} (pattern {pattern})"

    def read(self, timeout: float) -> list[Message]:
        if self._lost is not None:
            raise self._lost
        stream = self._stream
        got = stream.read_available()
        messages: list[Message] = []
        frames = 0
        while frames < MAX_FRAMES:
            try:
                frame = stream.next_frame()
            except SubscriptionLost as exc:
                if not messages:
                    raise
                self._lost = exc  # what was read before the loss is applied first
                return messages
            if frame is False:
                break
            frames += 1
            self._unwrap(frame, messages)
            if frames % READ_EVERY_FRAMES == 0:
                got += stream.read_available()  # keep Redis's buffer for us empty
        if got or frames:
            self._last_heard = self.monotonic()
        elif timeout > 0:
            stream.wait(timeout)
        return messages

    def tick(self, now: float) -> None:
        monotonic = self.monotonic()
        if monotonic >= self._next_ping:
            if monotonic - self._last_heard > 3 * PING_INTERVAL:
                raise ConnectionError(f"no data from Redis in {3 * PING_INTERVAL:.0f} s")
            self._stream.send(b"*1\r\n$4\r\nPING\r\n")  # answered even while subscribed
            self._next_ping = monotonic + PING_INTERVAL

    def close(self, broken: bool) -> None:
        connection, client = self._connection, self._client
        self._connection = self._client = self._stream = None
        if connection is not None:
            connection.disconnect()
        if client is not None:
            client.close()

    def _unwrap(self, frame, messages: list[Message]) -> None:
        """Append the (content type, body) of one pub/sub frame; count what cannot be read."""
        if not isinstance(frame, list):
            if isinstance(frame, hiredis.ReplyError):
                raise ConnectionError(f"Redis answered: {frame}")
            return  # PONG
        if frame[0] != b"pmessage":
            return  # subscription confirmations, pongs
        # kombu's envelope: what kombu would refuse to unpack (no properties, no
        # delivery tag, bad base64) is counted as a bad envelope.
        try:
            envelope = decode_body(frame[3])
            properties = envelope["properties"]
            properties["delivery_tag"]
            encoding = properties.get("body_encoding")
            content_type = envelope.get("content-type")
            body = envelope.get("body")
            if body and encoding == "base64":
                body = binascii.a2b_base64(body)
            elif encoding not in (None, "utf-8", "base64"):
                raise ValueError(f"unknown body_encoding {encoding!r}")
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
            self.invalid(BAD_ENVELOPE)
            return
        messages.append((content_type, body))


class _Stream:
    """The subscribed socket, what was read from it and not yet parsed, and the parser.

    The backlog stays in the chunks ``recv`` returned and is fed to hiredis a
    slice at a time: hiredis moves its whole unparsed buffer on every reply it
    takes out, so feeding it a large backlog at once would cost that much per
    message.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.reader = hiredis.Reader()
        self.chunks: deque[bytes] = deque()
        self.offset = 0  # into chunks[0]
        self.backlog = 0  # bytes in chunks not yet fed to the parser
        self.closed = False  # Redis closed the connection

    def _recv(self) -> int:
        try:
            data = self.sock.recv(READ_SIZE)
        except ConnectionResetError:  # how Redis may close a client whose output it drops
            data = b""
        if not data:
            self.closed = True  # what was read before still gets applied
            return 0
        self.chunks.append(data)
        self.backlog += len(data)
        return len(data)

    def read_available(self) -> int:
        """Take everything the socket holds now (up to MAX_BACKLOG), never waiting."""
        total = 0
        self.sock.settimeout(0.0)
        try:
            while self.backlog < MAX_BACKLOG and not self.closed:
                n = self._recv()
                total += n
                if n < READ_SIZE and not self.tls:
                    break  # a short read: the socket is empty (TLS reads one record at a time)
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        return total

    def next_frame(self):
        """The next complete reply, or False when the backlog holds none."""
        reader = self.reader
        frame = reader.gets()
        while frame is False and self.chunks:
            head = self.chunks[0]
            n = min(FEED_SIZE, len(head) - self.offset)
            reader.feed(head, self.offset, n)
            self.backlog -= n
            self.offset += n
            if self.offset >= len(head):
                self.chunks.popleft()
                self.offset = 0
            frame = reader.gets()
        if frame is False and self.closed:
            raise SubscriptionLost(
                "Redis closed the event subscription: events published until the "
                "reconnect are lost. If Redis did not restart, the exporter fell behind "
                "and hit client-output-buffer-limit pubsub"
            )
        return frame

    def wait(self, timeout: float) -> None:
        """Block until data arrives or ``timeout`` passes."""
        if self.closed:
            return
        self.sock.settimeout(timeout)
        try:
            self._recv()
        except (socket.timeout, ssl.SSLWantReadError):
            pass

    def first_frame(self, timeout: float):
        while (frame := self.next_frame()) is False:
            self.sock.settimeout(timeout)
            self._recv()
        return frame

    def send(self, data: bytes) -> None:
        self.sock.settimeout(CONNECT_TIMEOUT)
        self.sock.sendall(data)
