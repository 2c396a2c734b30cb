"""Task events on/off, processed tasks, clock offset and task-sent events missing:
the model's verdicts from replayed events with an injected clock (no sleep)."""

from __future__ import annotations

import logging
import threading

from celery_stalk.model import Model
from celery_stalk.problems import ProblemWatch, find_problems

from tests import events as ev

A, B = "a@host", "b@host"


def beat(hostname, at, processed=0, active=0, skew=0.0, **fields):
    """A heartbeat received at ``at`` (exporter's clock), stamped by a clock ``skew`` s off."""
    event = ev.heartbeat(hostname, active=active, processed=processed, **fields)
    event["timestamp"] = at + skew
    return event


class Fleet:
    """A model fed one second at a time, ticking as the event source does."""

    def __init__(self, **kwargs):
        self.model = Model(**kwargs)
        self.now = 1000.0

    def at(self, t: float, *events) -> Fleet:
        self.now = 1000.0 + t
        self.model.apply_many(list(events), self.now)
        self.model.tick(self.now)
        return self

    def view(self, worker):
        return self.model.worker_snapshot(self.now).workers[worker].diagnosis


def task_run(task_id, hostname, t):
    return [ev.sent(task_id, "app.add", "work", at=t), ev.received(task_id, "app.add", at=t,
                                                                   hostname=hostname),
            ev.started(task_id, at=t, hostname=hostname)]


def test_a_worker_processing_tasks_without_task_events_is_off_within_a_minute():
    fleet = Fleet().at(0, beat(A, 0))
    assert fleet.view(A).task_events is None  # idle: nothing to decide on
    for t in range(2, 40, 2):  # processes 1 task every 2 s, sends no task event
        fleet.at(t, beat(A, 1000 + t, processed=t // 2))
        if t < 32:
            assert fleet.view(A).task_events is None, t
    assert fleet.view(A).task_events is False  # 30 s after its first processed task
    assert fleet.view(A).processed_total == 19
    [problem] = find_problems(fleet.model, fleet.now)
    assert problem.key == ("task_events_off", A)
    assert "-E" in problem.fix and "worker_send_task_events = True" in problem.fix
    assert "CELERY_WORKER_SEND_TASK_EVENTS" in problem.fix


def test_a_worker_with_task_events_is_on_whichever_comes_first_event_or_heartbeat():
    fleet = Fleet().at(0, beat(A, 1000), beat(B, 1000))
    # A: its task events arrive before the heartbeat that shows the task; B: after it
    fleet.at(1, *task_run("t1", A, 1001), beat(A, 1001, processed=1, active=1))
    fleet.at(2, beat(B, 1002, processed=1, active=1))
    fleet.at(3, *task_run("t2", B, 1003))
    assert fleet.view(A).task_events is True
    assert fleet.view(B).task_events is True
    for t in range(4, 120, 2):  # both run their one task for two minutes
        fleet.at(t, beat(A, 1000 + t, processed=1, active=1), beat(B, 1000 + t, processed=1,
                                                                   active=1))
    assert fleet.view(A).task_events is True
    assert fleet.view(B).task_events is True
    assert find_problems(fleet.model, fleet.now) == []


def test_a_long_task_already_running_when_the_exporter_starts_proves_nothing():
    fleet = Fleet()
    for t in range(0, 300, 2):
        fleet.at(t, beat(A, 1000 + t, processed=7, active=1))
    assert fleet.view(A).task_events is None
    assert fleet.view(A).processed_total == 7


def test_events_turned_off_at_runtime_then_on_again():
    fleet = Fleet().at(0, beat(A, 1000))
    fleet.at(1, *task_run("t1", A, 1001), beat(A, 1001, processed=1))
    assert fleet.view(A).task_events is True
    # disable_events: tasks go on, their events stop
    for t in range(10, 62, 2):  # work within 30 s of the last task event proves nothing
        fleet.at(t, beat(A, 1000 + t, processed=t))
    assert fleet.view(A).task_events is True
    for t in range(62, 80, 2):
        fleet.at(t, beat(A, 1000 + t, processed=t))
    assert fleet.view(A).task_events is False
    # enable_events: the next task's events turn it back on
    fleet.at(82, *task_run("t2", A, 1082), beat(A, 1082, processed=83))
    assert fleet.view(A).task_events is True


def test_processed_total_survives_a_worker_restart():
    fleet = Fleet().at(0, beat(A, 1000, processed=40))
    fleet.at(2, beat(A, 1002, processed=45))
    fleet.at(4, ev.offline(A), ev.online(A))  # restarted: counts from 0 again
    fleet.at(6, beat(A, 1006, processed=3))
    assert fleet.view(A).processed_total == 48


def test_clock_offset_is_the_least_delayed_heartbeat_and_names_the_skew():
    fleet = Fleet()
    # a clock 5 s behind; heartbeats delayed 0.1 to 1.5 s on their way
    for i, delay in enumerate([1.5, 0.1, 0.9, 1.2]):
        t = 2.0 * i
        fleet.at(t + delay, beat(A, 1000 + t, skew=-5.0), beat(B, 1000 + t + delay))
    assert round(fleet.view(A).clock_offset, 3) == -5.1
    assert fleet.view(B).clock_offset == 0.0
    [problem] = find_problems(fleet.model, fleet.now)
    assert problem.key == ("clock_skew", A)
    assert "5.1 s behind" in problem.what and "chrony" in problem.fix


def test_tasks_without_task_sent_are_counted_and_named_with_their_queue():
    fleet = Fleet(routes=(("billing.*", "billing"),)).at(0, beat(A, 1000))
    # app.add: sent with task-sent; billing.charge: its producer sends none
    fleet.at(1, *ev.lifecycle("t1", "app.add", "work", t0=1001))
    fleet.at(2, ev.received("t2", "billing.charge", hostname=A), ev.started("t2", hostname=A),
             ev.succeeded("t2", hostname=A))
    snap = fleet.model.task_snapshot()
    assert snap.counters["sent-missing"] == {("billing.charge", "billing"): 1}
    assert fleet.model.unsent_tasks() == {"billing.charge": ["billing"]}
    [problem] = find_problems(fleet.model, fleet.now)
    assert problem.key == ("task_sent_missing", "")
    assert "billing.charge (queue billing)" in problem.what
    assert "task_send_sent_event = True" in problem.fix


def test_a_held_task_whose_task_sent_never_comes_counts_as_missing_and_one_that_comes_late_not():
    fleet = Fleet().at(0, beat(A, 1000))
    fleet.at(1, ev.received("t1", "app.late", hostname=A), ev.started("t1", hostname=A),
             ev.succeeded("t1", hostname=A))
    fleet.at(2, ev.sent("t1", "app.late", "work"))  # late, within the hold
    fleet.at(3, ev.received("t2", "app.never", hostname=A), ev.succeeded("t2", hostname=A))
    fleet.at(20)  # holds expired
    assert fleet.model.task_snapshot().counters["sent-missing"] == {("app.never", "unknown"): 1}


def test_with_task_metrics_from_the_workers_no_verdict_on_task_events():
    fleet = Fleet(count_task_events=False).at(0, beat(A, 1000))
    for t in range(2, 60, 2):
        fleet.at(t, beat(A, 1000 + t, processed=t))
    assert fleet.view(A).task_events is None
    assert find_problems(fleet.model, fleet.now) == []


def test_each_problem_is_logged_once_when_first_seen_and_again_if_it_comes_back(caplog):
    fleet = Fleet().at(0, beat(A, 1000, skew=-5.0))
    watch = ProblemWatch(fleet.model, threading.Event(), clock=lambda: fleet.now)
    with caplog.at_level(logging.WARNING, logger="celery_stalk.problems"):
        for t in range(2, 40, 2):  # a 5 s skew from the start; task events off from 32 s
            fleet.at(t, beat(A, 1000 + t, processed=t // 2, skew=-5.0))
            watch.check()
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2, lines
        assert lines[0].startswith(f"worker {A}'s clock is 5.0 s behind this exporter's")
        assert lines[1] == (f"worker {A} processes tasks but sends no task events: start the "
                            "worker with -E or set worker_send_task_events = True (Django, "
                            "settings namespace CELERY: CELERY_WORKER_SEND_TASK_EVENTS = True); "
                            "until its next restart: celery -A proj control enable_events")
        assert [p.key for p in watch.current] == [("task_events_off", A), ("clock_skew", A)]
        # its task events turned on: that problem is gone, and logged again if it comes back
        fleet.at(40, *task_run("t1", A, 1040), beat(A, 1040, processed=20, skew=-5.0))
        watch.check()
        assert [p.key for p in watch.current] == [("clock_skew", A)]
        for t in range(72, 110, 2):
            fleet.at(t, beat(A, 1000 + t, processed=t, skew=-5.0))
            watch.check()
        assert len(caplog.records) == 3
        assert "sends no task events" in caplog.records[2].getMessage()


def test_processed_total_is_unknown_until_a_heartbeat_says_how_many():
    """A worker first heard of by an event without a processed count has no
    celery_worker_processed_total yet: a 0 then its real count would read as a counter reset
    followed by that many new tasks (a restarted exporter paged CeleryEventsStalled so)."""
    online = ev.online(A)
    online.pop("processed", None)
    fleet = Fleet().at(0, online)
    assert fleet.view(A).processed_total is None
    fleet.at(2, beat(A, 1002, processed=113))
    assert fleet.view(A).processed_total == 113
