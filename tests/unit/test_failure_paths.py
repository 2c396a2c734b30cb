"""The model replays the exact events real Celery workers sent on every failure path.

The fixtures in tests/fixtures/events/celery-<version>/<pool>-<scenario>.json were captured
from real workers of the oldest and the newest Celery we support (tests/fixtures/capture_events.py
says how to capture them again). Each replay asserts what an on-call engineer must be able to
rely on, whatever Celery sends:

- one end per task per run (a hard time limit in Celery 5.7 sends two task-failed; gevent
  sends task-succeeded after task-revoked), under the task's own name and queue;
- the exception label is the real class (never the billiard wrapper, never a word of a message);
- Reject(requeue=False) is a rejection, not a failure; Reject(requeue=True) is neither;
- every start, first run or retry or redelivery, is observed once in queue wait, measured from
  that run's send (or ETA/countdown, or the requeue), and never counts as clock skew on a host
  whose producer and worker share one clock.

Each fixture is also replayed in the orders the network may deliver it in: events of one
publisher stay in order, but a producer's task-sent can arrive after the worker's first events
(the worker was faster than the producer's event), even after the retry of the run it sent,
and a retry's task-sent, published at once by the pool process, can overtake the run it
retries, which the worker's main process still holds in its event buffer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from celery_stalk.model import Model, ModelSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
QUEUE = "work"
TICK = 1.0  # as the event consumer ticks the model

# Which pools enforce what (Celery's documentation, confirmed by the fixtures): threads and
# solo enforce no time limit and cannot terminate a running task; gevent enforces the hard
# limit only, and terminates only since Celery 5.3 (5.2's gevent pool sends no end at all for a
# task stopped at its hard limit: that capture is marked events_lost).
HARD_LIMIT_POOLS = {"prefork", "gevent"}
SOFT_LIMIT_POOLS = {"prefork"}


def terminate_pools(version: str) -> set[str]:
    return {"prefork"} if version.startswith("5.2.") else {"prefork", "gevent"}


@dataclass
class Outcome:
    """What the counters must read after a scenario: counts per lifecycle event of its task."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    rejected: int = 0
    revoked: int = 0
    exceptions: dict[str, int] = field(default_factory=dict)


def expected(scenario: str, pool: str, version: str) -> Outcome:
    if scenario == "success":
        return Outcome(succeeded=2)
    if scenario == "eta":
        return Outcome(succeeded=1)
    if scenario == "hard_time_limit":
        if pool in HARD_LIMIT_POOLS:
            return Outcome(failed=2, exceptions={"TimeLimitExceeded": 2})
        return Outcome(succeeded=2)
    if scenario == "soft_time_limit":
        if pool in SOFT_LIMIT_POOLS:
            return Outcome(failed=1, exceptions={"SoftTimeLimitExceeded": 1})
        return Outcome(succeeded=1)
    if scenario == "kill_pool_process":
        return Outcome(failed=1, exceptions={"WorkerLostError": 1})
    if scenario == "reject":
        return Outcome(rejected=1)
    if scenario == "reject_requeue":  # rejected once, redelivered, then succeeded
        return Outcome(rejected=1, succeeded=1)
    if scenario == "revoke_terminate":
        return Outcome(revoked=1) if pool in terminate_pools(version) else Outcome(succeeded=1)
    if scenario in ("retry_success", "autoretry"):
        return Outcome(retried=2, succeeded=1)
    if scenario == "retry_exhausted":
        return Outcome(retried=2, failed=1, exceptions={"ConnectionError": 1})
    raise AssertionError(f"no expected outcome for scenario {scenario}")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def fixture_paths() -> list[Path]:
    return sorted(FIXTURES.glob("celery-*/*.json"))


def fixture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


FIXTURE_PATHS = fixture_paths()


@pytest.fixture(params=FIXTURE_PATHS, ids=[fixture_id(p) for p in FIXTURE_PATHS])
def captured(request) -> dict:
    data = load(request.param)
    if data.get("events_lost"):
        pytest.skip("Celery lost some of this capture's events (see events_lost in the file)")
    return data


def test_every_version_and_pool_was_captured():
    versions = {p.parent.name for p in FIXTURE_PATHS}
    assert {"celery-5.2.7", "celery-5.7.0"} <= versions
    for version in versions:
        pools = {p.stem.split("-", 1)[0] for p in FIXTURE_PATHS if p.parent.name == version}
        assert {"prefork", "threads", "solo"} <= pools, version


# -- replay -------------------------------------------------------------------------


def replay(events: list[dict], received_at: list[float]) -> Model:
    """Apply events as the consumer would: each at its arrival time, ticking every second,
    then long enough after the last one for anything held to be released."""
    model = Model(ModelSettings())
    next_tick = received_at[0] if received_at else 0.0
    for event, now in zip(events, received_at):
        if now >= next_tick:
            model.tick(now)
            next_tick = now + TICK
        model.apply(event, now)
    end = (received_at[-1] if received_at else 0.0) + 30.0
    model.tick(end)
    return model


def reference_waits(events: list[dict]) -> list[float]:
    """Each start's queue wait, worked out with the whole capture in view (the model sees one
    event at a time): from the send of the run the start belongs to (its retries number, as
    the worker's task-received said), or that send's ETA if later, or the requeue that put
    the message back."""
    sends: dict[tuple[str, int], float] = {}
    for event in events:
        if event["type"] == "task-sent":
            begin = event["timestamp"]
            if event.get("eta"):
                eta = datetime.fromisoformat(event["eta"])
                if eta.tzinfo is None:
                    eta = eta.replace(tzinfo=timezone.utc)
                begin = max(begin, eta.timestamp())
            sends[(event["uuid"], event["retries"])] = begin
    # Runs received and not started yet, in order: a start is the earliest one's (a run's
    # retry can be received before the worker reports that run's start).
    unstarted: dict[str, list[int]] = {}
    run: dict[str, int] = {}
    requeued: dict[tuple[str, int], float] = {}
    waits = []
    for event in events:
        kind, task_id = event["type"], event.get("uuid")
        if kind == "task-received":
            unstarted.setdefault(task_id, []).append(event["retries"])
        elif kind == "task-rejected" and event.get("requeue"):
            requeued[(task_id, run[task_id])] = event["timestamp"]
        elif kind == "task-started":
            run[task_id] = unstarted[task_id].pop(0)
            key = (task_id, run[task_id])
            begin = requeued.pop(key) if key in requeued else sends.pop(key)
            # Celery stamps task-sent after publishing: a fast start can come out a
            # millisecond "before" the send on one clock, observed as 0.
            waits.append(max(0.0, event["timestamp"] - begin))
    return waits


def check(data: dict, events: list[dict], received_at: list[float]) -> None:
    names = {task["name"] for task in data["tasks"]}
    assert len(names) == 1
    labels = (names.pop(), QUEUE)
    want = expected(data["scenario"], data["pool"], data["celery"])
    snap = replay(events, received_at).snapshot(received_at[-1] + 30.0)

    def count(kind: str) -> dict:
        return snap.counters[f"task-{kind}"]

    def only(n: int) -> dict:
        return {labels: n} if n else {}

    # one end per task per run, under the task's own name and queue
    assert count("succeeded") == only(want.succeeded)
    assert count("failed") == only(want.failed)
    assert count("retried") == only(want.retried)
    assert count("rejected") == only(want.rejected)
    assert count("revoked") == only(want.revoked)
    assert snap.exceptions == {(*labels, exc): n for exc, n in want.exceptions.items()}
    # every event Celery sent is counted, each under the right labels
    starts = sum(1 for e in events if e["type"] == "task-started")
    assert count("started") == only(starts)
    assert count("received") == only(sum(1 for e in events if e["type"] == "task-received"))
    assert count("sent") == only(sum(1 for e in events if e["type"] == "task-sent"))
    assert snap.name_unknown == {}
    # every start observed once, from its own run's send/ETA/requeue; no skew on one host
    waits = reference_waits(events)
    assert len(waits) == starts
    assert snap.clock_skew == 0
    hist = snap.wait[labels]
    assert sum(hist.counts) == starts
    assert hist.total == pytest.approx(sum(waits), abs=1e-6)
    buckets = [0] * (len(snap.wait_buckets) + 1)  # each one in its bucket, not just the sum
    for wait in waits:
        buckets[next((i for i, le in enumerate(snap.wait_buckets) if wait <= le), -1)] += 1
    assert hist.counts == buckets
    # nothing left behind for a task that ended
    assert snap.tracked_tasks == 0


def test_replay_as_captured(captured):
    check(captured, captured["events"], captured["received_at"])


# -- the orders the network may deliver them in --------------------------------------


def move(events: list[dict], times: list[float], source: int, target: int):
    """``events`` with the event at ``source`` moved to just before ``target``. Every
    event keeps its arrival time but the moved one, which arrives with the event it now
    follows."""
    events, times = list(events), list(times)
    event, at = events.pop(source), times.pop(source)
    index = target if target < source else target - 1
    events.insert(index, event)
    times.insert(index, times[index - 1] if index else at)
    return events, times


def sent_after_worker(events: list[dict], times: list[float]):
    """Each first task-sent arrives right after its task's first task-started: the worker
    received and started the task before the producer's task-sent event got through."""
    for task_id in [e["uuid"] for e in events if e["type"] == "task-sent" and e["retries"] == 0]:
        source = next(i for i, e in enumerate(events)
                      if e["type"] == "task-sent" and e["uuid"] == task_id and e["retries"] == 0)
        starts = [i for i, e in enumerate(events)
                  if e["type"] == "task-started" and e["uuid"] == task_id]
        if starts and starts[0] > source:  # else it came after the first start already
            events, times = move(events, times, source, starts[0] + 1)
    return events, times


def sent_after_retry(events: list[dict], times: list[float]):
    """A producer's task-sent arrives even after the worker received the task's retry: the
    producer was descheduled between publishing the task and its task-sent event."""
    for task_id in [e["uuid"] for e in events if e["type"] == "task-sent" and e["retries"] == 0]:
        source = next(i for i, e in enumerate(events)
                      if e["type"] == "task-sent" and e["uuid"] == task_id and e["retries"] == 0)
        retry = [i for i, e in enumerate(events) if e["type"] == "task-received"
                 and e["uuid"] == task_id and e["retries"] == 1]
        if retry and retry[0] > source:
            events, times = move(events, times, source, retry[0] + 1)
    return events, times


def before_the_retried_start(kind: str, events: list[dict], times: list[float]):
    """Each retry's ``kind`` event moved to just before the task-started of the run that
    retried."""
    for index in [i for i, e in enumerate(events) if e["type"] == kind and e["retries"]]:
        task_id = events[index]["uuid"]
        starts = [i for i, e in enumerate(events[:index])
                  if e["type"] == "task-started" and e["uuid"] == task_id]
        if starts:
            events, times = move(events, times, index, starts[-1])
    return events, times


def retry_sent_first(events: list[dict], times: list[float]):
    """Each retry's task-sent (published at once by the pool process) arrives before the
    task-started of the run that retried, still in the worker's event buffer."""
    return before_the_retried_start("task-sent", events, times)


def retry_received_first(events: list[dict], times: list[float]):
    """Each retry's task-received comes before the task-started of the run that retried:
    the worker's main process read the retry's message from the broker before the pool
    process's word that it had accepted the run (a race of two file descriptors)."""
    return before_the_retried_start("task-received", events, times)


def retry_sent_and_received_first(events: list[dict], times: list[float]):
    """Both of the above: the retry's task-sent and task-received before the retried start."""
    return retry_received_first(*retry_sent_first(events, times))


REORDERS = (sent_after_worker, sent_after_retry, retry_sent_first, retry_received_first,
            retry_sent_and_received_first)


def reordered() -> list:
    """(fixture, reorder) for every reorder that changes a fixture's order."""
    cases = []
    for path in FIXTURE_PATHS:
        data = load(path)
        for reorder in REORDERS:
            if reorder(data["events"], data["received_at"])[0] != data["events"]:
                cases.append(pytest.param(path, reorder,
                                          id=f"{fixture_id(path)}-{reorder.__name__}"))
    return cases


@pytest.mark.parametrize("path, reorder", reordered())
def test_replay_in_another_order_the_network_allows(path, reorder):
    data = load(path)
    if data.get("events_lost"):
        pytest.skip("Celery lost some of this capture's events (see events_lost in the file)")
    events, times = reorder(data["events"], data["received_at"])
    assert sorted(map(json.dumps, events)) == sorted(map(json.dumps, data["events"]))
    assert times == sorted(times)
    check(data, events, times)


# -- the rules behind it, one at a time -------------------------------------------

TIME_LIMIT_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/venv/lib/python3.11/site-packages/billiard/pool.py", line 745, in on_hard_timeout\n'
    "    raise TimeLimitExceeded(job._timeout)\n"
    "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(2,)\n"
)
CHAINED_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "app.py", line 3, in run\n'
    "    connect()\n"
    "ConnectionError: refused\n"
    "\n"
    "During handling of the above exception, another exception occurred:\n"
    "\n"
    "Traceback (most recent call last):\n"
    '  File "app.py", line 5, in run\n'
    "    raise PaymentError('card\\ndeclined')\n"
    "    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    "shop.errors.PaymentError: card\n"
    "declined: see the log\n"
)


@pytest.mark.parametrize(
    "exception, traceback, label",
    [
        ("ExceptionWithTraceback()", TIME_LIMIT_TRACEBACK, "TimeLimitExceeded"),
        ("ExceptionWithTraceback()",
         "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    pass\n"
         "billiard.exceptions.WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL) "
         "Job: 0.\n", "WorkerLostError"),
        ("ExceptionWithTraceback()", None, "unknown"),  # the wrapper is never a label
        ("reject requeue=False: not for this worker",
         "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    pass\n"
         "celery.exceptions.Reject: ('not for this worker', False)\n", "Reject"),
        ("reject requeue=False: not for this worker", None, "unknown"),  # never a word of it
        ("PaymentError('card\\ndeclined')", CHAINED_TRACEBACK, "PaymentError"),
        ("<unprintable PaymentError object>", CHAINED_TRACEBACK, "PaymentError"),
        ("TimeLimitExceeded(2)", TIME_LIMIT_TRACEBACK, "TimeLimitExceeded"),  # Celery 5.2
        ("ValueError('x')", "not a traceback at all", "ValueError"),
        ("ExceptionWithTraceback()", "x" * 100_000 + "\n" + TIME_LIMIT_TRACEBACK,
         "TimeLimitExceeded"),
    ],
)
def test_exception_label_is_the_real_class(exception, traceback, label):
    from celery_stalk.model import exception_class

    assert exception_class(exception, traceback) == label


def sent(task_id, name, at, queue=QUEUE, retries=0, eta=None):
    return {"type": "task-sent", "uuid": task_id, "name": name, "queue": queue, "retries": retries,
            "eta": eta, "timestamp": at, "hostname": "producer@web"}


def worker_event(kind, task_id, at, **fields):
    return {"type": kind, "uuid": task_id, "timestamp": at, "hostname": "w1@host", **fields}


def run(task_id, name, at, retries=0):
    return [worker_event("task-received", task_id, at, name=name, retries=retries),
            worker_event("task-started", task_id, at + 0.01)]


def test_events_held_for_a_late_sent_are_counted_under_its_queue_once():
    model = Model()
    for event in [*run("t1", "app.first", 100.0),
                  worker_event("task-succeeded", "t1", 100.02, runtime=0.01)]:
        model.apply(event, 100.0)
    snap = model.snapshot(100.0)
    assert snap.counters["task-received"] == {}  # held, not counted under queue="unknown"
    model.apply(sent("t1", "app.first", 99.99, queue="mail"), 100.5)
    model.tick(110.0)  # long after the hold: nothing is counted twice
    snap = model.snapshot(110.0)
    key = ("app.first", "mail")
    for kind in ("sent", "received", "started", "succeeded"):
        assert snap.counters[f"task-{kind}"] == {key: 1}, kind
    assert sum(snap.wait[key].counts) == 1
    assert snap.wait[key].total == pytest.approx(0.02)
    assert sum(snap.runtime[key].counts) == 1
    assert snap.tracked_tasks == 0 and snap.clock_skew == 0


def test_events_whose_sent_never_comes_are_counted_after_the_hold_and_not_held_again():
    model = Model()
    hold = model.settings.queue_hold
    for event in run("t1", "app.nosent", 100.0):
        model.apply(event, 100.0)
    model.tick(100.0 + hold - 0.1)
    assert model.snapshot(100.0 + hold).counters["task-started"] == {}
    model.tick(100.0 + hold)  # the hold is over: counted by the fallback rules
    snap = model.snapshot(100.0 + hold)
    assert snap.counters["task-received"] == {("app.nosent", "unknown"): 1}
    assert snap.counters["task-started"] == {("app.nosent", "unknown"): 1}
    later = 101.0 + hold
    model.apply(worker_event("task-succeeded", "t1", later, runtime=3.0), later)
    for event in run("t2", "app.nosent", later):  # its producers send no task-sent
        model.apply(event, later)
    snap = model.snapshot(later)
    assert snap.counters["task-succeeded"] == {("app.nosent", "unknown"): 1}
    assert snap.counters["task-started"] == {("app.nosent", "unknown"): 2}
    assert snap.tracked_tasks == 1


def test_a_requeued_rejection_held_for_a_late_sent_is_no_end():
    """Reject(requeue=True) while the task's events wait for its task-sent: the redelivery
    that follows is the same task, still tracked, and its success is counted once."""
    model = Model()
    hold = model.settings.queue_hold
    for event in [*run("t1", "app.requeued", 100.0),
                  worker_event("task-rejected", "t1", 100.1, requeue=True)]:
        model.apply(event, 100.1)
    model.tick(100.1 + hold)  # released by the fallback rules: counted, not ended
    snap = model.snapshot(100.1 + hold)
    key = ("app.requeued", "unknown")
    assert snap.counters["task-rejected"] == {key: 1}
    assert snap.tracked_tasks == 1
    later = 101.0 + hold
    for event in [*run("t1", "app.requeued", later),
                  worker_event("task-succeeded", "t1", later + 0.1, runtime=0.05)]:
        model.apply(event, later + 0.1)
    snap = model.snapshot(later + 0.1)
    assert snap.counters["task-succeeded"] == {key: 1}
    assert snap.counters["task-started"] == {key: 2}
    assert snap.tracked_tasks == 0


def test_a_known_name_or_a_route_is_never_held():
    model = Model(routes=(("app.routed", "fast"),))
    model.apply(sent("t0", "app.known", 99.0, queue="slow"), 99.0)
    for event in [*run("t1", "app.known", 100.0), *run("t2", "app.routed", 100.0)]:
        model.apply(event, 100.0)
    snap = model.snapshot(100.0)
    assert snap.counters["task-started"] == {("app.known", "slow"): 1, ("app.routed", "fast"): 1}


def test_a_redelivered_task_is_a_new_run_that_ends_again():
    model = Model()
    events = [
        sent("t1", "app.job", 100.0),
        *run("t1", "app.job", 100.1),
        worker_event("task-failed", "t1", 100.5, exception="ExceptionWithTraceback()",
                     traceback="billiard.exceptions.WorkerLostError: Worker exited prematurely"),
        worker_event("task-failed", "t1", 100.5, exception="ExceptionWithTraceback()",
                     traceback="billiard.exceptions.WorkerLostError: Worker exited prematurely"),
        # acks_late + task_reject_on_worker_lost: the message comes back
        *run("t1", "app.job", 101.0),
        worker_event("task-succeeded", "t1", 101.2, runtime=0.1),
        worker_event("task-succeeded", "t1", 101.2, runtime=0.1),
    ]
    for event in events:
        model.apply(event, 102.0)
    snap = model.snapshot(102.0)
    key = ("app.job", QUEUE)
    assert snap.counters["task-failed"] == {key: 1}
    assert snap.exceptions == {(*key, "WorkerLostError"): 1}
    assert snap.counters["task-succeeded"] == {key: 1}
    assert snap.counters["task-started"] == {key: 2}
    assert snap.events["task-failed"] == 2  # every event Celery sent is still applied


def test_the_memory_of_ended_tasks_is_bounded():
    model = Model(ModelSettings(ended_task_memory=100))
    for i in range(1000):
        task_id = f"t{i}"
        for event in [sent(task_id, "app.job", 100.0), *run(task_id, "app.job", 100.1),
                      worker_event("task-succeeded", task_id, 100.2, runtime=0.1)]:
            model.apply(event, 101.0)
    assert len(model.tasks.ended) <= 100
    model.apply(worker_event("task-succeeded", "t999", 100.2, runtime=0.1), 101.0)
    assert model.snapshot(101.0).counters["task-succeeded"] == {("app.job", QUEUE): 1000}


def test_a_negative_wait_between_hosts_still_counts_as_skew():
    model = Model()
    for event in [sent("t1", "app.job", 100.0), *run("t1", "app.job", 95.0),
                  sent("t2", "app.job", 100.0), *run("t2", "app.job", 99.99)]:
        model.apply(event, 101.0)
    snap = model.snapshot(101.0)
    # 5 s apart: skew; 10 ms "before" the send: the send was stamped after publishing
    assert snap.clock_skew == 1
    assert snap.wait[("app.job", QUEUE)].counts[0] == 2  # both observed as 0


def test_a_retry_received_before_the_start_of_the_run_it_retries():
    """The worker's main process can read a retry's message before its pool process's word
    that it accepted the run that retried: the next task-started is still that run's."""
    model = Model()
    eta = "2026-01-01T00:00:00.200000+00:00"
    zero = datetime.fromisoformat(eta).timestamp() - 0.2
    events = [
        sent("t1", "app.retrying", zero),
        worker_event("task-received", "t1", zero + 0.01, name="app.retrying", retries=0),
        sent("t1", "app.retrying", zero + 0.04, retries=1, eta=eta),
        worker_event("task-received", "t1", zero + 0.05, name="app.retrying", retries=1),
        worker_event("task-started", "t1", zero + 0.06),  # run 0's, waited 0.06 s
        worker_event("task-retried", "t1", zero + 0.07),
        worker_event("task-started", "t1", zero + 0.25),  # run 1's: 0.05 s after its ETA
        worker_event("task-succeeded", "t1", zero + 0.3, runtime=0.05),
    ]
    for event in events:
        model.apply(event, event["timestamp"])
    snap = model.snapshot(zero + 1)
    key = ("app.retrying", QUEUE)
    assert sum(snap.wait[key].counts) == 2
    assert snap.wait[key].total == pytest.approx(0.06 + 0.05)
    assert snap.clock_skew == 0 and snap.tracked_tasks == 0


def test_a_retry_whose_run_start_was_lost_is_measured_from_its_own_send():
    """Run 0's task-started never came (its task-retried did): run 1's start is run 1's."""
    model = Model()
    events = [
        sent("t1", "app.retrying", 100.0),
        worker_event("task-received", "t1", 100.01, name="app.retrying", retries=0),
        sent("t1", "app.retrying", 100.04, retries=1),
        worker_event("task-received", "t1", 100.05, name="app.retrying", retries=1),
        worker_event("task-retried", "t1", 100.07),
        worker_event("task-started", "t1", 100.10),
        worker_event("task-succeeded", "t1", 100.2, runtime=0.1),
    ]
    for event in events:
        model.apply(event, event["timestamp"])
    snap = model.snapshot(101.0)
    key = ("app.retrying", QUEUE)
    assert sum(snap.wait[key].counts) == 1
    assert snap.wait[key].total == pytest.approx(0.06)
    assert snap.clock_skew == 0 and snap.tracked_tasks == 0
