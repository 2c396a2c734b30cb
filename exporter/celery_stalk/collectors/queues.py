"""Queue depth, consumers and the oldest message's age from one broker read per scrape
(or the RabbitMQ management poll's last result), and celery_stalk_broker_up."""

from __future__ import annotations

import logging
from typing import Iterable

from prometheus_client.core import Metric as Family

from ..brokers import QueueReader
from ..model import Model
from .catalog import family, labelled, single

log = logging.getLogger(__name__)


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
        names = ("celery_queue_messages", "celery_queue_consumers",
                 "celery_queue_oldest_message_age_seconds", "celery_queue_messages_unacked",
                 "celery_queue_consumer_utilisation")
        fields = ("messages", "consumers", "oldest_age", "unacked", "consumer_utilisation")
        families = [family(name) for name in names]
        for queue, depth in sorted(depths.items()):
            for fam, field in zip(families, fields):
                value = getattr(depth, field)
                if value is not None:  # the broker cannot tell, or the queue is empty
                    fam.add_metric([queue], value)
        yield families[0]
        yield from (fam for fam in families[1:] if fam.samples)
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
