"""Property-based: the model fed hostile input never raises, skips and counts every bad
event by reason, counts the good ones around it exactly, and stays bounded.
Injected clock, no broker, no sleep."""

from __future__ import annotations

import math
from collections import Counter

from celery_stalk import __version__
from celery_stalk.collectors import Exporter, model_collectors
from celery_stalk.model import (
    BAD_VALUE,
    MAX_DURATION,
    MAX_LABEL_LENGTH,
    MISSING_FIELD,
    MISSING_TYPE,
    NOT_AN_OBJECT,
    TASK_EVENTS,
    WORKER_EVENTS,
    Model,
    ModelSettings,
    exception_class,
)
from celery_stalk.sources import SourceState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests import events as ev

PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies ----------------------------------------------------------------

# Text as a Python str can hold it after a lenient decode: any code point,
# lone surrogates included (what undecodable bytes become).
any_text = st.text(st.characters(blacklist_categories=()), max_size=40)
huge_text = st.integers(MAX_LABEL_LENGTH + 1, 100_000).map(lambda n: "x" * n)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
event_types = st.sampled_from(TASK_EVENTS + WORKER_EVENTS + ("task-cancelled", "worker-custom"))
# Dicts shaped like events, with every field of any type: the worst a producer can send.
event_like = st.fixed_dictionaries(
    {"type": event_types},
    optional={
        key: json_values | huge_text
        for key in ("uuid", "name", "queue", "routing_key", "hostname", "exception", "eta",
                    "requeue", "sw_ver")
    } | {key: numbers | json_values for key in ("timestamp", "runtime", "freq", "active",
                                                  "processed", "utcoffset")},
)

names = st.text("abcdefghij._", min_size=1, max_size=12)
hosts = names.map(lambda n: f"celery@{n}")
timestamps = st.floats(-1e12, 1e12)  # far in the past and the future, per event
utcoffsets = st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.none() | any_text


@st.composite
def good_events(draw):
    """Valid Celery events: task lifecycles (sometimes out of order, duplicated, with
    clocks far off and odd utcoffsets) and worker heartbeats."""
    events = []
    for i in range(draw(st.integers(0, 6))):
        task_id, name = f"t{i}", draw(names)
        times = draw(st.lists(timestamps, min_size=4, max_size=4))
        life = [
            ev.sent(task_id, name, draw(names), at=times[0]),
            ev.received(task_id, name, at=times[1], hostname=draw(hosts)),
            ev.started(task_id, at=times[2]),
            draw(st.sampled_from([
                ev.succeeded(task_id, runtime=draw(numbers), at=times[3]),
                ev.failed(task_id, exception=draw(any_text | huge_text), at=times[3]),
                ev.retried(task_id), ev.rejected(task_id), ev.revoked(task_id),
            ])),
        ]
        life = draw(st.permutations(life))  # e.g. succeeded before received
        life += draw(st.lists(st.sampled_from(life), max_size=2))  # duplicates
        for event in life:
            event["utcoffset"] = draw(utcoffsets)
        events += life
    for _ in range(draw(st.integers(0, 3))):
        events.append(ev.heartbeat(draw(hosts), active=draw(st.integers(0, 10)), freq=2.0))
    return draw(st.permutations(events))


def bad_events():
    """(event, the reason it must be skipped with)."""
    not_a_string = st.none() | st.booleans() | numbers | st.lists(st.integers(), max_size=2)
    unusable = st.just("") | huge_text | st.just("task\udcff") | st.just("\ud800")
    task_kind = st.sampled_from(TASK_EVENTS)
    named_kind = st.sampled_from(("task-sent", "task-received"))
    worker_kind = st.sampled_from(WORKER_EVENTS)
    return st.one_of(
        st.tuples(json_values.filter(lambda v: not isinstance(v, dict)), st.just(NOT_AN_OBJECT)),
        st.tuples(st.dictionaries(st.just("type"), not_a_string, max_size=1), st.just(MISSING_TYPE)),
        st.tuples(st.builds(lambda k, u: {"type": k, "uuid": u, "name": "n"}, task_kind, not_a_string),
                  st.just(MISSING_FIELD)),
        st.tuples(st.builds(lambda k, n: {"type": k, "uuid": "u", "name": n}, named_kind, not_a_string),
                  st.just(MISSING_FIELD)),
        st.tuples(st.builds(lambda k, n: {"type": k, "uuid": "u", "name": n}, named_kind, unusable),
                  st.just(BAD_VALUE)),
        st.tuples(st.builds(lambda k: {"type": k, "uuid": "u" * 300, "name": "n"}, task_kind),
                  st.just(BAD_VALUE)),
        st.tuples(st.builds(lambda q: {"type": "task-sent", "uuid": "u", "name": "n", "queue": q},
                            huge_text | st.just("q\udcff")), st.just(BAD_VALUE)),
        st.tuples(st.builds(lambda k, h: {"type": k, "hostname": h}, worker_kind, not_a_string),
                  st.just(MISSING_FIELD)),
        st.tuples(st.builds(lambda k, h: {"type": k, "hostname": h}, worker_kind, unusable),
                  st.just(BAD_VALUE)),
    )


# -- helpers -------------------------------------------------------------------


def connected(**kwargs) -> Model:
    model = Model(ModelSettings(**kwargs))
    model.link_up(1000.0)
    return model


def settled(model: Model, now: float = 1000.0) -> Model:
    """Past the hold for late task-sent events: everything applied is counted."""
    model.tick(now + model.settings.queue_hold)
    return model


ENDS = ("task-succeeded", "task-failed", "task-revoked", "task-rejected")


def expected_counts(events: list) -> Counter:
    """Task events counted by kind: every one, except a second end of a run (an end of
    a task that ended and was not received or started since) and a task-failed that
    reports a Reject (the task-rejected after it is the rejection)."""
    counts: Counter = Counter()
    ended: set = set()
    for event in events:
        kind, task_id = event["type"], event.get("uuid")
        if kind in ("task-received", "task-started"):
            ended.discard(task_id)
        if kind == "task-failed" and exception_class(event.get("exception"),
                                                     event.get("traceback")) == "Reject":
            continue
        if kind in ENDS and not (kind == "task-rejected" and event.get("requeue")):
            if task_id in ended:
                continue
            ended.add(task_id)
        counts[kind] += 1
    return counts


def counted(snap) -> dict:
    """Everything the good events produce, for comparing two replays."""
    return {
        "counters": snap.counters,
        "exceptions": snap.exceptions,
        "runtime": {k: (h.counts, h.total) for k, h in snap.runtime.items()},
        "wait": {k: (h.counts, h.total) for k, h in snap.wait.items()},
        "events": snap.events,
        "workers": {k: (v.up, v.active) for k, v in snap.workers.items()},
        "name_unknown": snap.name_unknown,
        "clock_skew": snap.clock_skew,
    }


def render(model: Model) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Exporter(model_collectors(model, SourceState(), clock=lambda: 1001.0),
                               __version__))
    return generate_latest(registry).decode("utf-8")


# -- properties ----------------------------------------------------------------


@PROPERTY
@given(st.lists(event_like | json_values, max_size=25))
def test_any_input_is_applied_or_counted_invalid_never_raised(events):
    model = connected()
    for event in events:
        model.apply(event, 1000.0)
    model.tick(1001.0)
    snap = model.snapshot(1001.0)
    assert sum(snap.events.values()) + sum(snap.invalid.values()) == len(events)
    for kind, hist in list(snap.runtime.items()) + list(snap.wait.items()):
        assert math.isfinite(hist.total) and 0 <= hist.total <= MAX_DURATION * sum(hist.counts), kind

    # and whatever went in, the scrape renders, parses, and carries only sane labels
    text = render(model)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert math.isfinite(sample.value) or sample.name.endswith("_bucket"), sample
            for value in sample.labels.values():
                assert len(value) <= MAX_LABEL_LENGTH, sample.name


@PROPERTY
@given(good_events(), st.lists(bad_events(), max_size=12), st.randoms(use_true_random=False))
def test_bad_events_are_skipped_by_reason_and_good_ones_around_them_counted_exactly(good, bad, rng):
    mixed = list(good)
    for event, _ in bad:
        mixed.insert(rng.randint(0, len(mixed)), event)

    alone, among_bad = connected(), connected()
    alone.apply_many(good, 1000.0)
    for event in mixed:  # one by one, and as one task.multi batch: same result
        among_bad.apply(event, 1000.0)
    batched = connected()
    batched.apply_many(mixed, 1000.0)

    expected = counted(settled(alone).snapshot(1000.0))
    for model in (among_bad, batched):
        snap = settled(model).snapshot(1000.0)
        assert counted(snap) == expected
        assert snap.invalid == dict(Counter(reason for _, reason in bad))
    kinds = expected_counts(good)
    snap = alone.snapshot(1000.0)
    for kind in TASK_EVENTS:
        assert sum(snap.counters[kind].values()) == kinds[kind], kind


@PROPERTY
@given(good_events(), st.lists(event_like, max_size=10))
def test_counters_never_go_backwards(good, noise):
    model = connected()
    previous: dict = {}
    for i, event in enumerate(list(good) + list(noise)):
        model.apply(event, 1000.0 + i)
        model.tick(1000.0 + i)
        snap = model.snapshot(1000.0 + i)
        now = {("events", k): v for k, v in snap.events.items()}
        now.update({("invalid", k): v for k, v in snap.invalid.items()})
        for kind, series in snap.counters.items():
            now.update({(kind, k): v for k, v in series.items()})
        now.update({("runtime", k): sum(h.counts) for k, h in snap.runtime.items()})
        now[("lost",)] = snap.workers_lost
        for key, value in previous.items():
            assert now.get(key, 0) >= value, key
        previous = now


@PROPERTY
@given(st.lists(st.tuples(names, names, hosts, st.sampled_from(["A()", "B()", "C()", "D()"])),
                min_size=1, max_size=40))
def test_series_stay_within_the_caps(tasks):
    caps = dict(max_task_names=4, max_queues=3, max_exceptions=2, max_workers=3, max_tracked_tasks=6)
    model = connected(**caps)
    for i, (name, queue, host, exc) in enumerate(tasks):
        model.apply_many([
            ev.sent(f"t{i}", name, queue), ev.received(f"t{i}", name, hostname=host),
            ev.failed(f"t{i}", exception=exc), ev.heartbeat(host),
            ev.sent(f"pending{i}", name, queue),  # never finishes: the tracker must cap it
        ], 1000.0)
    snap = model.snapshot(1000.0)
    labels = [key for series in snap.counters.values() for key in series]
    # +1: the reserved "unknown" counts toward a cap, "other" does not
    assert len({task for task, _ in labels}) <= caps["max_task_names"] + 1
    assert len({queue for _, queue in labels}) <= caps["max_queues"] + 1
    assert len({exc for *_, exc in snap.exceptions}) <= caps["max_exceptions"] + 1
    assert len(snap.workers) <= caps["max_workers"]
    assert snap.tracked_tasks <= caps["max_tracked_tasks"]
    assert sum(snap.counters["task-sent"].values()) == 2 * len(tasks)  # relabelled, not lost
