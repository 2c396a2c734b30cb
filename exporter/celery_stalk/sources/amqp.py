"""Celery events read straight from RabbitMQ (AMQP 0-9-1), for amqp:// and amqps:// brokers.

py-amqp, under kombu, reads one frame per call and dispatches each through
several layers of Python: a delivery is three frames, so a fixed ~70 us per
message, whatever it carries. This reader speaks the protocol itself
(amqp_wire.py): the handshake with blocking calls, then deliveries parsed out
of large reads of the socket.

What it declares is what the kombu consumer declared before it, so nothing
changes on the broker: Celery's ``celeryev`` topic exchange (durable), and a
queue of our own bound to it with ``#``, auto-deleted when we leave and, if we
die without leaving, expired after EVENT_QUEUE_EXPIRES (``x-expires``). The
queue has no message TTL, unlike the queues Celery's own event receivers
declare (``x-message-ttl`` 5 s): a burst we cannot take at once waits in our
queue and is counted late rather than never. A new queue name on every
connect: a connection that died silently may still hold the old queue until
the broker notices.

Consumed with ``no_ack``: events are at most once by nature (a worker does not
resend them), and acknowledging would cost a write per read for nothing. The
broker still cannot flood us: when we read slowly, TCP pushes back and the
backlog stays in our queue.
"""

from __future__ import annotations

import logging
import platform
import select
import socket
import ssl
import struct
import time
import uuid
from typing import Callable

from kombu.utils.url import parse_url

from .. import __version__
from .amqp_wire import (
    BASIC_CANCEL,
    BASIC_CONSUME_OK,
    CHANNEL_CLOSE,
    CHANNEL_OPEN_OK,
    CONNECTION_CLOSE,
    CONNECTION_CLOSE_OK,
    CONNECTION_OPEN_OK,
    CONNECTION_START,
    CONNECTION_TUNE,
    EXCHANGE_DECLARE_OK,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    QUEUE_BIND_OK,
    QUEUE_DECLARE_OK,
    DeliveryParser,
    FrameError,
    basic_consume,
    channel_close_ok,
    channel_open,
    close_reason,
    connection_close,
    connection_close_ok,
    connection_open,
    exchange_declare,
    method_of,
    queue_bind,
    queue_declare,
    read_longstr,
    split_frame,
    start_ok,
    table,
    tune_ok,
)
from .supervisor import Message, SubscriptionEnded

log = logging.getLogger(__name__)

EXCHANGE = "celeryev"  # Celery's event exchange; a topic exchange on AMQP
CONNECT_TIMEOUT = 5.0
# Broker-side life of our event queue after we disconnect (RabbitMQ x-expires):
# long enough to ride out a restart of the exporter, short enough not to pile up.
EVENT_QUEUE_EXPIRES = 60.0
# AMQP heartbeats (seconds): a half-open connection to RabbitMQ fails within ~2 of these.
AMQP_HEARTBEAT = 10
CHANNEL = 1
# The largest frame we accept before the broker says its own (Connection.Tune).
HANDSHAKE_FRAME_MAX = 131072
READ_SIZE = 1 << 20
KEEPALIVE_OPTIONS = {
    getattr(socket, "TCP_KEEPIDLE", 4): 10,
    getattr(socket, "TCP_KEEPINTVL", 5): 5,
    getattr(socket, "TCP_KEEPCNT", 6): 3,
}
DEFAULT_PORTS = {False: 5672, True: 5671}
LOGIN_METHODS = ("PLAIN", "AMQPLAIN", "EXTERNAL")


class BrokerClosedConnection(ConnectionError):
    """RabbitMQ sent Connection.Close: shutting down, refused login, unknown vhost..."""


class AmqpReader:
    def __init__(self, broker_url: str, transport_options: dict, ssl_options: dict | bool,
                 node_id: str, invalid: Callable[[str], None], monotonic=time.monotonic):
        self.urls = [url.strip() for url in broker_url.split(";") if url.strip()]
        self.transport_options = transport_options
        self.ssl_options = ssl_options
        self.node_id = node_id
        self.invalid = invalid  # nothing to count here: a bad frame is a broken connection
        self.monotonic = monotonic
        self._attempt = 0
        self._sock: socket.socket | None = None
        self._tls = False
        self._handshake_buffer = b""
        self._read_buffer = bytearray(READ_SIZE)
        self._parser: DeliveryParser | None = None
        self._poll = select.poll()
        self._heartbeat = 0
        self._last_heard = 0.0
        self._next_heartbeat = 0.0
        self._closed = False  # the broker closed the TCP connection
        self._lost: Exception | None = None  # raised at the next read

    # -- the Reader protocol ---------------------------------------------------------------

    def connect(self) -> str:
        url = self.urls[self._attempt % len(self.urls)]  # failover URLs, in turn
        self._attempt += 1
        parts = parse_url(url)
        tls = parts["transport"] == "amqps"
        host = parts["hostname"] or "localhost"
        port = parts["port"] or DEFAULT_PORTS[tls]
        vhost = parts["virtual_host"] or "/"
        self._lost, self._closed, self._parser = None, False, None
        self._handshake_buffer = b""
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        self._sock, self._tls = sock, tls
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in KEEPALIVE_OPTIONS.items():
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:  # not on every platform
                pass
        if tls:
            sock = self._sock = self._tls_context().wrap_socket(sock, server_hostname=host)
        queue = self._handshake(parts, vhost)
        sock.settimeout(0.0)  # from here: reads never block; poll() waits
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._last_heard = self.monotonic()
        self._next_heartbeat = 0.0
        return f"{'amqps' if tls else 'amqp'}://{host}:{port} vhost {vhost!r} (queue {queue})"

    def read(self, timeout: float) -> list[Message]:
        if self._lost is not None:
            raise self._lost
        parser = self._parser
        got = self._receive()
        if not got and not self._closed and timeout > 0:
            self._wait(timeout)
            got = self._receive()
        messages: list[Message] = []
        try:
            parser.parse(messages)
            if self._closed:
                raise ConnectionError("RabbitMQ closed the connection")
        except Exception as exc:
            if not messages:
                raise
            self._lost = exc  # what was read before the loss is applied first
        return messages

    def tick(self, now: float) -> None:
        if not self._heartbeat:
            return
        monotonic = self.monotonic()
        if monotonic - self._last_heard > 2 * self._heartbeat:
            raise ConnectionError(
                f"no data from RabbitMQ in {2 * self._heartbeat} s: missed heartbeats")
        if monotonic >= self._next_heartbeat:
            self._send(HEARTBEAT_FRAME)  # we send nothing else: say we are alive
            self._next_heartbeat = monotonic + self._heartbeat / 2

    def close(self, broken: bool) -> None:
        sock, parser = self._sock, self._parser
        self._sock = self._parser = None
        if sock is None:
            return
        try:
            if not broken and parser is not None:
                self._goodbye(sock, parser)
        except (OSError, ConnectionError):
            pass  # leaving anyway
        finally:
            sock.close()

    # -- the handshake ---------------------------------------------------------------------

    def _handshake(self, parts: dict, vhost: str) -> str:
        self._sock.sendall(PROTOCOL_HEADER)
        start = self._expect(0, CONNECTION_START)
        at = 6 + 4 + struct.unpack_from(">I", start, 6)[0]  # past version, server properties
        mechanisms = read_longstr(start, at)[0].decode(errors="replace").split()
        mechanism, response = self._login(parts, mechanisms)
        self._sock.sendall(start_ok(self._client_properties(), mechanism, response))
        tune = self._expect(0, CONNECTION_TUNE)
        channel_max, frame_max, server_heartbeat = struct.unpack_from(">HIH", tune, 4)
        frame_max = frame_max or HANDSHAKE_FRAME_MAX
        # The lower of the two, unless one side turns heartbeats off (0): then the other's.
        heartbeat = (min(server_heartbeat, AMQP_HEARTBEAT) if server_heartbeat and AMQP_HEARTBEAT
                     else server_heartbeat or AMQP_HEARTBEAT)
        self._heartbeat = heartbeat
        self._sock.sendall(tune_ok(channel_max, frame_max, heartbeat) + connection_open(vhost))
        self._expect(0, CONNECTION_OPEN_OK)
        queue = f"celeryev.{self.node_id}.{uuid.uuid4().hex[:8]}"
        self._sock.sendall(channel_open(CHANNEL))
        self._expect(CHANNEL, CHANNEL_OPEN_OK)
        # As Celery declares it (celery.events.event_exchange), or the bind would fail.
        self._sock.sendall(exchange_declare(CHANNEL, EXCHANGE, "topic", durable=True))
        self._expect(CHANNEL, EXCHANGE_DECLARE_OK)
        self._sock.sendall(queue_declare(
            CHANNEL, queue, durable=False, auto_delete=True,
            arguments={"x-expires": int(EVENT_QUEUE_EXPIRES * 1000)}))
        self._expect(CHANNEL, QUEUE_DECLARE_OK)
        self._sock.sendall(queue_bind(CHANNEL, queue, EXCHANGE, "#"))
        self._expect(CHANNEL, QUEUE_BIND_OK)
        self._sock.sendall(basic_consume(CHANNEL, queue, f"celery-stalk.{uuid.uuid4().hex[:12]}",
                                         no_ack=True))
        self._expect(CHANNEL, BASIC_CONSUME_OK)
        self._parser = DeliveryParser(frame_max, self._on_method)
        self._parser.feed(self._handshake_buffer)  # deliveries that came with Consume-Ok
        self._handshake_buffer = b""
        return queue

    def _login(self, parts: dict, offered: list[str]) -> tuple[str, bytes]:
        user = parts["userid"] or "guest"
        password = parts["password"] or "guest"
        wanted = parts.get("login_method") or self.transport_options.get("login_method")
        if wanted:
            mechanism = str(wanted).upper()
            if mechanism not in offered:
                raise ConnectionError(f"RabbitMQ does not offer the login method {mechanism}: "
                                      f"it offers {', '.join(offered)}")
        else:
            mechanism = next((m for m in LOGIN_METHODS if m in offered), "")
            if not mechanism:
                raise ConnectionError(f"RabbitMQ offers no login method we speak: {', '.join(offered)}")
        if mechanism == "PLAIN":
            return mechanism, b"\0" + user.encode() + b"\0" + password.encode()
        if mechanism == "AMQPLAIN":
            return mechanism, table({"LOGIN": user, "PASSWORD": password})[4:]  # without its length
        if mechanism == "EXTERNAL":  # the client certificate is the identity
            return mechanism, b""
        raise ConnectionError(f"login method {mechanism} is not supported: use PLAIN, AMQPLAIN "
                              "or EXTERNAL (login_method)")

    def _client_properties(self) -> dict:
        return {
            "product": "celery-stalk",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            # shown by rabbitmqctl list_connections and the management UI
            "connection_name": f"celery-stalk events {self.node_id}",
            "capabilities": {
                # Basic.Cancel when our queue is deleted, rather than silence
                "consumer_cancel_notify": True,
                # a refused login as Connection.Close with a reason, not a bare hang-up
                "authentication_failure_close": True,
            },
        }

    def _tls_context(self) -> ssl.SSLContext:
        options = self.ssl_options if isinstance(self.ssl_options, dict) else {}
        context = ssl.create_default_context(cafile=options.get("ca_certs"))
        if options.get("certfile"):
            context.load_cert_chain(options["certfile"], options.get("keyfile"))
        reqs = options.get("cert_reqs", ssl.CERT_REQUIRED)
        if reqs != ssl.CERT_REQUIRED:
            context.check_hostname = False
            context.verify_mode = reqs
        return context

    def _expect(self, channel: int, wanted: tuple[int, int]) -> bytes:
        """The payload of the next method on ``channel``, which must be ``wanted``."""
        sock = self._sock
        while True:
            frame = split_frame(self._handshake_buffer, HANDSHAKE_FRAME_MAX)
            if frame is None:
                if self._handshake_buffer.startswith(b"AMQP"):
                    raise ConnectionError("the broker does not speak AMQP 0-9-1")
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("RabbitMQ closed the connection during the handshake "
                                          "(a wrong password is refused this way by old brokers)")
                self._handshake_buffer += data
                continue
            kind, on, payload, used = frame
            self._handshake_buffer = self._handshake_buffer[used:]
            if kind == FRAME_HEARTBEAT:
                continue
            if kind != FRAME_METHOD:
                raise FrameError(f"frame type {kind} during the handshake")
            method = method_of(payload)
            if method in (CONNECTION_CLOSE, CHANNEL_CLOSE):
                self._on_method(on, method, payload)
            if (on, method) != (channel, wanted):
                raise FrameError(f"RabbitMQ answered {method} on channel {on}, "
                                 f"not {wanted} on channel {channel}")
            return payload

    # -- reading ---------------------------------------------------------------------------

    def _receive(self) -> int:
        """Take what the socket holds now (up to READ_SIZE), never waiting."""
        chunks, total = [], 0
        sock, buffer = self._sock, self._read_buffer
        view = memoryview(buffer)
        try:
            while total < READ_SIZE:
                # Into a buffer kept for it: recv(1 MB) would allocate (and give back)
                # a megabyte on every read, ~50 us, however little arrived.
                n = sock.recv_into(buffer)
                if not n:
                    self._closed = True
                    break
                chunks.append(bytes(view[:n]))
                total += n
                if n < READ_SIZE and not self._tls:
                    break  # a short read: the socket is empty (TLS reads one record at a time)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ConnectionResetError:
            self._closed = True
        if total:
            self._parser.feed(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self._last_heard = self.monotonic()
        return total

    def _wait(self, timeout: float) -> None:
        if self._tls and self._sock.pending():
            return
        self._poll.poll(timeout * 1000)

    def _on_method(self, channel: int, method: tuple[int, int], payload: bytes) -> None:
        """A method the broker sent unasked."""
        if method == CONNECTION_CLOSE:
            code, text = close_reason(payload)
            self._send_quietly(connection_close_ok())
            raise BrokerClosedConnection(f"RabbitMQ closed the connection: {code} {text}")
        if method == CHANNEL_CLOSE:
            code, text = close_reason(payload)
            self._send_quietly(channel_close_ok(channel))
            raise SubscriptionEnded(f"RabbitMQ closed our channel: {code} {text}")
        if method == BASIC_CANCEL:
            raise SubscriptionEnded("RabbitMQ cancelled our consumer: the event queue was deleted")
        log.debug("ignored AMQP method %s on channel %d", method, channel)

    def _send(self, data: bytes) -> None:
        sock = self._sock
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.sendall(data)
        finally:
            sock.settimeout(0.0 if self._parser is not None else CONNECT_TIMEOUT)

    def _send_quietly(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError:
            pass  # closing anyway

    def _goodbye(self, sock: socket.socket, parser: DeliveryParser) -> None:
        """Connection.Close, and a moment's wait for Close-Ok, so the broker logs a clean exit."""
        sock.settimeout(1.0)
        sock.sendall(connection_close())
        answered: list = []
        parser.on_method = lambda channel, method, payload: answered.append(method)
        deadline = time.monotonic() + 1.0
        while CONNECTION_CLOSE_OK not in answered and time.monotonic() < deadline:
            data = sock.recv(READ_SIZE)
            if not data:
                return
            parser.feed(data)
            parser.parse([])  # deliveries still on the way are dropped: we are stopping
