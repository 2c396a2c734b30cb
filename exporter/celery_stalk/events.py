"""Consumes Celery events from the broker's ``celeryev`` exchange into the model.

Runs on its own thread and never dies of bad input: a message that is not a
Celery event is counted in the model and skipped. A broken connection is
reported (model.consumer_disconnected) and retried with capped exponential
backoff; the queue is declared anew on every connect, so a RabbitMQ event
queue that expired while we were away comes back.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import uuid

import orjson
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue

from .model import Model

log = logging.getLogger(__name__)

ACCEPTED_CONTENT_TYPES = frozenset({"application/json", "", None})
TICK_INTERVAL = 1.0
# Broker-side life of our event queue after we disconnect (RabbitMQ x-expires):
# long enough to ride out a restart of the exporter, short enough not to pile up.
EVENT_QUEUE_EXPIRES = 60.0


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng=random.random):
        self.base, self.cap, self.rng = base, cap, rng
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return delay * (0.5 + self.rng() / 2)

    def reset(self) -> None:
        self.attempt = 0


class EventConsumer:
    def __init__(self, model: Model, broker_url: str, transport_options: dict, clock=time.time):
        self.model = model
        self.broker_url = broker_url
        self.transport_options = transport_options
        self.clock = clock
        self.node_id = f"celery-stalk.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self.consuming = threading.Event()  # readiness: connected and consuming
        self.thread = threading.Thread(target=self.run, name="celery-stalk-events", daemon=True)
        self.backoff = Backoff()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception as exc:  # any failure: report, back off, reconnect
                self.consuming.clear()
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
        return Queue(
            f"celeryev.{self.node_id}",
            exchange=get_exchange(connection),
            routing_key="#",
            auto_delete=True,
            durable=False,
            expires=EVENT_QUEUE_EXPIRES,
        )

    def _consume(self) -> None:
        with Connection(
            self.broker_url, transport_options=self.transport_options, heartbeat=10
        ) as connection:
            connection.ensure_connection(max_retries=1)
            queue = self._queue(connection)
            with Consumer(connection, queues=[queue], on_message=self._on_message, no_ack=True):
                self._wake_workers(connection)
                self.model.consumer_connected(self.clock())
                self.consuming.set()
                self.backoff.reset()
                log.info("consuming events from %s", connection.as_uri())
                next_tick = 0.0
                while not self._stop.is_set():
                    try:
                        connection.drain_events(timeout=TICK_INTERVAL)
                    except socket.timeout:
                        pass
                    now = self.clock()
                    if now >= next_tick:
                        # Also while busy: a consumer that only receives must
                        # still send AMQP heartbeats or the broker drops it.
                        connection.heartbeat_check()
                        self.model.tick(now)
                        next_tick = now + TICK_INTERVAL

    def _wake_workers(self, connection: Connection) -> None:
        """Ask every worker for a heartbeat now, so the fleet is known at once."""
        from celery import Celery

        app = Celery(broker=self.broker_url, set_as_current=False)
        app.conf.broker_transport_options = self.transport_options
        try:
            app.control.broadcast("heartbeat", connection=connection)
        except Exception as exc:  # a courtesy: heartbeats arrive anyway within 2 s
            log.debug("could not ask workers for a heartbeat: %s", exc)

    def _on_message(self, message) -> None:
        now = self.clock()
        if message.content_type not in ACCEPTED_CONTENT_TYPES:
            self.model.record_invalid("content_type")
            return
        try:
            body = orjson.loads(message.body)
        except (orjson.JSONDecodeError, TypeError):
            self.model.record_invalid("not_json")
            return
        if isinstance(body, list):  # task.multi: a worker's buffered batch
            self.model.apply_many(body, now)
        else:
            self.model.apply(body, now)
