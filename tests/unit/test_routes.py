"""Static task routes: the queue label of a task whose own task-sent event was not seen."""

from __future__ import annotations

import pytest
from celery_stalk.config import Config, ConfigError
from celery_stalk.model import UNKNOWN, Model, TaskRoutes

from tests import events as ev


def received_and_succeeded(task_id, name):
    return [ev.received(task_id, name), ev.started(task_id), ev.succeeded(task_id)]


def replay(model, events, now=1000.0):
    for event in events:
        model.apply(event, now)
    return model.snapshot(now)


def test_route_labels_a_task_whose_task_sent_was_not_seen():
    model = Model(routes=(("app.report", "reports"),))
    snap = replay(model, received_and_succeeded("t1", "app.report"))
    assert snap.counters["task-succeeded"] == {("app.report", "reports"): 1}
    assert snap.counters["task-received"] == {("app.report", "reports"): 1}


def test_without_a_route_the_queue_stays_unknown():
    model = Model(routes=(("app.report", "reports"),))
    replay(model, received_and_succeeded("t1", "app.add"))
    model.tick(1000.0 + model.settings.queue_hold)  # held for a task-sent that does not come
    assert model.snapshot(1000.0).counters["task-succeeded"] == {("app.add", UNKNOWN): 1}


def test_task_sent_and_the_last_seen_queue_win_over_the_route():
    """A route is a static guess: what the producer actually did is better evidence."""
    model = Model(routes=(("app.report", "reports"),))
    events = [
        *ev.lifecycle("t1", "app.report", "urgent"),  # the task's own task-sent
        *received_and_succeeded("t2", "app.report"),  # no task-sent: last seen queue
    ]
    snap = replay(model, events)
    assert snap.counters["task-succeeded"] == {("app.report", "urgent"): 2}


def test_exact_names_win_over_globs_and_globs_match_in_order():
    routes = TaskRoutes((
        ("billing.*", "billing"),
        ("billing.refund", "refunds"),
        ("*", "catchall"),
        ("billing.*.slow", "never"),  # a later glob never beats an earlier one
    ))
    assert routes.queue_for("billing.refund") == "refunds"
    assert routes.queue_for("billing.charge") == "billing"
    assert routes.queue_for("billing.x.slow") == "billing"
    assert routes.queue_for("mail.send") == "catchall"
    assert routes.queues == ("refunds", "billing", "catchall", "never")


def test_a_name_is_a_glob_only_if_it_has_a_star_as_in_celery():
    routes = TaskRoutes((("app.[ab]?", "exact"), ("app.[ab]?.*", "glob")))
    assert routes.queue_for("app.[ab]?") == "exact"
    assert routes.queue_for("app.ax") is None
    assert routes.queue_for("app.a1.task") == "glob"
    assert routes.queue_for("app.c1.task") is None
    assert routes.queue_for("xapp.a1.task") is None  # anchored at both ends


def test_routed_queues_are_known_so_their_depth_is_read_before_any_event():
    model = Model(static_queues=("default",), routes=(("a.*", "alpha"), ("b", "beta")))
    assert model.known_queues() == ["alpha", "beta", "default"]


def test_task_route_flag_parses_and_names_the_fix():
    config = Config.parse(broker_url="redis://localhost:6379/0",
                          task_route=("proj.reports.*=reports, proj.mail=mail", "a = b"))
    assert config.task_routes == (("proj.reports.*", "reports"), ("proj.mail", "mail"), ("a", "b"))
    with pytest.raises(ConfigError) as info:
        Config.parse(broker_url="redis://localhost:6379/0", task_route=("proj.mail", "=q"))
    assert len(info.value.problems) == 2
    assert all("is not task=queue" in problem for problem in info.value.problems)
