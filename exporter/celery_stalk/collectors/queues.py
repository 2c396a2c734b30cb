"""Queue depth, consumers and the oldest message's age from one broker read per scrape
(or the RabbitMQ management poll's last result), and celery_stalk_broker_up."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import Metric as Family

from ..brokers import QueueReader
from ..exposition import SeriesGauge
from ..model import Model
from .catalog import CATALOG, labelled, single

log = logging.getLogger(__name__)


# QueueDepth field -> the gauge it is reported as, one series per queue.
QUEUE_GAUGES = {
    "messages": "celery_queue_messages",
    "consumers": "celery_queue_consumers",
    "oldest_age": "celery_queue_oldest_message_age_seconds",
    "unacked": "celery_queue_messages_unacked",
    "consumer_utilisation": "celery_queue_consumer_utilisation",
}


class CollectorFailed(Exception):
    """A collector yielded what it could and failed; its success metric says 0."""


class QueueCollector:
    name = "queues"

    def __init__(self, model: Model, reader: QueueReader):
        self.model = model
        self.reader = reader

    def collect(self) -> Iterable[Family]:
        yield from self._health()
        queues = self.model.known_queues()
        try:
            depths = self.reader.read(queues)
        except Exception as exc:
            log.warning("cannot read queue depths from the broker: %s: %s", type(exc).__name__, exc)
            yield single("celery_stalk_broker_up", 0)
            raise CollectorFailed from exc
        values: dict[str, dict] = {name: {} for name in QUEUE_GAUGES.values()}
        for queue, depth in depths.items():
            key = (queue,)
            for field, name in QUEUE_GAUGES.items():
                value = getattr(depth, field)
                if value is not None:  # the broker cannot tell, or the queue is empty
                    values[name][key] = value
        for name, series in values.items():
            if series or name == "celery_queue_messages":
                m = CATALOG[name]
                yield SeriesGauge(name, m.help, m.labels, series)
        yield single("celery_stalk_broker_up", 1)

    def _health(self) -> Iterable[Family]:
        """The reader's own counters, kept whether or not this read succeeds."""
        invalid = getattr(self.reader, "invalid", None)
        if invalid is not None:
            yield labelled("celery_stalk_queue_heads_invalid_total", invalid)
        status = getattr(self.reader, "status", None)
        if status is not None:
            failures, last_success = status()
            yield single("celery_stalk_rabbitmq_management_polls_failed_total", failures)
            if last_success is not None:
                yield single("celery_stalk_rabbitmq_management_last_success_timestamp_seconds",
                             last_success)
