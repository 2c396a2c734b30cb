"""Consumes Celery events from the broker's ``celeryev`` exchange into the model.

Runs on its own thread and never dies of bad input: a message that is not a
Celery event is counted in the model and skipped. A broken connection is
reported (model.consumer_disconnected) and retried with capped exponential
backoff; the queue is declared anew on every connect, so a RabbitMQ event
queue that expired while we were away comes back.

A connection can also die without an error: a half-open TCP connection after
a broker failover, or a Redis pub/sub subscription lost on the way. Nothing
then arrives, and nothing fails. The watchdog notices: workers that are up
send a heartbeat every few seconds, so when no event at all arrives for
``stall_timeout`` while workers are up, the consumer reconnects
(model.consumer_stalled).
"""

from __future__ import annotations

import binascii
import json
import logging
import random
import socket
import threading
import time
import uuid

import orjson
from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue

from .model import Model

log = logging.getLogger(__name__)

ACCEPTED_CONTENT_TYPES = frozenset({"application/json", "", None})
TICK_INTERVAL = 1.0
CONNECT_TIMEOUT = 5.0
# Broker-side life of our event queue after we disconnect (RabbitMQ x-expires):
# long enough to ride out a restart of the exporter, short enough not to pile up.
EVENT_QUEUE_EXPIRES = 60.0
# AMQP heartbeats: a half-open connection to RabbitMQ fails within ~2 of these.
AMQP_HEARTBEAT = 10.0
# Redis: let the kernel notice a peer that vanished (keepalive probes), unless
# the user's transport options say otherwise.
REDIS_EVENT_OPTIONS = {
    "socket_keepalive": True,
    "socket_keepalive_options": {
        getattr(socket, "TCP_KEEPIDLE", 4): 10,
        getattr(socket, "TCP_KEEPINTVL", 5): 5,
        getattr(socket, "TCP_KEEPCNT", 6): 3,
    },
    "socket_connect_timeout": CONNECT_TIMEOUT,
    # Commands (not the pub/sub wait) on a dead link fail instead of hanging.
    "socket_timeout": CONNECT_TIMEOUT,
}
# Errors kombu raises while unpacking a malformed message envelope (Redis).
ENVELOPE_ERRORS = (KeyError, TypeError, ValueError, binascii.Error)
# More malformed envelopes than this in a row, with no good message between,
# look like a broken connection rather than bad input: reconnect.
MAX_ENVELOPE_ERRORS_IN_A_ROW = 20

# Reasons a message is skipped before it reaches the model.
CONTENT_TYPE = "content_type"
NOT_JSON = "not_json"
BAD_ENVELOPE = "bad_envelope"
INTERNAL_ERROR = "internal_error"


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, base: float = 0.5, cap: float = 10.0, rng=random.random):
        self.base, self.cap, self.rng = base, cap, rng
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return delay * (0.5 + self.rng() / 2)

    def reset(self) -> None:
        self.attempt = 0


class EventStreamStalled(Exception):
    """No event arrived for too long although workers are up."""


def decode_body(body: bytes | str) -> object:
    """JSON from a message body; raises ValueError if it is not JSON.

    orjson first (the fast path). It refuses bytes that are not UTF-8 and
    escaped lone surrogates (a Python str that held undecodable bytes), which
    would lose a whole batch of good events for one bad name; the standard
    library then decodes such a body, keeping the bad strings as surrogates
    for the model to refuse one event at a time.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        if isinstance(body, bytes):
            body = body.decode("utf-8", "surrogateescape")
        return json.loads(body)


class _UndecodableEnvelopes(logging.Filter):
    """kombu's Redis transport drops a pub/sub message that is not JSON and only
    logs it ("Cannot process event on channel ..."): count those, and keep the
    rest of that logger's chatter below ERROR out of our log."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Cannot process event"):
            self.model.record_invalid(BAD_ENVELOPE)
            return False
        return record.levelno >= logging.ERROR


class EventConsumer:
    def __init__(
        self,
        model: Model,
        broker_url: str,
        transport_options: dict,
        ssl: dict | bool = False,
        stall_timeout: float = 10.0,
        clock=time.time,
        monotonic=time.monotonic,
    ):
        self.model = model
        self.broker_url = broker_url
        self.transport_options = transport_options
        self.ssl = ssl
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.monotonic = monotonic
        self.node_id = f"celery-stalk.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self.consuming = threading.Event()  # readiness: connected and consuming
        self.thread = threading.Thread(target=self.run, name="celery-stalk-events", daemon=True)
        self.backoff = Backoff()
        self._last_message = 0.0  # monotonic; for the stall watchdog
        self._envelope_errors = 0  # in a row
        self._stalled: EventStreamStalled | None = None
        self._control = Celery(set_as_current=False)  # only to ask workers for heartbeats

    def start(self) -> None:
        redis_log = logging.getLogger("kombu.transport.redis")
        redis_log.setLevel(logging.WARNING)  # so the filter sees the records
        redis_log.addFilter(_UndecodableEnvelopes(self.model))
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def run(self) -> None:
        while not self._stop.is_set():
            self._stalled = None
            try:
                self._consume()
            except Exception as exc:
                self.consuming.clear()
                if self._stalled is not None:  # even if closing the dead link raised too
                    # The broker may be fine: reconnect at once, no backoff.
                    self.model.consumer_stalled()
                    log.warning("%s: the subscription looks silently lost; reconnecting",
                                self._stalled)
                    continue
                # any other failure: report, back off, reconnect
                self.model.consumer_disconnected()
                delay = self.backoff.next_delay()
                log.warning(
                    "event consumer lost the broker (%s: %s); reconnecting in %.1f s",
                    type(exc).__name__, exc, delay,
                )
                self._stop.wait(delay)
        self.consuming.clear()
        self.model.consumer_disconnected()

    def _queue(self, connection: Connection) -> Queue:
        # A new name on every connect: after a stall the dead connection may
        # still hold the old queue as a consumer until the broker notices, and
        # sharing it would hand it every other event.
        return Queue(
            f"celeryev.{self.node_id}.{uuid.uuid4().hex[:8]}",
            exchange=get_exchange(connection),
            routing_key="#",
            auto_delete=True,
            durable=False,
            expires=EVENT_QUEUE_EXPIRES,
        )

    def _connection(self) -> Connection:
        options = self.transport_options
        if self.broker_url.startswith("redis"):
            options = {**REDIS_EVENT_OPTIONS, **options}
        return Connection(
            self.broker_url,
            transport_options=options,
            ssl=self.ssl,
            heartbeat=AMQP_HEARTBEAT,
            connect_timeout=CONNECT_TIMEOUT,
        )

    def _consume(self) -> None:
        connection = self._connection()
        try:
            connection.ensure_connection(max_retries=1)
            consumer = Consumer(connection, queues=[self._queue(connection)],
                                on_message=self._on_message, no_ack=True)
            consumer.consume()
            self._wake_workers(connection)
            self.model.consumer_connected(self.clock())
            self.consuming.set()
            self.backoff.reset()
            self._last_message = self.monotonic()
            log.info("consuming events from %s", connection.as_uri())
            next_tick = 0.0
            while not self._stop.is_set():
                self._drain(connection)
                now = self.clock()
                if now >= next_tick:
                    # Also while busy: a consumer that only receives must
                    # still send AMQP heartbeats or the broker drops it.
                    connection.heartbeat_check()
                    self.model.tick(now)
                    self._check_stall()
                    next_tick = now + TICK_INTERVAL
        except BaseException:
            # No goodbyes on a broken or silently dead link: they could block on it.
            connection.collect(socket_timeout=1.0)
            raise
        connection.release()  # stopping: the broker drops our event queue at once

    def _drain(self, connection: Connection) -> None:
        try:
            connection.drain_events(timeout=TICK_INTERVAL)
        except socket.timeout:
            pass
        except ENVELOPE_ERRORS as exc:
            # kombu could not unpack a message (Redis: a pub/sub payload that is
            # JSON but not a kombu envelope). Skip it, unless the broker itself
            # has stopped answering: kombu raises some of these for broken
            # connections too.
            self._envelope_errors += 1
            if self._envelope_errors > MAX_ENVELOPE_ERRORS_IN_A_ROW or not _answers(connection):
                raise
            self.model.record_invalid(BAD_ENVELOPE)
            log.debug("skipped a malformed message envelope: %s: %s", type(exc).__name__, exc)

    def _check_stall(self) -> None:
        interval = self.model.expected_event_interval()
        if interval is None:
            return  # no worker up: silence is normal
        silent = self.monotonic() - self._last_message
        if silent > max(self.stall_timeout, 2 * interval):
            self._stalled = EventStreamStalled(f"no event for {silent:.0f} s although workers are up")
            raise self._stalled

    def _wake_workers(self, connection: Connection) -> None:
        """Ask every worker for a heartbeat now, so the fleet is known at once."""
        try:
            self._control.control.broadcast("heartbeat", connection=connection)
        except Exception as exc:  # a courtesy: heartbeats arrive anyway within 2 s
            log.debug("could not ask workers for a heartbeat: %s", exc)

    def _on_message(self, message) -> None:
        self._last_message = self.monotonic()
        self._envelope_errors = 0
        try:
            self._apply(message)
        except Exception:  # a bug of ours must not look like a broker outage
            log.exception("could not apply an event message")
            self.model.record_invalid(INTERNAL_ERROR)

    def _apply(self, message) -> None:
        now = self.clock()
        if message.content_type not in ACCEPTED_CONTENT_TYPES:
            self.model.record_invalid(CONTENT_TYPE)
            return
        try:
            body = decode_body(message.body)
        except (ValueError, TypeError):
            self.model.record_invalid(NOT_JSON)
            return
        if isinstance(body, list):  # task.multi: a worker's buffered batch
            self.model.apply_many(body, now)
        else:
            self.model.apply(body, now)


def _answers(connection: Connection) -> bool:
    """True if the broker answers a ping now (Redis only; AMQP envelopes are
    framed by the protocol, so an unpacking error there means a broken link)."""
    if connection.transport.driver_type != "redis":
        return False
    try:
        return bool(connection.default_channel.client.ping())
    except Exception:
        return False
