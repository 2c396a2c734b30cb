"""Queue depth on RabbitMQ (AMQP 0-9-1): a passive queue.declare per queue.

A passive declare returns ready messages and consumers without creating the
queue. AMQP has no way to list queues, so queues come from --queue and from
task-sent events.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kombu import Connection

from . import QueueDepth

NOT_FOUND = 404


class AmqpQueueReader:
    def __init__(self, broker_url: str, transport_options: dict, timeout: float,
                 ssl: dict | bool = False):
        self.url = broker_url
        self.transport_options = transport_options
        self.ssl = ssl
        self.timeout = timeout
        self._connection: Connection | None = None
        self._channel = None
        self._lock = threading.Lock()

    def _open_channel(self):
        if self._connection is None:
            self._connection = Connection(
                self.url,
                connect_timeout=self.timeout,
                transport_options=self.transport_options,
                ssl=self.ssl,
                heartbeat=0,
            )
            self._connection.ensure_connection(max_retries=1, timeout=self.timeout)
            # A reply that never comes must not hold the scrape forever.
            sock = getattr(self._connection.connection, "sock", None)
            if sock is not None:
                sock.settimeout(self.timeout)
        if self._channel is None:
            self._channel = self._connection.channel()
        return self._channel

    def read(self, queues: Iterable[str]) -> dict[str, QueueDepth]:
        with self._lock:
            try:
                return self._read(sorted(set(queues)))
            except Exception:
                self.close()  # start from a fresh connection next time
                raise

    def _read(self, queues: list[str]) -> dict[str, QueueDepth]:
        channel = self._open_channel()
        depths = {}
        for queue in queues:
            try:
                _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
            except self._connection.channel_errors as exc:
                if getattr(exc, "reply_code", None) != NOT_FOUND:
                    raise
                # The broker closed the channel: the queue does not exist, so it
                # holds nothing and nobody consumes it.
                self._channel = None
                channel = self._open_channel()
                messages, consumers = 0, 0
            depths[queue] = QueueDepth(messages=messages, consumers=consumers)
        if not queues:
            self._connection.connection.send_heartbeat()  # still prove the broker answers
        return depths

    def discover(self) -> list[str]:
        return []

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # already broken: nothing left to release
                pass
