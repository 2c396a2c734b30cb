"""Beat schedule runs, replayed with an injected clock and Celery's own schedule classes."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab
from celery_stalk.model import OTHER, BeatEntry, Model, ModelSettings
from celery_stalk.schedules import RedBeatReader, entries_from_app

from tests import events as ev

GRACE = 5.0
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC, a whole minute


def app_with(schedule: dict, tz: str = "UTC") -> Celery:
    app = Celery("beat-test", set_as_current=False)
    app.conf.timezone = tz
    app.conf.beat_schedule = schedule
    return app


def model_for(app: Celery, now: float = T0, **settings) -> Model:
    m = Model(ModelSettings(beat_grace=GRACE, **settings))
    assert m.set_beat_schedule(entries_from_app(app), now) == []
    return m


def beat_sent(task_id: str, name: str, at: float, args="()", kwargs="{}", retries=0):
    """What beat's producer emits for a run: a task-sent with the entry's argument reprs."""
    return ev.sent(task_id, name, at=at, args=args, kwargs=kwargs, retries=retries)


def entry(m: Model, name: str):
    return m.beat_snapshot().beat_entries[name]


def run_for(m: Model, until: float, runs, step: float = 1.0) -> None:
    """Tick every second up to ``until``, applying each run when the clock reaches it."""
    runs = sorted(runs, key=lambda e: e["timestamp"])
    now = m_now = T0
    while now <= until:
        while runs and runs[0]["timestamp"] <= now:
            m.apply(runs.pop(0), now)
        m.tick(now)
        m_now = now
        now += step
    assert m_now <= until


def test_interval_runs_on_time_count_and_move_the_next_due_time():
    m = model_for(app_with({"add": {"task": "app.add", "schedule": 10.0, "args": (2, 3)}}))
    runs = [beat_sent(f"r{i}", "app.add", T0 + 3 + 10 * i, args="[2, 3]") for i in range(6)]
    run_for(m, T0 + 58, runs)
    view = entry(m, "add")
    assert (view.runs, view.missed, view.duplicates) == (6, 0, 0)
    assert view.last_run == T0 + 53 and view.next_run == T0 + 63
    assert sum(view.delay.counts) == 5  # the first run only anchors the schedule
    assert view.delay.total == pytest.approx(0.0)
    assert (view.task, view.schedule) == ("app.add", "every 10 s")


def test_beat_stopped_counts_one_missed_run_per_due_time_after_the_grace():
    m = model_for(app_with({"tick": {"task": "app.tick", "schedule": 10.0}}))
    run_for(m, T0 + 20, [beat_sent("r0", "app.tick", T0 + 2), beat_sent("r1", "app.tick", T0 + 12)])
    # beat dies after its run at T0 + 12: due at 22, 32, 42
    m.tick(T0 + 22 + GRACE)
    assert entry(m, "tick").missed == 0  # not before the grace has passed
    m.tick(T0 + 22 + GRACE + 0.5)
    assert entry(m, "tick").missed == 1
    m.tick(T0 + 42 + GRACE + 0.5)
    view = entry(m, "tick")
    assert view.missed == 3 and view.next_run == T0 + 52
    # beat restarts at T0 + 50 and catches up at once: a late run, not a duplicate
    m.apply(beat_sent("r2", "app.tick", T0 + 50), T0 + 50)
    view = entry(m, "tick")
    assert (view.runs, view.duplicates) == (3, 0)
    assert view.delay.total == pytest.approx(8.0)  # sent 8 s after the missed due time 42
    assert view.next_run == T0 + 60


def test_two_beats_count_duplicates_and_every_run():
    m = model_for(app_with({"tick": {"task": "app.tick", "schedule": 10.0}}))
    first = [beat_sent(f"a{i}", "app.tick", T0 + 1 + 10 * i) for i in range(5)]
    second = [beat_sent(f"b{i}", "app.tick", T0 + 4 + 10 * i) for i in range(5)]
    run_for(m, T0 + 50, first + second)
    view = entry(m, "tick")
    assert view.runs == 10 and view.duplicates == 5  # every run of the second beat
    assert view.missed == 0


def test_two_beats_sending_at_the_same_moment_are_duplicates_too():
    m = model_for(app_with({"cron": {"task": "app.report", "schedule": crontab(minute="*")}}))
    runs = [beat_sent(f"{b}{i}", "app.report", T0 + 60 * (i + 1) + 0.01 * k)
            for i in range(3) for k, b in enumerate("ab")]
    run_for(m, T0 + 200, runs)
    view = entry(m, "cron")
    assert (view.runs, view.duplicates, view.missed) == (6, 3, 0)


def test_crontab_in_the_apps_timezone_is_due_at_its_local_time():
    app = app_with({"nightly": {"task": "app.nightly", "schedule": crontab(minute=30, hour=4)}},
                   tz="Europe/Berlin")
    m = model_for(app)
    due = entry(m, "nightly").next_run
    local = datetime.fromtimestamp(due, ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (4, 30) and due > T0
    assert due - T0 < 86400
    # run on time (the due minute, beat a few ms late), then miss the next night
    m.apply(beat_sent("n1", "app.nightly", due + 0.004), due + 0.01)
    view = entry(m, "nightly")
    assert view.delay.total == pytest.approx(0.004, abs=1e-6)
    assert view.next_run == due + 86400
    m.tick(due + 86400 + GRACE + 1)
    assert entry(m, "nightly").missed == 1
    assert entry(m, "nightly").next_run == due + 2 * 86400


def test_a_run_a_few_milliseconds_before_its_due_time_is_on_time_not_a_duplicate():
    m = model_for(app_with({"tick": {"task": "app.tick", "schedule": 2.0}}))
    # beat computes the next due time from when it reserved the run, just before it sent it
    runs = [beat_sent(f"r{i}", "app.tick", T0 + 1 + 2 * i - 0.003 * i) for i in range(20)]
    run_for(m, T0 + 45, runs, step=0.5)
    view = entry(m, "tick")
    assert (view.runs, view.duplicates, view.missed) == (20, 0, 0)


def test_runs_are_matched_by_task_and_arguments_and_counted_once():
    m = model_for(app_with({
        "a": {"task": "app.sync", "schedule": 10.0, "args": ("eu",)},
        "b": {"task": "app.sync", "schedule": 10.0, "args": ("us",)},
    }))
    m.apply(beat_sent("r1", "app.sync", T0 + 1, args="['eu']"), T0 + 1)
    m.apply(ev.received("r1", "app.sync", at=T0 + 1.1, args="['eu']"), T0 + 1)  # same run
    m.apply(beat_sent("r2", "app.sync", T0 + 2, args="('other',)"), T0 + 2)  # not beat's
    m.apply(ev.received("r3", "app.sync", at=T0 + 3, args="['us']"), T0 + 3)  # no task-sent
    m.apply(beat_sent("r1", "app.sync", T0 + 5, args="['eu']", retries=1), T0 + 5)  # a retry
    assert (entry(m, "a").runs, entry(m, "b").runs) == (1, 1)


def test_two_entries_with_the_same_task_and_arguments_share_runs_by_due_time():
    m = model_for(app_with({
        "often": {"task": "app.ping", "schedule": 10.0},
        "rarely": {"task": "app.ping", "schedule": 100.0},
    }))
    run_for(m, T0 + 25, [beat_sent("p1", "app.ping", T0 + 5), beat_sent("p2", "app.ping", T0 + 15)])
    # indistinguishable: each run goes to the entry due first
    assert entry(m, "often").runs + entry(m, "rarely").runs == 2


def test_a_schedule_update_keeps_counts_drops_removed_entries_and_caps_labels():
    app = app_with({f"e{i}": {"task": f"app.t{i}", "schedule": 10.0} for i in range(3)})
    m = model_for(app, max_beat_entries=2)
    assert set(m.beat_snapshot().beat_entries) == {"e0", "e1", OTHER}
    m.apply(beat_sent("x", "app.t2", T0 + 1), T0 + 1)
    m.apply(beat_sent("y", "app.t0", T0 + 1), T0 + 1)
    assert m.beat_snapshot().beat_entries[OTHER].runs == 1
    app.conf.beat_schedule = {"e0": {"task": "app.t0", "schedule": 10.0},
                              "e1": {"task": "app.t1", "schedule": 30.0}}
    m.set_beat_schedule(entries_from_app(app), T0 + 2)
    snap = m.beat_snapshot().beat_entries
    assert snap["e0"].runs == 1 and snap["e1"].schedule == "every 30 s"
    assert snap[OTHER].runs == 1  # e2's run stays counted under other


def test_a_schedule_function_that_fails_gives_no_due_time_and_no_false_misses():
    def broken(_):
        raise ValueError("no sunrise today")

    m = Model(ModelSettings(beat_grace=GRACE))
    m.set_beat_schedule([BeatEntry("sun", "app.sun", schedule="solar", next_due=broken)], T0)
    m.tick(T0 + 10_000)
    view = entry(m, "sun")
    assert view.next_run is None and view.missed == 0


def test_redbeat_entries_decode_with_celerys_classes_and_the_zone_beat_wrote():
    reader = RedBeatReader("redis://127.0.0.1:1/0", "redbeat:")  # no connection is made here
    last = {"__type__": "datetime", "year": 2027, "month": 1, "day": 15, "hour": 4, "minute": 30,
            "second": 0, "microsecond": 0, "timezone": "Europe/Berlin"}
    definition = {"name": "nightly", "task": "app.nightly", "args": [1, "a"], "kwargs": {"k": 2},
                  "options": {}, "enabled": True,
                  "schedule": {"__type__": "crontab", "minute": "30", "hour": "4",
                               "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}}
    entry_ = reader.entry("redbeat:nightly", json.loads(json.dumps(definition)),
                          {"last_run_at": last}, score=-1)
    assert (entry_.name, entry_.task, entry_.args, entry_.kwargs) == (
        "nightly", "app.nightly", "[1, 'a']", "{'k': 2}")
    assert entry_.due is None and entry_.schedule == "crontab 30 4 * * *"
    ran = datetime(2027, 1, 15, 4, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    assert entry_.last_run == ran
    assert entry_.next_due(ran) == ran + 86400
    interval = reader.entry("redbeat:i", {**definition, "schedule": {
        "__type__": "interval", "every": 5.0, "relative": False}}, {}, score=T0)
    assert interval.due == T0 and interval.next_due(T0) == T0 + 5
    assert reader.entry("redbeat:off", {**definition, "enabled": False}, {}, T0) is None
    assert datetime.fromtimestamp(T0, timezone.utc).minute == 0


def test_no_run_is_missed_while_the_event_stream_is_down_and_entries_start_over_after():
    m = model_for(app_with({"tick": {"task": "app.tick", "schedule": 10.0}}))
    m.link_up(T0)
    run_for(m, T0 + 20, [beat_sent("r0", "app.tick", T0 + 2), beat_sent("r1", "app.tick", T0 + 12)])
    m.link_down()
    m.tick(T0 + 100)  # beat may well have sent its runs: they could not be seen
    assert entry(m, "tick").missed == 0
    m.link_up(T0 + 100)
    m.tick(T0 + 100)
    view = entry(m, "tick")
    assert view.missed == 0 and view.next_run == T0 + 110
    m.apply(beat_sent("r2", "app.tick", T0 + 104), T0 + 104)  # beat's own phase: no duplicate
    assert (entry(m, "tick").duplicates, entry(m, "tick").runs) == (0, 3)
    m.tick(T0 + 114 + GRACE + 1)
    assert entry(m, "tick").missed == 1


def test_redbeat_flags_take_the_broker_url_and_name_the_fix_when_they_cannot():
    from celery_stalk.config import Config, ConfigError

    config = Config.parse(broker_url="redis://:s3cret@redis:6379/0", redbeat_key_prefix="redbeat:")
    assert config.redbeat_url == "redis://:s3cret@redis:6379/0"
    assert "s3cret" in config.secrets
    other = Config.parse(broker_url="amqp://guest:guest@rabbit//", redbeat_key_prefix="rb:",
                         redbeat_url="rediss://:pw2@cache:6380/1")
    assert other.redbeat_url == "rediss://:pw2@cache:6380/1" and "pw2" in other.secrets
    for flags, fix in (
        ({"broker_url": "amqp://rabbit//", "redbeat_key_prefix": "redbeat:"}, "--redbeat-url"),
        ({"broker_url": "redis://r/0", "redbeat_url": "redis://r/1"}, "--redbeat-key-prefix"),
        ({"broker_url": "redis://r/0", "redbeat_key_prefix": "x", "redbeat_url": "http://r"},
         "not a Redis URL"),
    ):
        with pytest.raises(ConfigError) as failed:
            Config.parse(**flags)
        assert len(failed.value.problems) == 1 and fix in failed.value.problems[0]


def test_an_app_running_redbeat_is_read_from_redbeats_keys():
    from celery_stalk.schedules import redbeat_from_app

    app = app_with({"a": {"task": "app.a", "schedule": 5.0}})
    assert redbeat_from_app(app) is None
    app.conf.beat_scheduler = "redbeat.RedBeatScheduler"
    app.conf.broker_url = "redis://broker:6379/0"
    assert redbeat_from_app(app) == ("redbeat:", "redis://broker:6379/0")
    app.conf.redbeat_key_prefix = "sched:"
    app.conf.redbeat_redis_url = "redis://beat:6379/2"
    assert redbeat_from_app(app) == ("sched:", "redis://beat:6379/2")


def test_an_entry_without_a_schedule_class_follows_the_due_times_the_source_reads():
    """RedBeat's rrule entries: only RedBeat's score says when they are due next."""
    m = Model(ModelSettings(beat_grace=GRACE))

    def read(due, last_run=None):
        m.set_beat_schedule([BeatEntry("rr", "app.rr", schedule="rrule", due=due,
                                       last_run=last_run)], T0)

    read(T0 + 60)
    m.apply(beat_sent("r1", "app.rr", T0 + 60.2), T0 + 60.2)
    assert entry(m, "rr").next_run is None  # not known until the source is read again
    read(T0 + 60)  # read before RedBeat moved its score: nothing new
    assert entry(m, "rr").next_run is None
    read(T0 + 3600, last_run=T0 + 60.2)
    assert entry(m, "rr").next_run == T0 + 3600
    m.tick(T0 + 3600 + GRACE + 1)
    assert entry(m, "rr").missed == 1
    read(T0 + 3600)  # beat is dead: its score stays put, and the miss is not counted again
    m.tick(T0 + 3700)
    assert (entry(m, "rr").missed, entry(m, "rr").next_run) == (1, None)
