"""--enable-events: broadcast ``enable_events`` to the workers every N seconds.

A stopgap, as Flower offers: task events turned on this way last until the worker
restarts (its next start reads -E / worker_send_task_events again), and producers'
task-sent events cannot be turned on remotely at all. Sent over the exporter's own
broker URL and transport options (control.py), never a default broker.
"""

from __future__ import annotations

import logging
import threading

from .control import broadcast

log = logging.getLogger("celery_stalk.enable_events")


class EventEnabler:
    def __init__(self, config, interval: float, stop: threading.Event, send=broadcast):
        self.config, self.interval, self.stop, self.send = config, interval, stop, send
        self.sent = 0
        self.failed = 0
        self.thread = threading.Thread(target=self.run, name="celery-stalk-enable-events",
                                       daemon=True)

    def run(self) -> None:
        log.info("broadcasting enable_events to the workers every %g s (--enable-events): a "
                 "stopgap until they start with -E or worker_send_task_events = True",
                 self.interval)
        while not self.stop.is_set():
            self.once()
            self.stop.wait(self.interval)

    def once(self) -> None:
        try:
            self.send(self.config, "enable_events")
        except Exception as exc:  # the broker may be down: counted, tried again next time
            self.failed += 1
            log.warning("could not broadcast enable_events: %s: %s", type(exc).__name__, exc)
        else:
            self.sent += 1
            log.debug("broadcast enable_events")
