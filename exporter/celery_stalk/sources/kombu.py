"""Celery events through kombu, for transports without a reader of their own
(the filesystem transport of the demo, SQS, ...). Redis and RabbitMQ have theirs
(redis.py, amqp.py); this one reads them too, much slower (the benchmarks'
baseline, bench/kombu_exporter.py).

A consumer of a queue of our own, bound to Celery's ``celeryev`` fanout
exchange, declared anew on every connect: a RabbitMQ event queue that expired
while we were away comes back.
"""

from __future__ import annotations

import binascii
import socket
import uuid

from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue

from .decode import BAD_ENVELOPE
from .supervisor import Message

CONNECT_TIMEOUT = 5.0
# Broker-side life of our event queue after we disconnect (RabbitMQ x-expires):
# long enough to ride out a restart of the exporter, short enough not to pile up.
EVENT_QUEUE_EXPIRES = 60.0
# AMQP heartbeats: a half-open connection to RabbitMQ fails within ~2 of these.
AMQP_HEARTBEAT = 10.0
# kombu polls some transports: never ask it for a read shorter than this.
MIN_READ_TIMEOUT = 0.01
# Errors kombu raises while unpacking a malformed message envelope (its JSON
# decoder recurses on deeply nested input).
ENVELOPE_ERRORS = (KeyError, TypeError, ValueError, binascii.Error, RecursionError)
# More malformed envelopes than this in a row, with no good message between,
# look like a broken connection rather than bad input: reconnect.
MAX_ENVELOPE_ERRORS_IN_A_ROW = 20


class KombuReader:
    def __init__(self, broker_url: str, transport_options: dict, ssl: dict | bool,
                 node_id: str, invalid):
        self.broker_url = broker_url
        self.transport_options = transport_options
        self.ssl = ssl
        self.node_id = node_id
        self.invalid = invalid
        self._connection: Connection | None = None
        self._pending: list[Message] = []
        self._envelope_errors = 0  # in a row

    def connection(self) -> Connection:
        return Connection(
            self.broker_url,
            transport_options=self.transport_options,
            ssl=self.ssl,
            heartbeat=AMQP_HEARTBEAT,
            connect_timeout=CONNECT_TIMEOUT,
        )

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

    def connect(self) -> str:
        connection = self._connection = self.connection()
        connection.ensure_connection(max_retries=1)
        consumer = Consumer(connection, queues=[self._queue(connection)],
                            on_message=self._on_message, no_ack=True)
        consumer.consume()
        self._pending = []
        self._envelope_errors = 0
        return connection.as_uri()

    def _on_message(self, message) -> None:
        self._envelope_errors = 0
        self._pending.append((message.content_type, message.body))

    def read(self, timeout: float) -> list[Message]:
        try:
            self._connection.drain_events(timeout=max(timeout, MIN_READ_TIMEOUT))
        except socket.timeout:
            pass
        except ENVELOPE_ERRORS:
            # kombu could not unpack a message: skip it, unless they keep
            # coming, which looks like a broken connection rather than input.
            self._envelope_errors += 1
            if self._envelope_errors > MAX_ENVELOPE_ERRORS_IN_A_ROW:
                raise
            self.invalid(BAD_ENVELOPE)
        messages, self._pending = self._pending, []
        return messages

    def tick(self, now: float) -> None:
        self._connection.heartbeat_check()

    def close(self, broken: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if broken:
            # No goodbyes on a broken or silently dead link: they could block on it.
            connection.collect(socket_timeout=1.0)
        else:
            connection.release()
