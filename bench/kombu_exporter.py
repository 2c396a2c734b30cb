"""celery-stalk with its kombu event consumer on Redis too: the baseline the pub/sub
event source is measured against (ingest.py's celery-stalk-kombu)."""

from celery_stalk import app, cli
from celery_stalk.events import EventConsumer


def kombu_consumer(config, model):
    return EventConsumer(model, config.broker_url, config.transport_options)


app.event_source = kombu_consumer

if __name__ == "__main__":
    cli.main()
