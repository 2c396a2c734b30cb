"""Queues of a RabbitMQ vhost from the management API, polled on a loop of its own.

With --rabbitmq-management-url the exporter lists every queue of the broker URL's
vhost (not only those named with --queue or seen in task-sent events) and reports
ready and unacknowledged messages, consumers, consumer utilisation and, where the
broker gives one, the head message's timestamp. The API can be slow on a large
broker, so it is never called from a scrape: a thread polls it every interval (one
request per page of 500 queues, each bounded by a timeout) and the scrape reads the
last result. A failed poll is counted, and the scrape then reports the broker down
rather than serve an old answer as if it were fresh.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, unquote, urlencode, urlsplit

from . import QueueDepth, is_internal_queue

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # the largest page the management API serves
# Only what is reported: the API then skips the rest of each queue's details.
COLUMNS = ("name", "messages_ready", "messages_unacknowledged", "consumers",
           "consumer_utilisation", "consumer_capacity", "head_message_timestamp")
MAX_RESPONSE = 64 * 1024 * 1024  # bytes; a broker with 100,000 queues answers in a few MB


class ManagementError(Exception):
    """A poll that gave no queue list; its message never holds the password."""


@dataclass(frozen=True)
class ManagementSettings:
    url: str  # base URL of the management API, e.g. http://rabbitmq:15672
    vhost: str
    user: str
    password: str
    ca_file: str | None = None
    timeout: float = 5.0
    interval: float = 15.0


def vhost_of(broker_url: str) -> str:
    """The vhost of an amqp:// URL as kombu reads it: the path without its first slash
    ("/" when empty)."""
    path = urlsplit(broker_url.split(";")[0].strip()).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def parse_queue(item: dict, now: float) -> tuple[str, QueueDepth] | None:
    """One queue of the API's list as (name, depth); None for one that is not a work queue."""
    name = item.get("name")
    if not isinstance(name, str) or not name or is_internal_queue(name):
        return None
    utilisation = _number(item.get("consumer_utilisation"))
    if utilisation is None:  # RabbitMQ 3.10+ calls it consumer_capacity too
        utilisation = _number(item.get("consumer_capacity"))
    stamp = _number(item.get("head_message_timestamp"))  # seconds; only if producers set it
    ready = _number(item.get("messages_ready"))
    consumers = _number(item.get("consumers"))
    unacked = _number(item.get("messages_unacknowledged"))
    return name, QueueDepth(
        messages=int(ready or 0),
        consumers=None if consumers is None else int(consumers),
        oldest_age=None if stamp is None or not ready else max(0.0, now - stamp),
        unacked=None if unacked is None else int(unacked),
        consumer_utilisation=None if utilisation is None else min(float(utilisation), 1.0),
    )


class ManagementQueueReader:
    """The QueueReader for RabbitMQ with the management API: read() serves the last poll."""

    def __init__(self, settings: ManagementSettings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._depths: dict[str, QueueDepth] | None = None
        self._failed = False  # the last poll failed
        self.failures = 0
        self.last_success: float | None = None
        credentials = f"{settings.user}:{settings.password}".encode()
        self._auth = "Basic " + base64.b64encode(credentials).decode()
        self._context = None
        if settings.url.startswith("https"):
            self._context = ssl.create_default_context(cafile=settings.ca_file)
        # No proxies from the environment: the API is reached directly, as the broker is.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._context))

    # -- the poll loop ----------------------------------------------------------

    def page_url(self, page: int) -> str:
        query = urlencode({"page": page, "page_size": PAGE_SIZE, "pagination": "true",
                           "columns": ",".join(COLUMNS)})
        vhost = quote(self.settings.vhost, safe="")
        return f"{self.settings.url.rstrip('/')}/api/queues/{vhost}?{query}"

    def _get(self, url: str) -> dict:
        request = urllib.request.Request(url, headers={"Authorization": self._auth,
                                                       "Accept": "application/json"})
        try:
            with self._opener.open(request, timeout=self.settings.timeout) as response:
                body = response.read(MAX_RESPONSE + 1)
        except urllib.error.HTTPError as exc:
            hint = ": check the user and password" if exc.code in (401, 403) else ""
            if exc.code == 404:
                hint = f": is vhost {self.settings.vhost!r} right?"
            raise ManagementError(f"HTTP {exc.code}{hint}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ManagementError(f"{type(reason).__name__}: {reason}") from None
        if len(body) > MAX_RESPONSE:
            raise ManagementError("answer larger than 64 MiB")
        try:
            answer = json.loads(body)
        except ValueError:
            raise ManagementError("answer is not JSON (is this the management API's URL?)") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
            raise ManagementError("answer is not a page of queues (is this the management API's URL?)")
        return answer

    def fetch(self) -> dict[str, QueueDepth]:
        """Every work queue of the vhost, one request per page; raises ManagementError."""
        depths: dict[str, QueueDepth] = {}
        page, pages = 1, 1
        while page <= pages:
            answer = self._get(self.page_url(page))
            now = self.clock()
            for item in answer["items"]:
                parsed = parse_queue(item, now) if isinstance(item, dict) else None
                if parsed is not None:
                    depths[parsed[0]] = parsed[1]
            page_count = answer.get("page_count")
            pages = page_count if isinstance(page_count, int) and page_count < 10_000 else 1
            page += 1
        return depths

    def poll(self) -> list[str] | None:
        """One poll; returns the queue names found, or None if it failed."""
        try:
            depths = self.fetch()
        except Exception as exc:  # the loop must outlive any one answer
            with self._lock:
                self.failures += 1
                self._failed = True
            if isinstance(exc, ManagementError):
                log.warning("cannot read queues from the RabbitMQ management API: %s", exc)
            else:
                log.exception("reading the RabbitMQ management API's answer failed")
            return None
        with self._lock:
            self._depths, self._failed = depths, False
            self.last_success = self.clock()
        return sorted(depths)

    def run(self, stop: threading.Event, found: Callable[[list[str], float], None]) -> None:
        """Poll every interval until ``stop``; ``found`` learns the queue names of each."""
        while not stop.is_set():
            names = self.poll()
            if names is not None:
                found(names, self.clock())
            stop.wait(self.settings.interval)

    def start(self, stop: threading.Event,
              found: Callable[[list[str], float], None]) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop, found),
                                  name="celery-stalk-rabbitmq-management", daemon=True)
        thread.start()
        return thread

    # -- QueueReader ------------------------------------------------------------

    def read(self, queues: Iterable[str]) -> dict[str, QueueDepth]:
        """The last poll's answer for ``queues``; a queue it did not list holds nothing."""
        with self._lock:
            if self._failed or self._depths is None:
                raise ManagementError("the last poll of the management API failed"
                                      if self._failed else "no poll of the management API yet")
            depths = self._depths
        empty = QueueDepth(messages=0, consumers=0, unacked=0)
        return {queue: depths.get(queue, empty) for queue in sorted(set(queues))}

    def discover(self) -> list[str]:
        with self._lock:
            return sorted(self._depths or ())

    def status(self) -> tuple[int, float | None]:
        """(failed polls, when the last one succeeded)."""
        with self._lock:
            return self.failures, self.last_success

    def close(self) -> None:
        pass
