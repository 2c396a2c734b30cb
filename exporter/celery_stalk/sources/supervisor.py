"""The event source: one reader of the broker's event stream, kept alive on its own thread.

A reader (redis.py, kombu.py) only connects and reads messages. Everything
else is here, the same for every transport:

- the thread, and readiness (``consuming``) for /readyz;
- decoding messages into events (decode.py) and applying them to the model in
  batches, a bad message counted and skipped, never raised;
- reconnecting with capped, jittered backoff when the reader fails, telling
  the model the link is down so workers keep their last verdict meanwhile;
- one tick a second: the model's liveness verdicts and the reader's upkeep
  (AMQP heartbeats, Redis pings);
- the stall watchdog. A connection can die without an error: a half-open TCP
  connection after a broker failover, or a Redis pub/sub subscription lost on
  the way. Nothing arrives, and nothing fails. Workers that are up send a
  heartbeat every few seconds, so when no message at all arrives for
  ``stall_timeout`` while workers are up, the source reconnects at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Protocol

from ..model import Model
from .decode import INTERNAL_ERROR, decode_into
from .state import SourceState

log = logging.getLogger(__name__)

TICK_INTERVAL = 1.0
# Events applied to the model under one lock acquisition: large enough to make
# the lock free, small enough that a scrape never waits more than a few ms.
BATCH_EVENTS = 2000

Message = tuple[object, bytes]  # (content type, body)


class Reader(Protocol):
    """One transport's way to the event stream."""

    def connect(self) -> str:
        """Connect and subscribe; return where to, for the log. Raises on failure."""

    def read(self, timeout: float) -> list[Message]:
        """The messages that arrived, waiting up to ``timeout`` for the first.
        Raises when the connection is lost (after handing over what came before)."""

    def tick(self, now: float) -> None:
        """Upkeep once a second (heartbeats, pings). Raises when the link is dead."""

    def close(self, broken: bool) -> None:
        """Release the connection; ``broken``: no goodbyes, they could block on it."""


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


class SubscriptionEnded(ConnectionError):
    """The broker ended our subscription on a connection that works (RabbitMQ: our
    event queue was deleted). Subscribing again at once is safe, and every second
    waited is events lost."""


# A subscription that ends sooner than this after it started gets the backoff:
# something keeps ending it, and reconnecting at once would spin.
RESUBSCRIBE_AT_ONCE_AFTER = 5.0


class EventSource:
    def __init__(
        self,
        reader: Reader,
        model: Model,
        state: SourceState | None = None,
        stall_timeout: float = 10.0,
        wake_workers: Callable[[], None] = lambda: None,
        clock=time.time,
        monotonic=time.monotonic,
    ):
        self.reader = reader
        self.model = model
        self.state = state or SourceState()
        self.stall_timeout = stall_timeout
        self.wake_workers = wake_workers
        self.clock = clock
        self.monotonic = monotonic
        self._stop = threading.Event()
        self.consuming = threading.Event()  # readiness: connected and consuming
        self.thread = threading.Thread(target=self.run, name="celery-stalk-events", daemon=True)
        self.backoff = Backoff()
        self._last_message = 0.0  # monotonic; for the stall watchdog
        self._connected_at = 0.0  # monotonic
        self._stalled: EventStreamStalled | None = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def run(self) -> None:
        while not self._stop.is_set():
            self._stalled = None
            try:
                self._session()
            except Exception as exc:
                self.consuming.clear()
                if self._stalled is not None:  # even if closing the dead link raised too
                    # The broker may be fine: reconnect at once, no backoff. The
                    # model stays linked: the silence is the stream's fault, so a
                    # worker that is really gone is still reported lost on time.
                    self.state.stalled()
                    log.warning("%s: the subscription looks silently lost; reconnecting",
                                self._stalled)
                    continue
                self.state.disconnected()
                self.model.link_down()
                if (isinstance(exc, SubscriptionEnded)
                        and self.monotonic() - self._connected_at >= RESUBSCRIBE_AT_ONCE_AFTER):
                    log.warning("%s; subscribing again at once", exc)
                    continue
                delay = self.backoff.next_delay()
                log.warning(
                    "event consumer lost the broker (%s: %s); reconnecting in %.1f s",
                    type(exc).__name__, exc, delay,
                )
                self._stop.wait(delay)
        self.consuming.clear()
        self.state.disconnected()
        self.model.link_down()

    def _session(self) -> None:
        """One connection's life: connect, read until stopped or lost, close."""
        try:
            where = self.reader.connect()
            self._wake_workers()
            self.state.connected()
            self.model.link_up(self.clock())
            self.consuming.set()
            self.backoff.reset()
            self._last_message = self._connected_at = self.monotonic()
            log.info("consuming events from %s", where)
            self._pump()
        except BaseException:
            self.reader.close(broken=True)
            raise
        self.reader.close(broken=False)  # stopping: the broker drops our event queue at once

    def _wake_workers(self) -> None:
        """Ask every worker for a heartbeat now, so the fleet is known at once.

        On a thread of its own: the broadcast opens a connection of its own, which may take
        up to its connect timeout on a broker that is slow or half gone, and must not hold
        up the events (a reconnect after a stall waited for it)."""
        def wake() -> None:
            try:
                self.wake_workers()
            except Exception as exc:  # a courtesy: heartbeats arrive anyway within 2 s
                log.debug("could not ask workers for a heartbeat: %s", exc)

        threading.Thread(target=wake, name="celery-stalk-wake-workers", daemon=True).start()

    def _pump(self) -> None:
        reader, model, clock, stop = self.reader, self.model, self.clock, self._stop
        next_tick = 0.0
        while not stop.is_set():
            messages = reader.read(max(0.0, next_tick - clock()))
            if messages:
                self._last_message = self.monotonic()
                self._apply(messages)
            now = clock()
            if now >= next_tick:
                # Also while busy: a consumer that only receives must still
                # send AMQP heartbeats or the broker drops it.
                reader.tick(now)
                model.tick(now)
                self._check_stall()
                next_tick = now + TICK_INTERVAL

    def _apply(self, messages: list[Message]) -> None:
        invalid = self.state.invalid
        events: list = []
        for content_type, body in messages:
            try:
                decode_into(content_type, body, events, invalid)
            except Exception:  # a bug of ours must not look like a broker outage
                log.exception("could not decode an event message")
                invalid(INTERNAL_ERROR)
            if len(events) >= BATCH_EVENTS:
                self._apply_events(events)
                events = []
        if events:
            self._apply_events(events)

    def _apply_events(self, events: list) -> None:
        try:
            self.model.apply_many(events, self.clock())
        except Exception:  # a bug of ours must not look like a broker outage
            log.exception("could not apply a batch of events")
            self.state.invalid(INTERNAL_ERROR)

    def _check_stall(self) -> None:
        interval = self.model.expected_event_interval()
        if interval is None:
            return  # no worker up: silence is normal
        silent = self.monotonic() - self._last_message
        # Back from an outage, workers reconnect on Celery's schedule, maybe well after us.
        if silent > max(self.stall_timeout, 2 * interval) + self.model.reconnect_grace():
            self._stalled = EventStreamStalled(f"no event for {silent:.0f} s although workers are up")
            raise self._stalled
