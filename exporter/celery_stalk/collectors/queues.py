"""Queue depth and consumers from one broker read per scrape, and celery_stalk_broker_up."""

from __future__ import annotations

import logging
from typing import Iterable

from prometheus_client.core import Metric as Family

from ..brokers import QueueReader
from ..model import Model
from .catalog import family, single

log = logging.getLogger(__name__)


class CollectorFailed(Exception):
    """A collector yielded what it could and failed; its success metric says 0."""


class QueueCollector:
    name = "queues"

    def __init__(self, model: Model, reader: QueueReader):
        self.model = model
        self.reader = reader

    def collect(self) -> Iterable[Family]:
        queues = self.model.known_queues()
        try:
            depths = self.reader.read(queues)
        except Exception as exc:
            log.warning("cannot read queue depths from the broker: %s: %s", type(exc).__name__, exc)
            yield single("celery_stalk_broker_up", 0)
            raise CollectorFailed from exc
        messages, consumers = family("celery_queue_messages"), family("celery_queue_consumers")
        for queue, depth in sorted(depths.items()):
            messages.add_metric([queue], depth.messages)
            if depth.consumers is not None:
                consumers.add_metric([queue], depth.consumers)
        yield messages
        if consumers.samples:
            yield consumers
        yield single("celery_stalk_broker_up", 1)
