"""Worker capacity from inspect stats: replies read, failures counted, the last answer kept."""

from __future__ import annotations

import pytest
from celery_stalk.capacity import CapacityPoller, WorkerCapacity, capacities
from celery_stalk.config import Config, ConfigError


def stats(concurrency, prefetch):
    # The shape of a reply of Celery's inspect stats (trimmed to what is read).
    return {"broker": {"transport": "redis"}, "pid": 7, "prefetch_count": prefetch,
            "pool": {"implementation": "celery.concurrency.prefork:TaskPool",
                     "max-concurrency": concurrency, "processes": [11, 12]}}


def test_replies_become_concurrency_and_prefetch_per_worker():
    replies = {"w1@a": stats(4, 16), "w2@b": stats(1, 4)}
    assert capacities(replies, 10) == {"w1@a": WorkerCapacity(4, 16, "prefork"),
                                       "w2@b": WorkerCapacity(1, 4, "prefork")}


def test_no_reply_is_no_worker():
    assert capacities(None, 10) == {}


@pytest.mark.parametrize("reply", [
    "not a dict", {"pool": "x", "prefetch_count": "16"}, {"pool": {"max-concurrency": -1}},
    {"pool": {"max-concurrency": True}}, {"error": "No handler"},
])
def test_malformed_replies_are_skipped(reply):
    assert capacities({"w1@a": reply, "w2@b": stats(2, 8)}, 10) == {"w2@b": WorkerCapacity(2, 8, "prefork")}


def test_bad_worker_names_are_skipped_and_workers_capped():
    replies = {"": stats(1, 1), "x" * 400: stats(1, 1), 7: stats(1, 1),
               **{f"w{i}@a": stats(i + 1, 4) for i in range(5)}}
    found = capacities(replies, 3)
    assert list(found) == ["w0@a", "w1@a", "w2@a"]


def test_half_a_reply_is_kept():
    assert capacities({"w@a": {"prefetch_count": 8}}, 5) == {"w@a": WorkerCapacity(None, 8, None)}


def test_poller_keeps_the_last_answer_through_failures_and_counts_them():
    answers = [{"w1@a": stats(4, 16)}, ConnectionError("refused"), TimeoutError("slow"),
               {"w2@b": stats(2, 8)}]
    asked_with = []

    def ask(timeout):
        asked_with.append(timeout)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = iter([100.0, 400.0])
    poller = CapacityPoller(ask, interval=60, timeout=2.5, max_workers=10,
                            clock=lambda: next(clock))
    first = poller.snapshot()
    assert (first.workers, first.last_success, first.failures) == ({}, None, 0)
    assert poller.poll()
    assert not poller.poll()
    assert not poller.poll()
    snap = poller.snapshot()
    assert snap.workers == {"w1@a": WorkerCapacity(4, 16, "prefork")}
    assert (snap.last_success, snap.failures) == (100.0, 2)
    assert poller.poll()
    snap = poller.snapshot()
    assert snap.workers == {"w2@b": WorkerCapacity(2, 8, "prefork")}  # w1 did not answer: gone
    assert (snap.last_success, snap.failures) == (400.0, 2)
    assert asked_with == [2.5] * 4


def test_inspect_interval_zero_is_off_and_negative_is_refused():
    assert Config.parse(broker_url="redis://r/0", inspect_interval="0").inspect_interval == 0
    assert Config.parse(broker_url="redis://r/0").inspect_interval == 60
    with pytest.raises(ConfigError) as error:
        Config.parse(broker_url="redis://r/0", inspect_interval="-1", inspect_timeout="0")
    text = str(error.value)
    assert "--inspect-interval: '-1' is not a number of seconds >= 0 (0: off)" in text
    assert "--inspect-timeout" in text


@pytest.mark.parametrize("implementation, kind", [
    ("celery.concurrency.prefork:TaskPool", "prefork"),
    ("celery.concurrency.gevent:TaskPool", "gevent"),
    ("celery.concurrency.solo:TaskPool", "solo"),
    ("TaskPool", None),  # no module named
    (7, None),
    ("celery.concurrency." + "x" * 301 + ":TaskPool", None),  # too long to print
])
def test_pool_kind_is_the_implementation_module(implementation, kind):
    reply = stats(2, 8)
    reply["pool"]["implementation"] = implementation
    assert capacities({"w@a": reply}, 5)["w@a"].pool == kind
