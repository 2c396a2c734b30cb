"""Task stages replayed with an injected clock: pending age, longest runs, orphans, reserved."""

from __future__ import annotations

import pytest
from celery_stalk.model import Model, ModelSettings
from celery_stalk.model.stages import PENDING, RESERVED, RUNNING
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import events as ev

W1, W2 = "w1@host-a", "w2@host-b"


def model(**settings) -> Model:
    m = Model(ModelSettings(**{"worker_timeout": 10, **settings}))
    m.link_up(0.0)
    return m


# -- oldest pending ------------------------------------------------------------------


def test_oldest_pending_is_the_first_sent_not_received_per_queue_by_receive_time():
    m = model()
    m.apply(ev.sent("a", "app.a", "work", at=5.0), 100.0)  # producer clock ignored
    m.apply(ev.sent("b", "app.a", "work"), 110.0)
    m.apply(ev.sent("c", "app.c", "other"), 130.0)
    snap = m.stage_snapshot(150.0)
    assert snap.oldest_pending == {"work": 50.0, "other": 20.0}
    m.apply(ev.received("a", "app.a", hostname=W1), 151.0)
    assert m.stage_snapshot(160.0).oldest_pending == {"work": 50.0, "other": 30.0}
    m.apply(ev.received("b", "app.a", hostname=W1), 161.0)
    m.apply(ev.received("c", "app.c", hostname=W1), 161.0)
    assert m.stage_snapshot(170.0).oldest_pending == {}  # none pending: nothing emitted


def test_pending_grows_with_the_clock_while_no_worker_receives():
    m = model()
    m.apply(ev.sent("a", "app.a", "idle"), 100.0)
    ages = [m.stage_snapshot(t).oldest_pending["idle"] for t in (100.0, 130.0, 400.0)]
    assert ages == [0.0, 30.0, 300.0]


def test_late_task_sent_does_not_put_a_received_task_back_in_its_queue():
    m = model()
    m.apply(ev.received("a", "app.a", hostname=W1), 100.0)  # the worker's event came first
    m.apply(ev.sent("a", "app.a", "work"), 100.5)
    snap = m.stage_snapshot(200.0)
    assert snap.oldest_pending == {}
    assert snap.reserved == {}  # W1 never heartbeat: not a worker of the registry
    m.apply(ev.heartbeat(W1), 200.0)
    assert m.stage_snapshot(200.0).reserved == {W1: 1}


def test_retry_sends_the_task_back_to_its_queue_until_received_again():
    m = model()
    m.apply_many([ev.sent("a", "app.a", "work"), ev.received("a", "app.a", hostname=W1),
                  ev.started("a", hostname=W1)], 100.0)
    m.apply(ev.sent("a", "app.a", "work", retries=1), 110.0)  # the retry's own message
    m.apply(ev.retried("a", hostname=W1), 110.1)
    snap = m.stage_snapshot(120.0)
    assert snap.oldest_pending == {"work": 10.0}
    assert snap.oldest_running == {}
    m.apply(ev.received("a", "app.a", hostname=W1, retries=1), 125.0)
    assert m.stage_snapshot(130.0).oldest_pending == {}


def test_retried_before_its_task_sent_stops_the_run_then_the_send_makes_it_pending():
    m = model()
    m.apply_many([ev.sent("a", "app.a", "work"), ev.received("a", "app.a", hostname=W1),
                  ev.started("a", hostname=W1)], 100.0)
    m.apply(ev.retried("a", hostname=W1), 110.0)
    assert m.stage_snapshot(111.0).oldest_running == {}
    m.apply(ev.sent("a", "app.a", "work", retries=1), 112.0)
    assert m.stage_snapshot(113.0).oldest_pending == {"work": 1.0}


def test_requeued_rejection_makes_the_task_pending_again():
    m = model()
    m.apply_many([ev.sent("a", "app.a", "work"), ev.received("a", "app.a", hostname=W1)], 100.0)
    m.apply(ev.rejected("a", requeue=True, hostname=W1), 105.0)
    assert m.stage_snapshot(110.0).oldest_pending == {"work": 5.0}


# -- oldest running ----------------------------------------------------------------------


def test_oldest_running_is_the_longest_unfinished_run_per_task_and_queue():
    m = model()
    for task_id, at in (("a", 100.0), ("b", 150.0)):
        m.apply_many([ev.sent(task_id, "app.slow", "work"),
                      ev.received(task_id, "app.slow", hostname=W1)], at)
        m.apply(ev.started(task_id, hostname=W1), at + 1)
    m.apply_many([ev.sent("c", "app.fast", "work"), ev.received("c", "app.fast", hostname=W2),
                  ev.started("c", hostname=W2)], 190.0)
    snap = m.stage_snapshot(200.0)
    assert snap.oldest_running == {("app.slow", "work"): 99.0, ("app.fast", "work"): 10.0}
    m.apply(ev.succeeded("a", hostname=W1), 201.0)  # the oldest ends: the next is the oldest
    assert m.stage_snapshot(210.0).oldest_running == {("app.slow", "work"): 59.0,
                                                      ("app.fast", "work"): 20.0}
    for task_id, end in (("b", ev.failed), ("c", ev.revoked)):
        m.apply(end(task_id, hostname=W1), 211.0)
    assert m.stage_snapshot(220.0).oldest_running == {}


def test_running_task_whose_queue_is_learnt_later_is_reported_under_it():
    m = model()
    m.apply_many([ev.received("a", "app.a", hostname=W1), ev.started("a", hostname=W1)], 100.0)
    m.apply(ev.sent("a", "app.a", "late"), 100.2)  # the task-sent came after the start
    snap = m.stage_snapshot(130.0)
    assert snap.oldest_running == {("app.a", "late"): 30.0}
    assert snap.oldest_pending == {}


# -- reserved ------------------------------------------------------------------------------


def test_reserved_counts_received_and_not_started_per_worker():
    m = model()
    m.apply_many([ev.heartbeat(W1), ev.heartbeat(W2)], 100.0)
    for task_id in ("a", "b", "c"):
        m.apply_many([ev.sent(task_id, "app.a", "work"),
                      ev.received(task_id, "app.a", hostname=W1)], 100.0)
    m.apply(ev.started("a", hostname=W1), 101.0)
    assert m.stage_snapshot(102.0).reserved == {W1: 2, W2: 0}
    m.apply(ev.started("b", hostname=W1), 103.0)
    m.apply(ev.revoked("c", hostname=W1), 103.0)
    assert m.stage_snapshot(104.0).reserved == {W1: 0, W2: 0}


def test_redelivery_to_another_worker_moves_the_task():
    m = model()
    m.apply_many([ev.heartbeat(W1), ev.heartbeat(W2)], 100.0)
    m.apply_many([ev.sent("a", "app.a", "work"), ev.received("a", "app.a", hostname=W1)], 100.0)
    m.apply(ev.received("a", "app.a", hostname=W2), 105.0)
    assert m.stage_snapshot(106.0).reserved == {W1: 0, W2: 1}


# -- orphans -------------------------------------------------------------------------------


def test_lost_worker_orphans_what_it_ran_and_reserved_and_they_leave_their_stage():
    m = model()
    m.apply_many([ev.heartbeat(W1), ev.heartbeat(W2)], 100.0)
    m.apply_many([ev.sent("a", "app.slow", "work"), ev.received("a", "app.slow", hostname=W1),
                  ev.started("a", hostname=W1),
                  ev.sent("b", "app.slow", "work"), ev.received("b", "app.slow", hostname=W1),
                  ev.sent("c", "app.other", "work"), ev.received("c", "app.other", hostname=W2),
                  ev.started("c", hostname=W2)], 100.0)
    m.apply(ev.heartbeat(W2), 108.0)
    m.tick(109.0)  # W1 silent 9 s of 10: not lost yet
    assert m.stage_snapshot(109.0).orphaned == {}
    m.apply(ev.heartbeat(W2), 115.0)
    m.tick(111.0)
    snap = m.stage_snapshot(111.0)
    assert snap.orphaned == {("app.slow", "work"): 2}
    assert snap.oldest_running == {("app.other", "work"): 11.0}  # W1's run no longer runs
    assert snap.reserved == {W1: 0, W2: 0}
    m.tick(200.0)  # counted once
    assert m.stage_snapshot(200.0).orphaned[("app.slow", "work")] == 2


def test_orphaned_task_redelivered_joins_its_name_and_queue_again():
    m = model()
    m.apply_many([ev.heartbeat(W1), ev.sent("a", "app.slow", "work"),
                  ev.received("a", "app.slow", hostname=W1), ev.started("a", hostname=W1)], 100.0)
    m.tick(111.0)
    m.apply_many([ev.heartbeat(W2), ev.received("a", "app.slow", hostname=W2),
                  ev.started("a", hostname=W2)], 120.0)
    snap = m.stage_snapshot(130.0)
    assert snap.oldest_running == {("app.slow", "work"): 10.0}
    assert snap.orphaned == {("app.slow", "work"): 1}


def test_clean_shutdown_orphans_nothing():
    m = model()
    m.apply_many([ev.heartbeat(W1), ev.sent("a", "app.a", "work"),
                  ev.received("a", "app.a", hostname=W1)], 100.0)
    m.apply(ev.offline(W1), 101.0)
    m.tick(500.0)
    snap = m.stage_snapshot(500.0)
    assert snap.orphaned == {}
    assert snap.reserved == {W1: 0}


def test_worker_silent_while_the_event_link_is_down_orphans_nothing():
    m = model()
    m.apply_many([ev.heartbeat(W1), ev.sent("a", "app.a", "work"),
                  ev.received("a", "app.a", hostname=W1), ev.started("a", hostname=W1)], 100.0)
    m.link_down()
    m.tick(500.0)
    assert m.stage_snapshot(500.0).orphaned == {}


# -- bounds ----------------------------------------------------------------------------------


def test_tasks_the_tracker_drops_leave_their_stage():
    m = model(max_tracked_tasks=4)  # generations of 2
    m.apply(ev.heartbeat(W1), 100.0)
    for i in range(6):
        m.apply(ev.sent(f"p{i}", "app.a", "work"), 100.0 + i)
    stages = m.stages
    assert sum(len(tasks) for tasks in stages.pending.values()) == len(m.tracker) == 4
    assert m.stage_snapshot(110.0).oldest_pending == {"work": 8.0}  # p0, p1 dropped
    for i in range(6, 12):
        m.apply_many([ev.received(f"p{i}", "app.a", hostname=W1),
                      ev.started(f"p{i}", hostname=W1)], 110.0)
    assert sum(len(tasks) for tasks in stages.held.values()) == len(m.tracker) == 4
    assert all(t.stage == RUNNING for tasks in stages.held.values() for t in tasks.values())
    assert stages.pending == {}  # emptied, and dropped with a generation


def test_forgotten_queue_drops_its_pending_tasks_and_orphan_counts():
    m = model(max_queues=2, label_ttl=10)
    m.apply_many([ev.heartbeat(W1), ev.sent("a", "app.a", "q1"),
                  ev.received("a", "app.a", hostname=W1)], 100.0)
    m.tick(111.0)  # lost: orphan under q1
    m.apply(ev.sent("b", "app.a", "q1"), 111.0)
    assert m.stage_snapshot(111.0).orphaned == {("app.a", "q1"): 1}
    m.apply(ev.sent("c", "app.c", "q2"), 200.0)  # q1 idle past label_ttl: forgotten for q2
    snap = m.stage_snapshot(200.0)
    assert snap.orphaned == {}
    assert snap.oldest_pending == {"q2": 0.0}


def test_task_ending_while_its_events_are_held_leaves_its_stage():
    m = model()
    # No task-sent, no route: its events held for queue_hold, then released, ending with a
    # rejection.
    m.apply_many([ev.received("a", "app.unrouted", hostname=W1),
                  ev.rejected("a", requeue=False, hostname=W1)], 100.0)
    m.tick(100.0 + m.settings.queue_hold)
    assert len(m.tracker) == 0
    assert not any(m.stages.held.values()) and not any(m.stages.pending.values())


def test_a_requeued_rejection_while_held_puts_the_task_back_in_its_queue():
    m = model()
    m.apply_many([ev.received("a", "app.unrouted", hostname=W1),
                  ev.rejected("a", requeue=True, hostname=W1)], 100.0)
    m.tick(100.0 + m.settings.queue_hold)
    assert len(m.tracker) == 1  # delivered again: no end
    assert not any(m.stages.held.values()) and any(m.stages.pending.values())


def test_task_metrics_from_workers_leaves_the_stages_empty():
    m = Model(count_task_events=False)
    m.apply_many([ev.heartbeat(W1), ev.sent("a", "app.a", "work"),
                  ev.received("a", "app.a", hostname=W1)], 100.0)
    snap = m.stage_snapshot(200.0)
    assert (snap.oldest_pending, snap.oldest_running, snap.reserved) == ({}, {}, {})


@pytest.mark.parametrize("end", [ev.succeeded, ev.failed, ev.revoked, ev.rejected])
def test_every_end_takes_a_task_out_of_every_stage(end):
    m = model()
    m.apply_many([ev.heartbeat(W1), ev.sent("a", "app.a", "work"),
                  ev.received("a", "app.a", hostname=W1), ev.started("a", hostname=W1),
                  end("a", hostname=W1)], 100.0)
    snap = m.stage_snapshot(200.0)
    assert (snap.oldest_pending, snap.oldest_running, snap.reserved) == ({}, {}, {W1: 0})
    for book in (m.stages.pending, m.stages.held):
        assert not any(book.values())


# -- invariants under any order of events ------------------------------------------------

HOSTS = (W1, W2, "w3@host-c")
TASK_IDS = tuple(f"t{i}" for i in range(8))
step = st.one_of(
    st.tuples(st.just("sent"), st.sampled_from(TASK_IDS), st.sampled_from(("q1", "q2")),
              st.integers(0, 2)),
    st.tuples(st.just("received"), st.sampled_from(TASK_IDS), st.sampled_from(HOSTS),
              st.integers(0, 2)),
    st.tuples(st.just("started"), st.sampled_from(TASK_IDS), st.sampled_from(HOSTS)),
    st.tuples(st.sampled_from(("succeeded", "failed", "revoked", "retried", "rejected",
                               "requeued")), st.sampled_from(TASK_IDS)),
    st.tuples(st.sampled_from(("heartbeat", "offline")), st.sampled_from(HOSTS)),
    st.tuples(st.just("tick")),
)


def apply_step(m: Model, s: tuple, now: float) -> None:
    kind = s[0]
    if kind == "sent":
        m.apply(ev.sent(s[1], "app.x", s[2], retries=s[3]), now)
    elif kind == "received":
        m.apply(ev.received(s[1], "app.x", hostname=s[2], retries=s[3]), now)
    elif kind == "started":
        m.apply(ev.started(s[1], hostname=s[2]), now)
    elif kind == "requeued":
        m.apply(ev.rejected(s[1], requeue=True), now)
    elif kind in ("heartbeat", "offline"):
        m.apply((ev.heartbeat if kind == "heartbeat" else ev.offline)(s[1]), now)
    elif kind == "tick":
        m.tick(now)
    else:
        m.apply(getattr(ev, kind)(s[1]), now)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60), st.integers(4, 12))
def test_every_staged_task_is_tracked_in_one_place_and_the_oldest_is_first(steps, bound):
    m = model(max_tracked_tasks=bound, queue_hold=0.5)
    m.apply_many([ev.heartbeat(h) for h in HOSTS], 0.0)
    for i, s in enumerate(steps):
        apply_step(m, s, float(i))
    now = float(len(steps))
    stages, tracked = m.stages, {**m.tracker.old, **m.tracker.young}
    books = {(PENDING,): stages.pending, (RESERVED, RUNNING): stages.held}
    staged = set()
    for stage, book in books.items():
        for where, tasks in book.items():
            for task_id, task in tasks.items():
                assert tracked.get(task_id) is task, task_id  # never one the tracker dropped
                assert task.stage in stage and task.where == where, task_id
                assert task_id not in staged  # in one place only
                staged.add(task_id)
    assert staged == {i for i, t in tracked.items() if t.stage}
    snap = m.stage_snapshot(now)
    for queue, tasks in stages.pending.items():
        if tasks:
            assert snap.oldest_pending[queue] == now - min(t.since for t in tasks.values())
    assert set(snap.oldest_pending) == {q for q, tasks in stages.pending.items() if tasks}
    for worker, count in snap.reserved.items():
        assert count == sum(1 for t in tracked.values()
                            if t.stage == RESERVED and t.where == worker)
    running: dict = {}
    for task in tracked.values():
        if task.stage == RUNNING:
            labels = m.tasks.label_of(task)
            running[labels] = max(running.get(labels, 0.0), now - task.since)
    assert snap.oldest_running == running
