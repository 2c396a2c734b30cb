"""Where events come from: one supervised reader of the broker's event stream."""

from __future__ import annotations

import socket
import uuid

from ..model import Model
from .state import SourceState
from .supervisor import EventSource

__all__ = ["EventSource", "SourceState", "event_source"]


def event_source(config, model: Model, state: SourceState | None = None) -> EventSource:
    """Redis and RabbitMQ get their dedicated readers; other transports the kombu reader."""
    state = state or SourceState()
    if config.transport == "redis":
        from .redis import RedisReader

        reader = RedisReader(config.broker_url, config.transport_options, config.kombu_ssl,
                             state.invalid)
    elif config.transport == "amqp":
        from .amqp import AmqpReader

        reader = AmqpReader(config.broker_url, config.transport_options, config.kombu_ssl,
                            node_id(), state.invalid)
    else:
        from .kombu import KombuReader

        reader = KombuReader(config.broker_url, config.transport_options, config.kombu_ssl,
                             node_id(), state.invalid)
    return EventSource(
        reader, model, state,
        stall_timeout=config.events_stall_timeout,
        wake_workers=lambda: wake_workers(config),
    )


def node_id() -> str:
    """This exporter's name in its event queues' names (celeryev.<node_id>.<suffix>)."""
    return f"celery-stalk.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"


def wake_workers(config) -> None:
    """Broadcast ``heartbeat`` to every worker: each answers with one at once."""
    from ..control import broadcast

    broadcast(config, "heartbeat")
