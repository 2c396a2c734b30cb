"""Queue depth on Redis: LLEN of each queue's base list and priority sub-lists, and the
age of its oldest message from the message at the consuming end of each.

kombu keeps messages of priority step N (N > 0) in a separate list named
``QUEUE + sep + N``; counting only the base list undercounts a backlog of
prioritised tasks. kombu pushes with LPUSH and pops with BRPOP, so each list's oldest
message is at index -1 (LINDEX -1, dated in heads.py). All lists of all queues are read
in one pipelined round trip.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import QueueDepth, is_internal_queue
from .heads import HeadAges

DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
DEFAULT_SEP = "\x06\x16"
BINDING_PREFIX = "_kombu.binding."
# Exchanges Celery uses for events and remote control, not for tasks.
INTERNAL_EXCHANGES = frozenset({"celeryev", "celery.pidbox", "reply.celery.pidbox"})


READ_SIZE = 1 << 18
# hiredis moves its unparsed buffer each time it hands out a reply: fed a slice at a
# time, that is a few KB per reply rather than all that was read.
FEED_SIZE = 4 << 10


def _read_replies(sock, count: int, timeout: float) -> list:
    """``count`` replies off ``sock``, within ``timeout`` in all; error replies as None."""
    reader = hiredis.Reader()
    replies: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(replies) < count:
            reply = reader.gets()
            if reply is not False:
                replies.append(None if isinstance(reply, hiredis.ReplyError) else reply)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise redis.TimeoutError(f"no reply from Redis within {timeout:g} s")
            sock.settimeout(left)
            try:
                data = sock.recv(READ_SIZE)
            except socket.timeout:
                raise redis.TimeoutError(f"no reply from Redis within {timeout:g} s") from None
            if not data:
                raise redis.ConnectionError("Redis closed the connection")
            view = memoryview(data)
            for start in range(0, len(data), FEED_SIZE):
                reader.feed(view[start:start + FEED_SIZE])
                while (reply := reader.gets()) is not False:
                    replies.append(None if isinstance(reply, hiredis.ReplyError) else reply)
    finally:
        sock.settimeout(timeout)  # as redis-py set it
    return replies


class RedisQueueReader:
    def __init__(self, broker_url: str, transport_options: dict, timeout: float,
                 ssl: dict | bool = False, head_ages: HeadAges | None = None):
        self.head_ages = head_ages or HeadAges()
        self.timeout = timeout
        self._lock = threading.Lock()
        # Kept while the queue list stays the same: (queues, their keys, each key's queue)
        # and (keys, the packed request).
        self._layout: tuple[list[str], tuple[str, ...], list[str]] | None = None
        self._packed: tuple[tuple[str, ...], list[bytes]] | None = None
        self.steps = tuple(sorted(set(transport_options.get("priority_steps", DEFAULT_PRIORITY_STEPS))))
        self.sep = transport_options.get("sep", DEFAULT_SEP)
        self.prefix = transport_options.get("global_keyprefix", "")
        url = broker_url.split(";")[0].strip()
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
            # One attempt: the scrape's time budget is the timeout, not a retry loop.
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
            # rediss://: the same ssl_* options as the event consumer's
            **(ssl if isinstance(ssl, dict) else {}),
        )

    def keys_for(self, queue: str) -> list[str]:
        """Every list that may hold messages of ``queue``, prefixed as kombu writes it."""
        names = [queue] + [f"{queue}{self.sep}{step}" for step in self.steps if step]
        return [self.prefix + name for name in names]

    def read(self, queues: Iterable[str]) -> dict[str, QueueDepth]:
        queues = sorted(set(queues))
        if not queues:
            self.client.ping()  # still prove the broker answers
            return {}
        with self._lock:  # one scrape at a time dates the heads
            if self._layout is None or self._layout[0] != queues:
                keyed = [(queue, key) for queue in queues for key in self.keys_for(queue)]
                self._layout = (queues, tuple(key for _, key in keyed),
                                [queue for queue, _ in keyed])
            _, keys, owners = self._layout
            replies = self._round_trip(keys)
            totals = dict.fromkeys(queues, 0)
            heads: dict[str, list[tuple[str, bytes]]] = {}
            for queue, key, length, head in zip(owners, keys, replies[0::2], replies[1::2]):
                if length:  # an int; None for a key of another type
                    totals[queue] += length
                    if head is not None:
                        if queue in heads:
                            heads[queue].append((key, head))
                        else:
                            heads[queue] = [(key, head)]
            ages = self.head_ages.ages(heads)
        return {queue: QueueDepth(total, None, ages.get(queue)) for queue, total in totals.items()}

    def _round_trip(self, keys: tuple[str, ...]) -> list:
        """LLEN and LINDEX -1 of every key, pipelined: sent at once, then every reply read.

        redis-py's pipeline spends most of a 1,000-queue read packing, dispatching and
        parsing 8,000 commands one by one in Python. Here redis-py connects (auth, TLS,
        database) and packs the request, which is kept while the queue list stays the
        same; the replies are read off its socket and parsed by hiredis directly, as the
        event reader does (sources/redis.py). A key of another type answers WRONGTYPE:
        that list holds no messages (None here).
        """
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            if self._packed is None or self._packed[0] != keys:
                commands = [command for key in keys for command in (("LLEN", key),
                                                                     ("LINDEX", key, -1))]
                self._packed = (keys, connection.pack_commands(commands))
            connection.send_packed_command(self._packed[1])
            return _read_replies(connection._sock, 2 * len(keys), self.timeout)
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            pool.release(connection)

    @property
    def invalid(self) -> dict[str, int]:
        """Heads that gave no task id, by reason (counted once per message)."""
        return self.head_ages.invalid

    def discover(self) -> list[str]:
        """Queues with a kombu binding (``_kombu.binding.<exchange>`` sets)."""
        pattern = f"{self.prefix}{BINDING_PREFIX}*".encode()
        binding_keys = [
            key
            for key in self.client.scan_iter(match=pattern, count=1000)
            if key.decode("utf-8", "replace")[len(self.prefix) + len(BINDING_PREFIX):]
            not in INTERNAL_EXCHANGES
        ]
        if not binding_keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key in binding_keys:
            pipe.smembers(key)
        sep = self.sep.encode()
        queues = set()
        for members in pipe.execute(raise_on_error=False):
            if not isinstance(members, set):
                continue
            for member in members:
                queue = member.split(sep)[-1].decode("utf-8", "replace")
                if queue and not is_internal_queue(queue):
                    queues.add(queue)
        return sorted(queues)

    def close(self) -> None:
        self.client.close()
