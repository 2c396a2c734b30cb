"""How long the oldest message of a Redis queue has waited, from the messages at its heads.

kombu pushes a message with LPUSH and consumes with BRPOP/RPOP, so the message taken
next, the oldest of its list, sits at index -1 of the queue's base list and of each
priority sub-list. The queue reader reads those heads (LINDEX -1) in the round trip
that counts the depths; this module turns them into ages:

- ``head_task_id`` finds the Celery task id in a head (protocol 2: the ``id`` header;
  protocol 1: the ``id`` of a JSON body), or says why it cannot (a fixed set of reasons).
- ``HeadAges`` dates each head: from its task's task-sent timestamp when the exporter saw
  that event (exact), else from when the exporter first saw that message at the head of
  its list (a lower bound: it may have waited behind others before). It remembers one
  head per list read in the last scrape, so its memory is bounded by the queues read.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable
from typing import Callable

import orjson

from ..model.fields import MAX_TASK_ID_LENGTH

# Why a head could not give a task id (celery_stalk_queue_heads_invalid_total{reason}).
NOT_JSON = "not_json"  # the envelope is not a JSON object (not a kombu message)
NO_TASK_ID = "no_task_id"  # neither the id header nor a JSON body's id is a task id
BODY_UNREADABLE = "body_unreadable"  # protocol 1 with a body that is not base64 JSON
REASONS = (NOT_JSON, NO_TASK_ID, BODY_UNREADABLE)


class MalformedHead(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _task_id(value: object) -> str | None:
    if type(value) is str and 0 < len(value) <= MAX_TASK_ID_LENGTH:
        return value
    return None


def head_task_id(raw: bytes) -> str:
    """The Celery task id of one message as kombu stores it in Redis; raises MalformedHead."""
    try:
        envelope = orjson.loads(raw)  # the JSON decoder of the event hot path: 3x json's speed
    except orjson.JSONDecodeError:
        raise MalformedHead(NOT_JSON) from None
    if not isinstance(envelope, dict):
        raise MalformedHead(NOT_JSON)
    headers = envelope.get("headers")
    if isinstance(headers, dict) and "id" in headers:  # task protocol 2
        task_id = _task_id(headers["id"])
        if task_id is None:
            raise MalformedHead(NO_TASK_ID)
        return task_id
    # Task protocol 1: the id is in the body, which only a JSON body gives without
    # deserialising anything else (never pickle).
    body = envelope.get("body")
    properties = envelope.get("properties")
    encoding = properties.get("body_encoding") if isinstance(properties, dict) else None
    if not isinstance(body, str) or "json" not in str(envelope.get("content-type", "")):
        raise MalformedHead(BODY_UNREADABLE if isinstance(body, str) else NO_TASK_ID)
    try:
        text = base64.b64decode(body, validate=True) if encoding == "base64" else body
        payload = orjson.loads(text)
    except (ValueError, binascii.Error):
        raise MalformedHead(BODY_UNREADABLE) from None
    task_id = _task_id(payload.get("id")) if isinstance(payload, dict) else None
    if task_id is None:
        raise MalformedHead(NO_TASK_ID)
    return task_id


class Head:
    """The message last seen at the head of one list."""

    __slots__ = ("fingerprint", "task_id", "born", "dated")

    def __init__(self, fingerprint: int, task_id: str | None, seen: float):
        self.fingerprint = fingerprint  # hash of its bytes: the same message, unparsed
        self.task_id = task_id  # None: malformed, counted once, no age
        self.born = seen  # when it was sent, or else first seen at the head
        self.dated = False  # born is its task-sent's timestamp


SentTimes = Callable[[list[str]], dict[str, float]]
# A head's task-sent event, if its producer sends one, reaches the model within moments
# of the message (events and messages travel through the same broker): a head still
# undated this long after it was first seen is not asked about again.
SENT_LOOKUP_WINDOW = 60.0


def no_sent_times(task_ids: list[str]) -> dict[str, float]:
    return {}


class HeadAges:
    """Ages of the oldest message per queue from the heads read in each scrape.

    ``sent_times``: the model's task-sent timestamps for task ids (Model.sent_times).
    ``clock``: the exporter's clock (injected in tests).
    """

    def __init__(self, sent_times: SentTimes = no_sent_times,
                 clock: Callable[[], float] = time.time):
        self.sent_times = sent_times
        self.clock = clock
        self.heads: dict[str, Head] = {}
        self.invalid: dict[str, int] = dict.fromkeys(REASONS, 0)

    def ages(self, heads: dict[str, Iterable[tuple[str, bytes]]]) -> dict[str, float]:
        """``heads``: queue -> (list key, raw head message) for each non-empty list read.
        Returns the oldest message's age in seconds for each queue with a dated head;
        forgets the heads of lists that are now empty or were not read."""
        now = self.clock()
        known, seen = self.heads, {}
        by_queue: dict[str, list[Head]] = {}
        undated: list[Head] = []
        for queue, lists in heads.items():
            for key, raw in lists:
                fingerprint = hash(raw)
                head = known.get(key)
                if head is None or head.fingerprint != fingerprint:
                    head = self._new_head(fingerprint, raw, now)
                seen[key] = head
                if head.task_id is None:
                    continue
                by_queue.setdefault(queue, []).append(head)
                if not head.dated and now - head.born < SENT_LOOKUP_WINDOW:
                    undated.append(head)
        self.heads = seen
        if undated:
            sent = self.sent_times([head.task_id for head in undated])
            for head in undated:
                at = sent.get(head.task_id)
                if at is not None:
                    # A producer clock ahead of ours must not make it younger than seen.
                    head.born, head.dated = min(head.born, at), True
        return {queue: max(0.0, now - min(head.born for head in queue_heads))
                for queue, queue_heads in by_queue.items()}

    def _new_head(self, fingerprint: int, raw: bytes, now: float) -> Head:
        try:
            task_id = head_task_id(raw)
        except MalformedHead as exc:
            self.invalid[exc.reason] += 1  # once per message: it is remembered as malformed
            task_id = None
        return Head(fingerprint, task_id, now)
