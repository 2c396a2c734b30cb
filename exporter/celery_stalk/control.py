"""Celery remote control over the exporter's own broker URL and connection settings.

Celery publishes a broadcast through its app's producer pool, not through a
connection handed to ``broadcast()``: a bare ``Celery()`` would publish to its
default broker, amqp://localhost, and reach no worker. So each broadcast gets an
app configured with the exporter's --broker-url, transport options and TLS options,
closed (its connections released) once sent, and bounded in time on a broker that
is down or does not answer.
"""

from __future__ import annotations

from celery import Celery

from .sources.kombu import CONNECT_TIMEOUT


def control_app(config) -> Celery:
    app = Celery("celery-stalk-control", broker=config.broker_url, set_as_current=False)
    options = dict(config.transport_options)
    if config.transport == "redis":  # a broker that accepts but never answers must not hang us
        options = {"socket_timeout": CONNECT_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
                   **options}
    # One attempt: the next broadcast is the retry.
    options.setdefault("max_retries", 1)
    app.conf.update(
        broker_transport_options=options,
        broker_use_ssl=config.kombu_ssl or None,
        broker_connection_timeout=CONNECT_TIMEOUT,
        broker_connection_retry=False,
        broker_connection_max_retries=1,
    )
    return app


def broadcast(config, command: str, reply: bool = False, timeout: float = 1.0):
    """Send ``command`` to every worker; with ``reply``, their answers within ``timeout``."""
    app = control_app(config)
    try:
        return app.control.broadcast(command, reply=reply, timeout=timeout)
    finally:
        app.close()
