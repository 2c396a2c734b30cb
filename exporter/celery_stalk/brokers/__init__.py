"""Queue depth readers, one per broker transport, behind one small protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol


@dataclass(frozen=True)
class QueueDepth:
    messages: int
    consumers: int | None = None  # None: this broker cannot tell


class QueueReader(Protocol):
    def read(self, queues: Iterable[str]) -> dict[str, QueueDepth]:
        """Depth of every named queue in one round trip where the broker allows; raises on failure."""

    def discover(self) -> list[str]:
        """Queue names the broker itself knows about (may be empty)."""

    def close(self) -> None: ...


# Celery's own control and event plumbing: never reported as work queues.
def is_internal_queue(name: str) -> bool:
    return name.startswith("celeryev.") or name.endswith(".pidbox") or ".reply.celery.pidbox" in name


def reader_for(config) -> QueueReader:
    if config.transport == "redis":
        from .redis import RedisQueueReader

        return RedisQueueReader(config.broker_url, config.transport_options,
                                config.queue_read_timeout, config.kombu_ssl)
    if config.transport == "filesystem":
        from .filesystem import FilesystemQueueReader

        return FilesystemQueueReader(config.transport_options)
    from .amqp import AmqpQueueReader

    return AmqpQueueReader(config.broker_url, config.transport_options,
                           config.queue_read_timeout, config.kombu_ssl)
