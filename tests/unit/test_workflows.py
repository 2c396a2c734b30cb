"""Workflows (tasks sharing a root_id), replayed into the model with an injected clock."""

from __future__ import annotations

import pytest
from celery_stalk.model import Model, ModelSettings

from tests import events as ev

SETTLE = 5.0


def model(**settings) -> Model:
    return Model(ModelSettings(workflow_settle=SETTLE, **settings))


def apply(m: Model, events, now: float) -> None:
    for event in events:
        m.apply(event, now)


def settled(m: Model, now: float):
    """Tick past the hold of events waiting for a task-sent (ModelSettings.queue_hold), then
    past the settle period, and return the snapshot."""
    released = now + ModelSettings().queue_hold + 0.1
    m.tick(released)
    m.tick(released + SETTLE)
    return m.workflow_snapshot(released + SETTLE)


def hist_count(hist) -> int:
    return sum(hist.counts)


def test_a_chain_is_one_workflow_finished_after_the_settle_period():
    m = model()
    apply(m, ev.chain(["a", "b", "c"], ["app.fetch", "app.parse", "app.store"], t0=100.0), 200.0)
    snap = m.workflow_snapshot(200.0)
    assert snap.workflows_started == {"app.fetch": 1}
    assert snap.workflows_in_flight == {"app.fetch": 1}  # settling: not finished yet
    m.tick(200.0 + SETTLE - 0.1)
    assert m.workflow_snapshot(201.0).workflows_finished == {}
    snap = settled(m, 200.0)
    assert snap.workflows_finished == {("app.fetch", "succeeded"): 1}
    assert snap.workflows_in_flight == {}
    duration = snap.workflow_duration["app.fetch"]
    assert hist_count(duration) == 1 and duration.total == pytest.approx(2.5)  # 100 -> 102.5
    assert snap.workflow_tasks["app.fetch"].total == 3
    assert m.workflows.member_of == {} and m.workflows.open == {}


def test_a_failing_step_fails_the_workflow_and_says_where():
    m = model()
    apply(m, ev.chain(["a", "b", "c"], ["app.fetch", "app.parse", "app.store"], fail_at=1), 200.0)
    snap = settled(m, 200.0)
    assert snap.workflows_finished == {("app.fetch", "failed"): 1}
    assert snap.workflow_task_failed == {("app.fetch", "app.parse", "ValueError"): 1}
    assert snap.workflow_tasks["app.fetch"].total == 2


def test_a_retried_member_keeps_its_workflow_in_flight_until_it_finishes():
    m = model()
    events = ev.chain(["a", "b"], ["app.fetch", "app.flaky"])
    retry_end = events.index(next(e for e in events if e["type"] == "task-succeeded"
                                  and e["uuid"] == "b"))
    apply(m, events[:retry_end], 200.0)
    apply(m, [ev.retried("b", at=102.0)], 200.0)
    m.tick(300.0)  # far past the settle period: a retried task is still in flight
    assert m.workflow_snapshot(300.0).workflows_in_flight == {"app.fetch": 1}
    apply(m, [ev.sent("b", "app.flaky", at=303.0, root_id="a", parent_id="a", retries=1),
              ev.received("b", "app.flaky", at=303.1, root_id="a", parent_id="a", retries=1),
              ev.started("b", at=303.2), ev.succeeded("b", at=303.5)], 303.0)
    snap = settled(m, 303.0)
    assert snap.workflows_finished == {("app.fetch", "succeeded"): 1}  # a retry is no failure
    assert snap.workflow_task_failed == {}
    assert snap.workflow_tasks["app.fetch"].total == 2  # the retry is the same task


def test_a_chord_callback_arriving_after_the_last_header_task_ended_does_not_split_it():
    m = model()
    root = [ev.sent("r", "app.start", at=100.0), ev.received("r", "app.start", at=100.1),
            ev.started("r", at=100.2)]
    header = [e for tid in ("h1", "h2") for e in (
        ev.sent(tid, "app.part", at=100.3, root_id="r", parent_id="r"),
        ev.received(tid, "app.part", at=100.4, root_id="r", parent_id="r"),
        ev.started(tid, at=100.5))]
    apply(m, root + header + [ev.succeeded("r", at=100.6), ev.succeeded("h1", at=101.0),
                              ev.succeeded("h2", at=102.0)], 200.0)
    m.tick(200.0 + SETTLE - 1)  # the callback's task-sent comes late, inside the settle period
    apply(m, [ev.sent("cb", "app.join", at=102.1, root_id="r", parent_id="h2"),
              ev.received("cb", "app.join", at=102.2, root_id="r", parent_id="h2"),
              ev.started("cb", at=102.3), ev.succeeded("cb", at=103.0)], 200.0 + SETTLE - 1)
    snap = settled(m, 200.0 + SETTLE - 1)
    assert snap.workflows_started == {"app.start": 1}
    assert snap.workflows_finished == {("app.start", "succeeded"): 1}
    assert snap.workflow_tasks["app.start"].total == 4
    assert snap.workflow_duration["app.start"].total == pytest.approx(3.0)


def test_chord_unlock_polling_keeps_the_workflow_open_until_the_callback_ran():
    """Backends without native chords: celery.chord_unlock retries until the header is done."""
    m = model()
    apply(m, [ev.sent("r", "app.start", at=100.0), ev.started("r", at=100.1),
              ev.sent("h1", "app.part", at=100.2, root_id="r", parent_id="r"),
              ev.sent("u", "celery.chord_unlock", at=100.3, root_id="r", parent_id="r"),
              ev.succeeded("r", at=100.4)], 100.5)
    now = 100.5
    for i in range(10):  # the unlock polls every second while h1 runs for 10 s
        now += 1.0
        apply(m, [ev.started("u", at=now), ev.retried("u", at=now + 0.01),
                  ev.sent("u", "celery.chord_unlock", at=now + 0.02, root_id="r",
                          parent_id="r", retries=i + 1)], now)
        m.tick(now)
    assert m.workflow_snapshot(now).workflows_finished == {}
    apply(m, [ev.started("h1", at=100.5), ev.succeeded("h1", at=110.0),
              ev.started("u", at=111.0),
              ev.sent("cb", "app.join", at=111.1, root_id="r", parent_id="u"),
              ev.succeeded("u", at=111.2), ev.started("cb", at=111.3),
              ev.succeeded("cb", at=112.0)], now)
    snap = settled(m, now)
    assert snap.workflows_finished == {("app.start", "succeeded"): 1}
    assert snap.workflow_tasks["app.start"].total == 4  # root, h1, the unlock, the callback


def test_children_before_the_root_and_ends_before_starts_still_make_one_workflow():
    m = model()
    apply(m, [
        ev.sent("b", "app.parse", at=101.0, root_id="a", parent_id="a"),  # before a's own events
        ev.succeeded("c"),  # c's end overtakes its start
        ev.sent("a", "app.fetch", at=100.0),
        ev.started("a", at=100.2),
        ev.sent("c", "app.store", at=101.5, root_id="a", parent_id="b"),
        ev.succeeded("a", at=100.9),
        ev.started("b", at=101.2),
        ev.failed("b", at=101.9),
    ], 200.0)
    snap = settled(m, 200.0)
    assert snap.workflows_started == {"app.fetch": 1}
    assert snap.workflows_finished == {("app.fetch", "failed"): 1}
    assert snap.workflow_task_failed == {("app.fetch", "app.parse", "ValueError"): 1}
    assert snap.workflow_tasks["app.fetch"].total == 3
    assert snap.workflows_in_flight == {}  # c is not left in flight


def test_without_task_sent_events_a_child_is_followed_only_if_received_while_its_root_runs():
    """Without task-sent events a step is first seen when a worker receives it."""
    m = model()
    apply(m, [ev.received("a", "app.fan_out", at=100.0), ev.started("a", at=100.1),
              ev.received("b", "app.part", at=100.5, root_id="a", parent_id="a"),
              ev.succeeded("a", at=100.8), ev.started("b", at=101.1),
              ev.succeeded("b", at=102.0)], 100.5)
    snap = settled(m, 105.0)
    assert snap.workflows_finished == {("app.fan_out", "succeeded"): 1}
    # without the root's task-sent, the workflow starts when the root was received
    assert snap.workflow_duration["app.fan_out"].total == pytest.approx(102.0 - 100.0)
    # a chain's next step is received after the step before it finished: not followed, once
    # the exporter knows the name's producers send no task-sent (it stops holding its events)
    apply(m, [ev.received("w", "app.fetch", at=150.0), ev.succeeded("w", at=150.5)], 150.0)
    m.tick(150.0 + ModelSettings().queue_hold + 0.1)
    apply(m, [ev.received("x", "app.fetch", at=200.0), ev.started("x", at=200.1),
              ev.succeeded("x", at=200.5),
              ev.received("y", "app.parse", at=201.0, root_id="x", parent_id="x"),
              ev.started("y", at=201.1), ev.succeeded("y", at=202.0)], 201.0)
    snap = settled(m, 202.0)
    assert "app.fetch" not in snap.workflows_started
    assert snap.workflow_orphan_tasks == 1


def test_starting_mid_workflow_counts_its_tasks_as_orphans_not_a_workflow():
    m = model()
    apply(m, [ev.sent("c", "app.store", at=105.0, root_id="a", parent_id="b"),
              ev.started("c", at=105.1), ev.succeeded("c", at=105.5)], 200.0)
    snap = settled(m, 200.0)
    assert snap.workflows_started == {} and snap.workflows_finished == {}
    assert snap.workflow_orphan_tasks == 1
    assert m.workflows.open == {}


def test_a_task_arriving_after_its_workflow_settled_is_an_orphan():
    m = model()
    apply(m, ev.chain(["a", "b"], ["app.fetch", "app.parse"]), 200.0)
    settled(m, 200.0)
    apply(m, [ev.sent("late", "app.notify", at=150.0, root_id="a", parent_id="b"),
              ev.succeeded("late", at=151.0)], 300.0)
    snap = settled(m, 300.0)
    assert snap.workflows_started == {"app.fetch": 1}  # no second workflow
    assert snap.workflows_finished == {("app.fetch", "succeeded"): 1}
    assert snap.workflow_orphan_tasks == 1


def test_lone_tasks_and_groups_sent_from_outside_a_task_are_no_workflow():
    """Celery gives each member of a group sent by a client its own root_id."""
    m = model()
    for i in range(50):
        apply(m, ev.lifecycle(f"t{i}", "app.add"), 200.0)
    m.tick(300.0)
    snap = m.workflow_snapshot(300.0)
    assert snap.workflows_started == {} and snap.workflow_orphan_tasks == 0
    assert m.workflows.open == {} and m.workflows.member_of == {}


def test_rejected_and_revoked_members_fail_the_workflow_under_celerys_names():
    m = model()
    apply(m, [ev.sent("a", "app.fan_out", at=100.0), ev.started("a", at=100.1),
              ev.sent("x", "app.part", at=100.2, root_id="a", parent_id="a"),
              ev.sent("y", "app.part", at=100.3, root_id="a", parent_id="a"),
              ev.succeeded("a", at=100.4), ev.rejected("x"), ev.revoked("y")], 200.0)
    snap = settled(m, 200.0)
    assert snap.workflows_finished == {("app.fan_out", "failed"): 1}
    assert snap.workflow_task_failed == {("app.fan_out", "app.part", "Reject"): 1,
                                         ("app.fan_out", "app.part", "TaskRevokedError"): 1}


def test_open_workflows_are_bounded_and_evictions_counted():
    m = model(max_workflows=2)
    for i in range(3):  # three workflows in flight; the third evicts the oldest
        apply(m, [ev.sent(f"r{i}", "app.start", at=100.0 + i),
                  ev.sent(f"c{i}", "app.step", at=100.5 + i, root_id=f"r{i}", parent_id=f"r{i}")],
              200.0)
    assert m.workflow_snapshot(200.0).workflows_evicted["limit"] == 1
    assert m.workflow_snapshot(200.0).workflows_in_flight == {"app.start": 2}
    apply(m, [ev.succeeded(f"{k}{i}") for i in range(3) for k in "rc"], 201.0)
    snap = settled(m, 201.0)
    assert snap.workflows_started == {"app.start": 3}
    assert snap.workflows_finished == {("app.start", "succeeded"): 2}
    assert m.workflows.members == 0 and m.workflows.member_of == {}


def test_tasks_in_open_workflows_are_bounded_by_max_tracked_tasks():
    m = model(max_tracked_tasks=10)
    apply(m, [ev.sent("r", "app.fan_out", at=100.0)], 200.0)
    for i in range(12):
        apply(m, [ev.sent(f"c{i}", "app.part", root_id="r", parent_id="r")], 200.0)
    snap = m.workflow_snapshot(200.0)
    assert snap.workflows_evicted["limit"] == 1
    assert m.workflows.members <= 10


def test_losing_the_event_stream_drops_open_workflows():
    m = model()
    apply(m, [ev.sent("r", "app.start"), ev.sent("c", "app.step", root_id="r", parent_id="r")],
          200.0)
    m.link_down()
    snap = m.workflow_snapshot(200.0)
    assert snap.workflows_evicted == {"limit": 0, "link_lost": 1}
    assert snap.workflows_in_flight == {}
    assert m.workflows.member_of == {}


def test_a_forgotten_task_name_drops_its_workflow_series():
    m = Model(ModelSettings(workflow_settle=SETTLE, max_task_names=3, label_ttl=10.0))
    apply(m, ev.chain(["a", "b"], ["app.fetch", "app.parse"]), 200.0)
    settled(m, 200.0)
    apply(m, ev.lifecycle("n1", "app.new1"), 300.0)
    apply(m, ev.lifecycle("n2", "app.new2"), 300.0)  # the cap forgets the idlest name
    snap = m.workflow_snapshot(300.0)
    assert "app.fetch" not in snap.workflows_started
    assert all("app.fetch" not in key for key in snap.workflows_finished)
