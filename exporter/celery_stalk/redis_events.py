"""Celery events read straight from Redis pub/sub, for redis:// and rediss:// brokers.

kombu's Redis transport spends most of its time per message on machinery an
exporter does not need (a Message object, a delivery tag, a callback chain).
This source subscribes to the same channels kombu would
(``PSUBSCRIBE {global_keyprefix}/{db}.celeryev/*``), parses the RESP stream
with hiredis and decodes kombu's envelope and the event body with orjson.

It never lets Redis drop it for being slow if it can help it: before decoding
each batch it takes everything the socket holds, up to MAX_BACKLOG bytes kept
in the process, so the backlog of a burst waits here rather than in Redis's
output buffer (client-output-buffer-limit pubsub, 32 MB by default, past which
Redis disconnects the subscriber and the events in between are lost). If Redis
drops it anyway, the loss is logged as such and counted as a reconnect.

Everything else is EventConsumer's: the thread, readiness, reconnect with
capped backoff, ticks, the stall watchdog, the heartbeat broadcast on
connect, and the reasons undecodable messages are counted under.
"""

from __future__ import annotations

import binascii
import logging
import socket
import ssl
from collections import deque

import hiredis
import redis

from .events import (
    ACCEPTED_CONTENT_TYPES,
    BAD_ENVELOPE,
    CONNECT_TIMEOUT,
    CONTENT_TYPE,
    INTERNAL_ERROR,
    NOT_JSON,
    REDIS_EVENT_OPTIONS,
    TICK_INTERVAL,
    EventConsumer,
    decode_body,
)

log = logging.getLogger(__name__)

EXCHANGE = "celeryev"
READ_SIZE = 1 << 20
FEED_SIZE = 16 << 10  # see _Stream
# Unparsed bytes kept in the process (about 120,000 batched events): room for a
# burst several seconds long at full speed, and a bound on memory.
MAX_BACKLOG = 64 << 20
# Events applied to the model under one lock acquisition: large enough to make
# the lock free, small enough that a scrape never waits more than a few ms.
BATCH_EVENTS = 2000
# How often, in messages, the socket is drained while decoding: a burst must
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


class RedisEventSource(EventConsumer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.urls = [url.strip() for url in self.broker_url.split(";") if url.strip()]
        self._attempt = 0

    def _consume(self) -> None:
        url = self.urls[self._attempt % len(self.urls)]  # failover URLs, in turn
        self._attempt += 1
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=CONNECT_TIMEOUT,
            socket_keepalive=True,
            socket_keepalive_options=REDIS_EVENT_OPTIONS["socket_keepalive_options"],
            health_check_interval=0,
            protocol=2,
            # rediss://: the same ssl_* options as kombu's and the queue reader's
            **(self.ssl if isinstance(self.ssl, dict) else {}),
        )
        connection = client.connection_pool.get_connection()
        try:
            pattern = subscribe_pattern(connection.db, self.transport_options)
            connection.send_command("PSUBSCRIBE", pattern)
            # redis-py connected, authenticated and selected the db; from here the
            # socket carries only our subscription, read without redis-py's layers.
            stream = _Stream(connection._sock)
            reply = stream.first_frame(CONNECT_TIMEOUT)
            if not (isinstance(reply, list) and reply[0] == b"psubscribe"):
                raise ConnectionError(f"unexpected reply to PSUBSCRIBE: {reply!r:.200}")
            self._wake_workers_now()
            self.model.consumer_connected(self.clock())
            self.consuming.set()
            self.backoff.reset()
            self._last_message = self.monotonic()
            log.info("consuming events from %s (pattern %s)", connection.host, pattern)
            self._pump(stream)
        finally:
            connection.disconnect()
            client.close()

    def _wake_workers_now(self) -> None:
        try:
            with self._connection() as connection:
                self._wake_workers(connection)
        except Exception as exc:  # a courtesy: heartbeats arrive anyway within 2 s
            log.debug("could not ask workers for a heartbeat: %s", exc)

    def _pump(self, stream: _Stream) -> None:
        """Read, decode and apply until stopped; raises when the connection is lost."""
        model, clock, stop = self.model, self.clock, self._stop
        decode = self._decode
        next_tick = next_ping = 0.0
        last_heard = clock()
        while not stop.is_set():
            got = stream.read_available()
            events: list = []
            frames = 0
            while len(events) < BATCH_EVENTS:
                frame = stream.next_frame()
                if frame is False:
                    break
                frames += 1
                decode(frame, events)
                if frames % READ_EVERY_FRAMES == 0:
                    got += stream.read_available()  # keep Redis's buffer for us empty
            now = clock()
            if events:
                self._last_message = self.monotonic()
                try:
                    model.apply_many(events, now)
                except Exception:  # a bug of ours must not look like a broker outage
                    log.exception("could not apply a batch of events")
                    model.record_invalid(INTERNAL_ERROR)
            if got or frames:
                last_heard = now
            if now >= next_tick:
                model.tick(now)
                self._check_stall()
                next_tick = now + TICK_INTERVAL
            if now >= next_ping:
                if now - last_heard > 3 * PING_INTERVAL:
                    raise ConnectionError(f"no data from Redis in {3 * PING_INTERVAL:.0f} s")
                stream.send(b"*1\r\n$4\r\nPING\r\n")  # answered even while subscribed
                next_ping = now + PING_INTERVAL
            if not frames and not got:
                stream.wait(max(0.0, min(next_tick, next_ping) - now))

    def _decode(self, frame, events: list) -> None:
        """Append the events of one pub/sub frame to ``events``; count what cannot be read."""
        if not isinstance(frame, list):
            if isinstance(frame, hiredis.ReplyError):
                raise ConnectionError(f"Redis answered: {frame}")
            return  # PONG
        if frame[0] != b"pmessage":
            return  # subscription confirmations, pongs
        # The envelope: what kombu would refuse to unpack (no properties, no
        # delivery tag, bad base64) is counted under the kombu consumer's reason.
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
            self.model.record_invalid(BAD_ENVELOPE)
            return
        if content_type not in ACCEPTED_CONTENT_TYPES:
            self.model.record_invalid(CONTENT_TYPE)
            return
        try:
            decoded = decode_body(body)
        except (ValueError, TypeError):
            self.model.record_invalid(NOT_JSON)
            return
        if isinstance(decoded, list):  # task.multi: a worker's buffered batch
            events.extend(decoded)
        else:
            events.append(decoded)


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

