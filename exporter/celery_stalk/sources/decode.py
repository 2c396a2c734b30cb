"""From a message body to Celery events, counting what cannot be read.

Every transport's reader hands over (content type, body) pairs; what is not a
JSON object or list of them is counted under a reason and skipped, never
raised: one bad message must not cost the good ones around it.
"""

from __future__ import annotations

import json
from typing import Callable

import orjson

ACCEPTED_CONTENT_TYPES = frozenset({"application/json", "", None})

# Reasons a message is skipped before it reaches the model
# (celery_stalk_events_invalid_total{reason}).
CONTENT_TYPE = "content_type"
NOT_JSON = "not_json"
TOO_DEEP = "too_deep"  # JSON nested deeper than any event (an attack, or garbage)
BAD_ENVELOPE = "bad_envelope"
INTERNAL_ERROR = "internal_error"
MESSAGE_REASONS = (CONTENT_TYPE, NOT_JSON, TOO_DEEP, BAD_ENVELOPE, INTERNAL_ERROR)
# Celery events are a list of flat objects: three levels at most. orjson
# refuses anything deeper than 1024; the standard library would recurse until
# Python's own limit and raise RecursionError.
MAX_DEPTH_MESSAGE = "depth limit exceeded"


class TooDeep(ValueError):
    """JSON nested deeper than the decoder allows."""


def decode_body(body: bytes | str) -> object:
    """JSON from a message body; raises ValueError if it is not JSON.

    orjson first (the fast path). It refuses bytes that are not UTF-8 and
    escaped lone surrogates (a Python str that held undecodable bytes), which
    would lose a whole batch of good events for one bad name; the standard
    library then decodes such a body, keeping the bad strings as surrogates
    for the model to refuse one event at a time.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if MAX_DEPTH_MESSAGE in str(exc):
            raise TooDeep(str(exc)) from None
        if isinstance(body, bytes):
            body = body.decode("utf-8", "surrogateescape")
        try:
            return json.loads(body)
        except RecursionError:
            raise TooDeep("nested too deep") from None


def decode_into(content_type: object, body: bytes | str, events: list,
                invalid: Callable[[str], None]) -> None:
    """Append the events of one message to ``events``; count it if it holds none."""
    if content_type not in ACCEPTED_CONTENT_TYPES:
        invalid(CONTENT_TYPE)
        return
    try:
        decoded = decode_body(body)
    except TooDeep:
        invalid(TOO_DEEP)
        return
    except (ValueError, TypeError):
        invalid(NOT_JSON)
        return
    if isinstance(decoded, list):  # task.multi: a worker's buffered batch
        events.extend(decoded)
    else:
        events.append(decoded)
