"""The producer side: stamp each task message, count it sent.

``before_task_publish`` puts the send time and the queue name in the message
headers, so the worker measures the queue wait and labels the queue without any
task-sent event. ``after_task_publish`` (the message is with the broker) counts
celery_task_sent_total, in the process that published: a web app, a beat, or a
worker publishing from a task (a retry, a subtask).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Callable

from kombu import Queue

from .observe import QUEUE_HEADER, SENT_HEADER, Errors


def queue_name(declare: Iterable[object] | None, routing_key: object) -> object:
    """The queue Celery routed to (the one it declares), else the routing key,
    which is the queue's name on the default direct exchange."""
    for entity in declare or ():
        if isinstance(entity, Queue) and entity.name:
            return entity.name
    return routing_key


class Publishing:
    def __init__(self, sent: Callable[[object, object], None], errors: Errors):
        self.sent = sent
        self.errors = errors

    def before(self, sender=None, headers=None, routing_key=None, declare=None, **_) -> None:
        try:
            if headers is not None:
                headers[SENT_HEADER] = time.time()
                headers[QUEUE_HEADER] = queue_name(declare, routing_key)
        except Exception:
            self.errors("publish")

    def after(self, sender=None, headers=None, routing_key=None, **_) -> None:
        try:
            queue = (headers or {}).get(QUEUE_HEADER) or routing_key
            self.sent(sender, queue)
        except Exception:
            self.errors("publish")
