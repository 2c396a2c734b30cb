"""Periodic task metrics: each beat entry's runs, misses, duplicates and how late it ran."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric as Family

from ..model import Model
from .catalog import family, single
from .workflows import histogram


class BeatCollector:
    name = "beat"

    def __init__(self, model: Model):
        self.model = model

    def collect(self) -> Iterable[Family]:
        snap = self.model.beat_snapshot()
        info, last, following, last_missed = (
            family("celery_beat_entry_info"),
            family("celery_beat_entry_last_run_timestamp_seconds"),
            family("celery_beat_entry_next_run_timestamp_seconds"),
            family("celery_beat_entry_last_missed_timestamp_seconds"))
        runs, missed, duplicates = (family("celery_beat_entry_runs_total"),
                                    family("celery_beat_entry_missed_runs_total"),
                                    family("celery_beat_entry_duplicate_runs_total"))
        delays = {}
        for entry, view in sorted(snap.beat_entries.items()):
            if view.task:  # not the sum of the entries past the cap
                info.add_metric([entry, view.task, view.schedule], 1)
            if view.last_run is not None:
                last.add_metric([entry], view.last_run)
            if view.next_run is not None:
                following.add_metric([entry], view.next_run)
            if view.last_missed is not None:
                last_missed.add_metric([entry], view.last_missed)
            runs.add_metric([entry], view.runs)
            missed.add_metric([entry], view.missed)
            duplicates.add_metric([entry], view.duplicates)
            delays[entry] = view.delay
        yield from (info, last, following, last_missed, runs, missed, duplicates)
        yield histogram("celery_beat_entry_delay_seconds", delays, snap.beat_delay_buckets)
        if snap.beat_schedule_up is not None:
            yield single("celery_stalk_beat_schedule_up", 1 if snap.beat_schedule_up else 0)
