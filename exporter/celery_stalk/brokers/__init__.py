"""Queue depth readers, one per broker transport, behind one small protocol."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol


class QueueDepth(NamedTuple):
    """One queue as the broker reports it (a tuple: a scrape makes one per queue)."""

    # None below: this broker (or this way of reading it) cannot tell.
    messages: int  # ready
    consumers: int | None = None
    oldest_age: float | None = None  # seconds the oldest message has waited; None: empty
    unacked: int | None = None  # delivered, not yet acknowledged
    consumer_utilisation: float | None = None  # share of time the queue could deliver at once


class QueueReader(Protocol):
    def read(self, queues: Iterable[str]) -> dict[str, QueueDepth]:
        """Depth of every named queue in one round trip where the broker allows; raises on failure."""

    def discover(self) -> list[str]:
        """Queue names the broker itself knows about (may be empty)."""

    def close(self) -> None: ...

    # Optional: ``invalid``, reason -> count of queue heads that could not be read
    # (brokers/heads.py), and ``status()``, a poll loop's health (brokers/management.py).


# Celery's own control and event plumbing: never reported as work queues.
def is_internal_queue(name: str) -> bool:
    return name.startswith("celeryev.") or name.endswith(".pidbox") or ".reply.celery.pidbox" in name


def reader_for(config, sent_times=None) -> QueueReader:
    """``sent_times``: the model's task-sent timestamps by task id, to date Redis heads."""
    if config.transport == "redis":
        from .heads import HeadAges, no_sent_times
        from .redis import RedisQueueReader

        return RedisQueueReader(config.broker_url, config.transport_options,
                                config.queue_read_timeout, config.kombu_ssl,
                                HeadAges(sent_times or no_sent_times))
    if config.transport == "filesystem":
        from .filesystem import FilesystemQueueReader

        return FilesystemQueueReader(config.transport_options)
    if config.rabbitmq_management is not None:
        from .management import ManagementQueueReader

        return ManagementQueueReader(config.rabbitmq_management)
    from .amqp import AmqpQueueReader

    return AmqpQueueReader(config.broker_url, config.transport_options,
                           config.queue_read_timeout, config.kombu_ssl)
