"""celery-stalk with the kombu event reader on every broker: the baseline the Redis
and AMQP readers are measured against (ingest.py's celery-stalk-kombu)."""

import socket

from celery_stalk import app, cli, sources
from celery_stalk.sources.kombu import KombuReader


def kombu_source(config, model, state=None):
    state = state or sources.SourceState()
    reader = KombuReader(config.broker_url, config.transport_options, config.kombu_ssl,
                         f"celery-stalk-bench.{socket.gethostname()}", state.invalid)
    return sources.EventSource(reader, model, state, stall_timeout=config.events_stall_timeout)


app.event_source = kombu_source

if __name__ == "__main__":
    cli.main()
