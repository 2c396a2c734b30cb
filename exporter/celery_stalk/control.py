"""Celery remote control over the exporter's own broker connection settings.

A bare ``Celery()`` app talks to amqp://localhost; every broadcast here goes over the
exporter's --broker-url with its transport and TLS options instead, and never waits
on a broker that accepts but does not answer.
"""

from __future__ import annotations

from celery import Celery
from kombu import Connection

from .sources.kombu import CONNECT_TIMEOUT


def connection(config) -> Connection:
    options = config.transport_options
    if config.transport == "redis":  # a broker that accepts but never answers must not hang us
        options = {"socket_timeout": CONNECT_TIMEOUT, **options}
    return Connection(config.broker_url, transport_options=options, ssl=config.kombu_ssl,
                      connect_timeout=CONNECT_TIMEOUT)


def broadcast(config, command: str, reply: bool = False, timeout: float = 1.0):
    """Send ``command`` to every worker; with ``reply``, their answers within ``timeout``."""
    control = Celery(set_as_current=False)
    with connection(config) as conn:
        return control.control.broadcast(command, connection=conn, reply=reply,
                                         timeout=timeout)
