"""The model, fed real-shaped Celery events with an injected clock: no broker, no sleep."""

from __future__ import annotations

import pytest
from celery_stalk.model import OTHER, UNKNOWN, Model, ModelSettings, exception_class

from tests import events as ev


def replay(model: Model, events, now=1000.0):
    for event in events:
        model.apply(event, now)
    return model.snapshot(now)


def hist_count(hist) -> int:
    return sum(hist.counts)


def test_succeeded_task_joins_name_and_queue_from_sent():
    snap = replay(Model(), ev.lifecycle("t1", "app.add", "work", wait=2.0, runtime=0.5))
    key = ("app.add", "work")
    for kind in ("task-sent", "task-received", "task-started", "task-succeeded"):
        assert snap.counters[kind] == {key: 1}, kind
    assert hist_count(snap.runtime[key]) == 1
    assert snap.runtime[key].total == pytest.approx(0.5)
    assert hist_count(snap.wait[key]) == 1
    assert snap.wait[key].total == pytest.approx(2.0)
    assert snap.tracked_tasks == 0  # finished tasks are not kept
    assert snap.events == {"task-sent": 1, "task-received": 1, "task-started": 1, "task-succeeded": 1}


def test_runtime_lands_in_the_right_bucket_and_default_buckets_reach_an_hour():
    settings = ModelSettings()
    assert settings.runtime_buckets[-1] >= 3600
    snap = replay(Model(settings), ev.lifecycle("t1", "slow", runtime=45.0))
    hist = snap.runtime[("slow", "celery")]
    index = [i for i, c in enumerate(hist.counts) if c][0]
    assert settings.runtime_buckets[index - 1] < 45.0 <= settings.runtime_buckets[index]


def test_failed_task_counts_exception_class_not_message():
    events = [
        ev.sent("t1", "app.pay", "billing"),
        ev.received("t1", "app.pay"),
        ev.started("t1"),
        ev.failed("t1", exception="ValueError('card 4111 1111 declined')"),
        ev.sent("t2", "app.pay", "billing"),
        ev.received("t2", "app.pay"),
        ev.started("t2"),
        ev.failed("t2", exception="celery.exceptions.SoftTimeLimitExceeded()"),
    ]
    snap = replay(Model(), events)
    assert snap.counters["task-failed"] == {("app.pay", "billing"): 2}
    assert snap.exceptions == {
        ("app.pay", "billing", "ValueError"): 1,
        ("app.pay", "billing", "SoftTimeLimitExceeded"): 1,
    }


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ValueError('x')", "ValueError"),
        ("TimeLimitExceeded(60.0,)", "TimeLimitExceeded"),
        ("myapp.errors.PaymentError: card declined", "PaymentError"),
        ("KeyError", "KeyError"),
        ("", UNKNOWN),
        ("('tuple',)", UNKNOWN),
        (None, UNKNOWN),
        (42, UNKNOWN),
    ],
)
def test_exception_class(text, expected):
    assert exception_class(text) == expected


def test_retry_same_id_received_again_counts_each_event_and_keeps_the_name():
    events = [
        ev.sent("t1", "app.flaky", "work", at=100.0),
        ev.received("t1", "app.flaky", at=100.5),
        ev.started("t1", at=101.0),
        ev.retried("t1", at=101.5),
        # the worker re-sends the task with a countdown: a new task-sent, same id
        ev.sent("t1", "app.flaky", "work", at=101.6, retries=1),
        ev.received("t1", "app.flaky", at=101.7, retries=1),
        ev.started("t1", at=103.6),
        ev.succeeded("t1", runtime=0.1, at=103.7),
    ]
    snap = replay(Model(), events)
    key = ("app.flaky", "work")
    assert snap.counters["task-retried"] == {key: 1}
    assert snap.counters["task-received"] == {key: 2}
    assert snap.counters["task-started"] == {key: 2}
    assert snap.counters["task-succeeded"] == {key: 1}
    assert snap.counters["task-failed"] == {}
    # one wait per attempt: 1.0 s, then 2.0 s
    assert hist_count(snap.wait[key]) == 2
    assert snap.wait[key].total == pytest.approx(3.0)
    assert snap.name_unknown == {}


def test_retry_without_sent_events_still_names_every_event():
    events = [
        ev.received("t1", "app.flaky"),
        ev.started("t1"),
        ev.retried("t1"),
        ev.received("t1", "app.flaky", retries=1),
        ev.started("t1"),
        ev.failed("t1", exception="IOError('down')"),
    ]
    model = Model()
    replay(model, events)
    model.tick(1000.0 + model.settings.queue_hold)  # no task-sent came: counted anyway
    snap = model.snapshot(1000.0)
    assert snap.counters["task-retried"] == {("app.flaky", UNKNOWN): 1}
    assert snap.counters["task-failed"] == {("app.flaky", UNKNOWN): 1}
    assert snap.name_unknown == {}
    assert snap.wait == {}  # no task-sent: no queue wait is invented


def test_queue_falls_back_to_the_queue_the_task_name_was_last_sent_to():
    events = [
        *ev.lifecycle("t1", "app.report", "reports"),
        # t2's task-sent was not seen (e.g. sent by a producer without task_send_sent_event)
        ev.received("t2", "app.report"),
        ev.started("t2"),
        ev.succeeded("t2"),
    ]
    snap = replay(Model(), events)
    assert snap.counters["task-succeeded"] == {("app.report", "reports"): 2}


def test_out_of_order_started_before_sent_still_measures_wait():
    events = [
        ev.received("t1", "app.add", at=100.5),
        ev.started("t1", at=103.0),
        ev.sent("t1", "app.add", "work", at=100.0),
        ev.succeeded("t1", at=104.0),
    ]
    snap = replay(Model(), events)
    key = ("app.add", "work")
    assert snap.wait[key].total == pytest.approx(3.0)
    assert snap.counters["task-sent"] == {key: 1}
    assert snap.counters["task-succeeded"] == {key: 1}


def test_succeeded_without_any_earlier_event_is_counted_as_unknown_and_reported():
    snap = replay(Model(), [ev.succeeded("ghost", runtime=1.0), ev.failed("ghost2")])
    assert snap.counters["task-succeeded"] == {(UNKNOWN, UNKNOWN): 1}
    assert snap.counters["task-failed"] == {(UNKNOWN, UNKNOWN): 1}
    assert snap.name_unknown == {"task-succeeded": 1, "task-failed": 1}
    assert snap.exceptions == {(UNKNOWN, UNKNOWN, "ValueError"): 1}


def test_negative_wait_from_clock_skew_is_clamped_and_counted():
    events = [
        ev.sent("t1", "app.add", "work", at=200.0),  # producer clock ahead
        ev.received("t1", "app.add", at=150.0),
        ev.started("t1", at=150.5),
    ]
    snap = replay(Model(), events)
    assert snap.wait[("app.add", "work")].total == 0.0
    assert hist_count(snap.wait[("app.add", "work")]) == 1
    assert snap.clock_skew == 1


def test_eta_is_excluded_from_queue_wait():
    # sent at 100 with a 60 s countdown, started at 161: it waited 1 s, not 61
    events = [
        ev.sent("t1", "app.later", "work", at=100.0, eta="1970-01-01T00:02:40+00:00"),
        ev.received("t1", "app.later", at=100.2, eta="1970-01-01T00:02:40+00:00"),
        ev.started("t1", at=161.0),
    ]
    snap = replay(Model(), events)
    assert snap.wait[("app.later", "work")].total == pytest.approx(1.0)


def test_rejected_with_requeue_keeps_the_task_and_without_forgets_it():
    events = [
        ev.sent("t1", "app.x", "work"),
        ev.received("t1", "app.x"),
        ev.rejected("t1", requeue=True),
        ev.received("t1", "app.x"),
        ev.rejected("t1", requeue=False),
        ev.sent("t2", "app.x", "work"),
        ev.revoked("t2"),
    ]
    snap = replay(Model(), events)
    assert snap.counters["task-rejected"] == {("app.x", "work"): 2}
    assert snap.counters["task-revoked"] == {("app.x", "work"): 1}
    assert snap.tracked_tasks == 0


def test_tracked_tasks_are_bounded_and_evictions_counted():
    model = Model(ModelSettings(max_tracked_tasks=100))
    for i in range(1000):
        model.apply(ev.sent(f"t{i}", "app.add", "work"), 1000.0)
    snap = model.snapshot(1000.0)
    assert snap.tracked_tasks <= 100
    assert snap.evicted_tasks == 1000 - snap.tracked_tasks
    # the newest are still joinable; the evicted ones finish as unknown
    model.apply(ev.succeeded("t999"), 1000.0)
    model.apply(ev.succeeded("t0"), 1000.0)
    snap = model.snapshot(1000.0)
    assert snap.counters["task-succeeded"] == {("app.add", "work"): 1, (UNKNOWN, UNKNOWN): 1}
    assert snap.name_unknown == {"task-succeeded": 1}


def test_label_caps_send_new_values_to_other_and_count_them():
    model = Model(ModelSettings(max_task_names=3, max_queues=2, max_exceptions=2))
    # the caps include the reserved "unknown" value
    for i in range(5):
        for event in ev.lifecycle(f"t{i}", f"app.task{i}", f"q{i}")[:1]:
            model.apply(event, 1000.0)
        model.apply(ev.received(f"f{i}", "app.task0"), 1000.0)
        model.apply(ev.failed(f"f{i}", exception=f"Error{i}()"), 1000.0)
    snap = model.snapshot(1000.0)
    names = {task for task, _ in snap.counters["task-sent"]}
    assert names == {"app.task0", "app.task1", OTHER}
    assert snap.overflow["task"] == 3
    assert {queue for _, queue in snap.counters["task-sent"]} == {"q0", OTHER}
    assert snap.overflow["queue"] == 4
    assert {exc for _, _, exc in snap.exceptions} == {"Error0", OTHER}
    assert sum(snap.counters["task-sent"].values()) == 5  # nothing lost, only relabelled


def test_static_queues_are_known_before_any_event():
    model = Model(static_queues=("critical", "bulk"))
    assert model.known_queues() == ["bulk", "critical"]
    model.apply(ev.sent("t1", "app.add", "work"), 1.0)
    assert model.known_queues() == ["bulk", "critical", "work"]


# -- workers -------------------------------------------------------------------


def connected_model(now=1000.0, **settings) -> Model:
    model = Model(ModelSettings(**settings))
    model.link_up(now)
    return model


def test_worker_up_from_heartbeat_and_down_after_timeout_by_receive_time():
    model = connected_model(worker_timeout=10)
    # the worker's own clock is absurd: liveness must not care
    beat = ev.heartbeat(active=3)
    beat["timestamp"] = 1.0
    model.apply(beat, 1000.0)
    snap = model.snapshot(1005.0)
    view = snap.workers[ev.WORKER]
    assert view.up and view.active == 3 and view.last_heartbeat == 1000.0
    assert model.snapshot(1010.0).workers[ev.WORKER].up
    assert not model.snapshot(1010.1).workers[ev.WORKER].up


def test_killed_worker_counts_as_lost_but_graceful_shutdown_does_not():
    model = connected_model(worker_timeout=10)
    model.apply(ev.online("killed@a"), 1000.0)
    model.apply(ev.online("stopped@b"), 1000.0)
    model.apply(ev.offline("stopped@b"), 1002.0)
    for t in range(1000, 1030):
        model.tick(float(t))
    snap = model.snapshot(1030.0)
    assert not snap.workers["killed@a"].up
    assert not snap.workers["stopped@b"].up
    assert snap.workers_lost == 1
    # per worker, a clean shutdown is told apart from a loss (what alerts name)
    assert snap.workers["stopped@b"].offline and not snap.workers["killed@a"].offline
    # it comes back: up again, and the lost count stays (it is a counter)
    model.apply(ev.heartbeat("killed@a"), 1031.0)
    model.tick(1031.0)
    snap = model.snapshot(1031.0)
    assert snap.workers["killed@a"].up and snap.workers_lost == 1
    model.apply(ev.online("stopped@b"), 1031.0)  # restarted after the deploy
    assert not model.snapshot(1031.0).workers["stopped@b"].offline


def test_slow_heartbeat_workers_get_two_and_a_half_intervals():
    model = connected_model(worker_timeout=10)
    model.apply(ev.heartbeat("slow@a", freq=60.0), 1000.0)
    assert model.snapshot(1140.0).workers["slow@a"].up
    assert not model.snapshot(1151.0).workers["slow@a"].up


def test_down_workers_are_forgotten_after_ttl_but_lost_total_is_kept():
    model = connected_model(worker_timeout=10, worker_ttl=60)
    model.apply(ev.online("pod-1@x"), 1000.0)
    model.tick(1011.0)
    assert model.snapshot(1011.0).workers_lost == 1
    model.tick(1059.0)
    assert "pod-1@x" in model.snapshot(1059.0).workers
    model.tick(1061.0)
    snap = model.snapshot(1061.0)
    assert snap.workers == {} and snap.workers_lost == 1


def test_broker_outage_does_not_declare_the_fleet_lost():
    model = connected_model(worker_timeout=10)
    model.apply(ev.online("a@x"), 1000.0)
    model.link_down()
    for t in range(1000, 1100):
        model.tick(float(t))
    assert model.snapshot(1100.0).workers["a@x"].up  # unknown: last verdict kept
    model.link_up(1100.0)
    # A worker heard at 1000 lost the broker after that: 100 s into an outage Celery's
    # reconnect attempts are 20 s apart (2, 4, ... 18 s waited: 90 s), so it gets its
    # timeout (10 s) and those 20 s after the reconnect.
    model.tick(1129.0)
    snap = model.snapshot(1129.0)
    assert snap.workers["a@x"].up and snap.workers_lost == 0  # grace after reconnect
    model.tick(1131.0)
    assert model.snapshot(1131.0).workers_lost == 1  # still silent: now it is lost


@pytest.mark.parametrize("outage, wait", [
    (0.5, 2.0), (1.99, 2.0), (2.0, 4.0), (12.0, 8.0), (13.0, 8.0), (60.0, 16.0),
    (239.0, 30.0), (3600.0, 30.0),
])
def test_reconnect_wait_follows_celerys_retry_schedule(outage, wait):
    """Attempts 2, 4, 6... s apart, at most 30: 0, 2, 6, 12, 20, 30, 42, 56, 72..."""
    from celery_stalk.model.workers import reconnect_wait

    assert reconnect_wait(outage) == wait


def test_a_worker_that_reconnects_after_the_exporter_is_not_lost():
    """Seen on a real worker: Redis away 12 s, the exporter back at once, the worker's next
    attempt 8 s later (then a heartbeat within its interval): no loss is counted."""
    model = connected_model(worker_timeout=5)
    model.apply(ev.heartbeat("a@x"), 1000.0)
    model.link_down()  # the broker stops at 1001
    model.link_up(1013.0)  # back at 1013, the exporter at once
    for t in range(1013, 1023):  # the worker: retry at 1021, heartbeat at 1023
        model.tick(float(t))
    model.apply(ev.heartbeat("a@x"), 1023.0)
    model.tick(1024.0)
    snap = model.snapshot(1024.0)
    assert snap.workers["a@x"].up and snap.workers_lost == 0
    model.tick(1027.0)  # heard since the reconnect: its plain timeout (5 s) again
    assert model.snapshot(1027.0).workers_lost == 0
    model.tick(1028.5)
    assert model.snapshot(1028.5).workers_lost == 1


def test_worker_cap_takes_every_new_worker_forgetting_down_ones_first():
    model = connected_model(max_workers=3)
    model.apply(ev.online("steady@h"), 999.0)
    model.apply(ev.heartbeat("steady@h"), 1000.0)
    model.apply(ev.offline("gone@h"), 1000.0)
    model.apply(ev.heartbeat("w0@h"), 1001.0)
    model.apply(ev.heartbeat("w1@h"), 1002.0)  # full: the worker that shut down goes first
    snap = model.snapshot(1002.0)
    assert sorted(snap.workers) == ["steady@h", "w0@h", "w1@h"]
    assert snap.forgotten["worker"] == 1
    model.apply(ev.heartbeat("w2@h"), 1003.0)  # then one heard from only once, longest ago
    assert sorted(model.snapshot(1003.0).workers) == ["steady@h", "w1@h", "w2@h"]
    for name in ("w1@h", "w2@h", "steady@h"):
        model.apply(ev.heartbeat(name), 1004.0)
    model.apply(ev.heartbeat("w3@h"), 1005.0)  # all heard twice: the least recently heard
    assert sorted(model.snapshot(1005.0).workers) == ["steady@h", "w2@h", "w3@h"]


def flood(model: Model, seconds: int, names_per_second: int, start: float = 1000.0) -> list[bool]:
    """Made-up hostnames, each heard once, while one real worker heartbeats every 2 s;
    whether the real worker was visible and up after each step."""
    visible = []
    steps = seconds * names_per_second
    for i in range(steps):
        now = start + i / names_per_second
        if i % (2 * names_per_second) == 0:
            model.apply(ev.heartbeat("real@h"), now)
        model.apply(ev.heartbeat(f"fake-{i}@h"), now)
        if i % names_per_second == 0:
            model.tick(now)
        view = model.snapshot(now).workers.get("real@h") if i > 2 * names_per_second else True
        visible.append(bool(view and (view is True or view.up)))
    return visible


def test_a_live_worker_stays_visible_through_a_flood_of_new_hostnames():
    # 80 new names a second against a cap of 100: each 2 s heartbeat interval brings 160,
    # more than the cap, so heard-least-recently alone would push the real worker out
    model = connected_model(max_workers=100, worker_timeout=10)
    assert all(flood(model, 30, 80))
    snap = model.snapshot(1030.0)
    assert len(snap.workers) == 100
    # every made-up name, and the real worker once: pushed out before its second heartbeat,
    # it has been kept as one heard twice since
    assert snap.forgotten["worker"] == 30 * 80 + 2 - 100


def test_worker_full_nodename_is_kept():
    model = connected_model()
    model.apply(ev.heartbeat("celery@worker-7d9f-abc.default.svc"), 1000.0)
    assert list(model.snapshot(1000.0).workers) == ["celery@worker-7d9f-abc.default.svc"]


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "event, reason",
    [
        ("not a dict", "not_an_object"),
        ({"no": "type"}, "missing_type"),
        ({"type": 5}, "missing_type"),
        ({"type": "task-succeeded"}, "missing_field"),
        ({"type": "task-received", "uuid": "x"}, "missing_field"),
        ({"type": "worker-heartbeat"}, "missing_field"),
    ],
)
def test_malformed_events_are_counted_and_skipped(event, reason):
    model = Model()
    model.apply(event, 1.0)
    model.apply(ev.received("t1", "app.ok"), 1.0)
    model.tick(1.0 + model.settings.queue_hold)  # held for a task-sent that does not come
    snap = model.snapshot(1.0)
    assert snap.invalid == {reason: 1}
    assert snap.counters["task-received"] == {("app.ok", UNKNOWN): 1}
    assert snap.events == {"task-received": 1}


def test_unknown_event_types_are_counted_as_other():
    model = Model()
    model.apply({"type": "task-custom-thing", "uuid": "x"}, 1.0)
    model.apply({"type": "task-cancelled", "uuid": "x"}, 1.0)
    assert model.snapshot(1.0).events == {OTHER: 1, "task-cancelled": 1}


def test_batch_of_events_is_applied_whole():
    model = Model()
    model.apply_many(ev.lifecycle("t1", "app.add") + [42], 1.0)
    snap = model.snapshot(1.0)
    assert sum(snap.events.values()) == 4
    assert snap.invalid == {"not_an_object": 1}
    assert snap.last_event == 1.0


def test_sent_event_without_queue_uses_the_fallback_rule():
    events = [
        *ev.lifecycle("t1", "app.report", "reports"),
        {**ev.sent("t2", "app.report", queue=""), "routing_key": None},
        ev.received("t2", "app.report"),
    ]
    snap = replay(Model(), events)
    assert snap.counters["task-sent"] == {("app.report", "reports"): 2}
    assert snap.counters["task-received"] == {("app.report", "reports"): 2}


def test_a_full_cap_forgets_the_longest_idle_name_after_label_ttl_and_drops_its_series():
    model = Model(ModelSettings(max_task_names=3, label_ttl=100))  # "unknown" takes one slot
    model.apply_many(ev.lifecycle("t1", "old.task", "q", t0=0.0), 0.0)
    model.apply_many(ev.lifecycle("t2", "busy.task", "q", t0=0.0), 0.0)
    model.apply_many(ev.lifecycle("t3", "busy.task", "q", t0=60.0), 60.0)
    model.apply_many(ev.lifecycle("t4", "new.task", "q", t0=50.0), 50.0)
    snap = model.snapshot(50.0)
    assert ("other", "q") in snap.counters["task-sent"]  # full, and nothing idle long enough
    assert snap.overflow["task"] == 1 and snap.forgotten["task"] == 0
    model.apply_many(ev.lifecycle("t5", "new.task", "q", t0=150.0), 150.0)
    snap = model.snapshot(150.0)
    # old.task was idle for 150 s: forgotten with its series; busy.task (idle 90 s) kept
    assert snap.forgotten["task"] == 1
    assert ("new.task", "q") in snap.counters["task-sent"]
    assert not any(name == "old.task" for name, _ in snap.counters["task-sent"])
    assert not any(key[0] == "old.task" for key in snap.runtime)
    assert ("busy.task", "q") in snap.counters["task-sent"]


def test_static_queues_and_unknown_are_never_forgotten():
    model = Model(ModelSettings(max_queues=3, label_ttl=10), static_queues=("critical",))
    model.apply(ev.sent("t1", "a", "q1"), 0.0)
    model.apply(ev.sent("t2", "a", "q2"), 100.0)  # q1 idle for 100 s makes room
    assert model.known_queues() == ["critical", "q2"]
    model.apply(ev.sent("t3", "a", "q3"), 200.0)
    assert model.known_queues() == ["critical", "q3"]


def test_the_stream_may_stay_silent_while_workers_reconnect_after_an_outage():
    """The stall watchdog's allowance: nothing before an outage nor once every worker up was
    heard again; after one, the longest wait of Celery's reconnect schedule among them."""
    model = connected_model(worker_timeout=5)
    model.apply(ev.heartbeat("a@x"), 1000.0)
    model.apply(ev.heartbeat("b@x"), 1010.0)
    assert model.reconnect_grace() == 0.0
    model.link_down()
    model.link_up(1013.0)  # a@x silent for 13 s (wait 8), b@x for 3 s (wait 4)
    assert model.reconnect_grace() == 8.0
    model.apply(ev.heartbeat("a@x"), 1014.0)
    assert model.reconnect_grace() == 4.0
    model.apply(ev.heartbeat("b@x"), 1015.0)
    assert model.reconnect_grace() == 0.0
