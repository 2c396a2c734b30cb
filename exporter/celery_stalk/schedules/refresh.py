"""Reading a schedule source again and again, off the event and scrape paths."""

from __future__ import annotations

import logging
import threading
import time

from ..model import Model

log = logging.getLogger(__name__)


class ScheduleRefresher:
    """Reads the schedule every ``interval`` seconds into the model; a failed read
    is logged and reported (celery_stalk_beat_schedule_up 0), the last schedule kept."""

    def __init__(self, reader, model: Model, interval: float, stop: threading.Event):
        self.reader, self.model, self.interval, self.stop = reader, model, interval, stop
        self.thread = threading.Thread(target=self.run, name="celery-stalk-schedule", daemon=True)
        self._failing = False

    def run(self) -> None:
        while not self.stop.is_set():
            self.refresh()
            self.stop.wait(self.interval)

    def refresh(self) -> None:
        try:
            entries = self.reader.read()
        except Exception as exc:
            if not self._failing:
                log.warning("cannot read the beat schedule from RedBeat (%s: %s); keeping the "
                            "last one read", type(exc).__name__, exc)
            self._failing = True
            self.model.beat_schedule_read(False)
            return
        if self._failing:
            log.info("reading the beat schedule from RedBeat again")
        self._failing = False
        for name in self.model.set_beat_schedule(entries, time.time()):
            log.warning("beat entry %r cannot be a label value: not followed", name)
        self.model.beat_schedule_read(True)
