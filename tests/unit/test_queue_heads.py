"""The oldest message's age on Redis: task ids read from queue heads, and their dating.

Messages are made by Celery and kombu themselves (kombu's in-memory transport stores
the same envelope the Redis transport writes), so protocols 1 and 2 are real; the
clock is injected and nothing sleeps.
"""

from __future__ import annotations

import json

import pytest
from celery import Celery
from celery_stalk.brokers.heads import (
    BODY_UNREADABLE,
    NO_TASK_ID,
    NOT_JSON,
    HeadAges,
    MalformedHead,
    head_task_id,
)
from celery_stalk.model import Model
from kombu.utils.json import dumps

from tests import events as ev


def celery_message(protocol: int = 2, serializer: str = "json", priority=None) -> tuple[str, bytes]:
    """(task id, the message's bytes as kombu stores them in a Redis list)."""
    app = Celery("heads", broker="memory://")
    app.conf.task_protocol = protocol
    app.conf.task_serializer = serializer
    app.conf.accept_content = [serializer]
    with app.connection_for_write() as conn:
        result = app.send_task("app.add", args=(1, 2), queue="work", connection=conn,
                               priority=priority)
        message = conn.default_channel._get("work")
    return result.id, dumps(message).encode()


@pytest.mark.parametrize("protocol", [1, 2])
def test_task_id_of_a_celery_message_of_either_protocol(protocol):
    task_id, raw = celery_message(protocol)
    assert head_task_id(raw) == task_id


def test_protocol_2_needs_no_body_decoding_whatever_the_serializer():
    task_id, raw = celery_message(2, serializer="pickle")
    assert head_task_id(raw) == task_id


def malformed(raw) -> str:
    with pytest.raises(MalformedHead) as caught:
        head_task_id(raw)
    return caught.value.reason


def test_malformed_heads_say_why():
    _, pickled_v1 = celery_message(1, serializer="pickle")
    assert malformed(pickled_v1) == BODY_UNREADABLE  # never unpickled
    assert malformed(b"\x80\x04not json") == NOT_JSON
    assert malformed(b'["a list"]') == NOT_JSON
    assert malformed(b"") == NOT_JSON
    assert malformed(json.dumps({"headers": {"id": 7}}).encode()) == NO_TASK_ID
    assert malformed(json.dumps({"headers": {"id": "x" * 257}}).encode()) == NO_TASK_ID
    assert malformed(json.dumps({"headers": {"id": ""}}).encode()) == NO_TASK_ID
    assert malformed(json.dumps({"headers": {}}).encode()) == NO_TASK_ID
    v1_without_id = {"body": "eyJ0YXNrIjogImEifQ==", "content-type": "application/json",
                     "headers": {}, "properties": {"body_encoding": "base64"}}
    assert malformed(json.dumps(v1_without_id).encode()) == NO_TASK_ID
    v1_bad_base64 = dict(v1_without_id, body="%%%not base64")
    assert malformed(json.dumps(v1_bad_base64).encode()) == BODY_UNREADABLE


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(task_id: str) -> bytes:
    return json.dumps({"headers": {"id": task_id, "task": "app.add"}, "body": ""}).encode()


def test_a_head_never_sent_ages_from_when_first_seen():
    clock = Clock(1000.0)
    ages = HeadAges(clock=clock)
    assert ages.ages({"work": [("work", message("a"))]}) == {"work": 0.0}
    clock.now = 1042.5
    assert ages.ages({"work": [("work", message("a"))]}) == {"work": 42.5}
    # The next message moves to the head: it is first seen now.
    clock.now = 1050.0
    assert ages.ages({"work": [("work", message("b"))]}) == {"work": 0.0}


def test_a_head_whose_task_sent_was_seen_ages_from_its_send():
    sent = {"a": 900.0}
    clock = Clock(1000.0)
    ages = HeadAges(sent_times=lambda ids: {i: sent[i] for i in ids if i in sent}, clock=clock)
    assert ages.ages({"work": [("work", message("a"))]}) == {"work": 100.0}
    # Dated once for good: the model may forget the task later (its tracker is bounded).
    sent.clear()
    clock.now = 1010.0
    assert ages.ages({"work": [("work", message("a"))]}) == {"work": 110.0}


def test_a_task_sent_that_comes_after_the_head_was_seen_dates_it_then():
    sent = {}
    clock = Clock(1000.0)
    ages = HeadAges(sent_times=lambda ids: {i: sent[i] for i in ids if i in sent}, clock=clock)
    assert ages.ages({"work": [("work", message("a"))]}) == {"work": 0.0}
    sent["a"] = 950.0
    clock.now = 1001.0
    assert ages.ages({"work": [("work", message("a"))]}) == {"work": 51.0}


def test_a_producer_clock_ahead_never_makes_a_head_younger_than_seen():
    clock = Clock(1000.0)
    ages = HeadAges(sent_times=lambda ids: {i: 5000.0 for i in ids}, clock=clock)
    ages.ages({"work": [("work", message("a"))]})
    clock.now = 1020.0
    assert ages.ages({"work": [("work", message("a"))]}) == {"work": 20.0}


def test_the_oldest_head_of_the_base_list_and_priority_lists_is_the_queue_age():
    sent = {"low": 990.0, "high": 700.0}
    ages = HeadAges(sent_times=lambda ids: {i: sent[i] for i in ids if i in sent},
                    clock=Clock(1000.0))
    heads = {"work": [("work", message("low")), ("work\x06\x169", message("high"))],
             "other": [("other", message("fresh"))]}
    assert ages.ages(heads) == {"work": 300.0, "other": 0.0}


def test_an_empty_queue_has_no_age_and_its_heads_are_forgotten():
    clock = Clock(1000.0)
    ages = HeadAges(clock=clock)
    ages.ages({"work": [("work", message("a"))]})
    assert ages.ages({}) == {}
    assert ages.heads == {}  # memory: only the heads of the last read
    clock.now = 1100.0
    # The same message back at the head (requeued): seen anew, not 100 s old.
    assert ages.ages({"work": [("work", message("a"))]}) == {"work": 0.0}


def test_malformed_heads_are_counted_once_and_skipped():
    clock = Clock(1000.0)
    ages = HeadAges(clock=clock)
    heads = {"work": [("work", b"garbage"), ("work\x06\x163", message("a"))],
             "junk": [("junk", b"{}")]}
    for waited in (0.0, 10.0, 20.0):
        assert ages.ages(heads) == {"work": waited}
        clock.now += 10
    assert ages.invalid == {NOT_JSON: 1, NO_TASK_ID: 1, BODY_UNREADABLE: 0}


def test_the_model_gives_the_latest_task_sent_of_tasks_in_flight():
    model = Model()
    model.apply_many([ev.sent("a", "app.add", at=500.0), ev.sent("b", "app.add", at=510.0),
                      ev.received("c", "app.add", at=520.0)], 1000.0)
    assert model.sent_times(["a", "b", "c", "never"]) == {"a": 500.0, "b": 510.0}
    # A retry is a message of its own, sent again.
    model.apply_many([ev.received("a", "app.add"), ev.started("a"),
                      ev.sent("a", "app.add", at=600.0, retries=1)], 1001.0)
    assert model.sent_times(["a"]) == {"a": 600.0}
    model.apply(ev.succeeded("b"), 1002.0)
    assert model.sent_times(["b"]) == {}


def test_a_head_still_undated_a_minute_after_first_seen_is_not_looked_up_again():
    asked = []

    def sent_times(ids):
        asked.append(list(ids))
        return {}

    clock = Clock(1000.0)
    ages = HeadAges(sent_times=sent_times, clock=clock)
    heads = {"work": [("work", message("a"))]}
    ages.ages(heads)
    clock.now = 1059.0
    ages.ages(heads)
    clock.now = 1061.0
    assert ages.ages(heads) == {"work": 61.0}
    assert asked == [["a"], ["a"]]
