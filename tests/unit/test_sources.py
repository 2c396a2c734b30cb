"""The event source's own parts that need no broker: its state and the decoding of bodies.
Reading from real brokers is tested in tests/integration."""

from __future__ import annotations

import json

from celery_stalk.sources.decode import CONTENT_TYPE, NOT_JSON, decode_into
from celery_stalk.sources.state import SourceState


def test_reconnects_count_every_connect_after_the_first_and_stalls_apart():
    state = SourceState()
    assert not state.snapshot().connected
    state.connected()
    state.disconnected()
    state.connected()
    state.stalled()
    state.connected()
    snap = state.snapshot()
    assert snap.connected and snap.reconnects == 2 and snap.stalls == 1


def decode(content_type, body):
    events, invalid = [], []
    decode_into(content_type, body, events, invalid.append)
    return events, invalid


def test_a_batch_is_flattened_and_a_single_event_kept():
    batch = json.dumps([{"type": "task-started"}, {"type": "task-succeeded"}]).encode()
    assert decode("application/json", batch) == ([{"type": "task-started"}, {"type": "task-succeeded"}], [])
    assert decode(None, b'{"type": "worker-heartbeat"}') == ([{"type": "worker-heartbeat"}], [])


def test_what_is_not_json_or_not_json_typed_is_counted_not_raised():
    assert decode("application/x-python-serialize", b"\x80\x04") == ([], [CONTENT_TYPE])
    assert decode("application/json", b"{not json") == ([], [NOT_JSON])


def test_json_nested_deeper_than_any_event_is_counted_as_too_deep():
    from celery_stalk.sources.decode import TOO_DEEP

    for depth in (1100, 100_000):
        assert decode("application/json", b"[" * depth + b"]" * depth) == ([], [TOO_DEEP])
    # not UTF-8 takes the standard library's path: still refused, never a RecursionError
    bad = b"[" * 5000 + b'"\xff"' + b"]" * 5000
    assert decode("application/json", bad) == ([], [TOO_DEEP])
