"""A deterministic stream of Celery events in the exact wire format real workers use on Redis.

What a Celery worker or producer publishes for one event (checked against a real
worker with ``redis-cli psubscribe '*'``, see bench/README.md):

    PUBLISH /{db}.celeryev/{routing_key} {"body": <base64 of the JSON event or
        of a JSON list of events>, "content-encoding": "utf-8", "content-type":
        "application/json", "headers": {"hostname": ...}, "properties":
        {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev",
        "routing_key": ...}, "priority": 0, "body_encoding": "base64",
        "delivery_tag": <uuid4>}}

Routing keys are the event type with ``-`` as ``.`` (``task.sent``,
``worker.heartbeat``); prefork/solo/threads workers buffer their task events
and publish them as one ``task.multi`` message whose body is a JSON list of up
to 24 events. Green pools (gevent/eventlet) and producers publish one event per
message. Bodies and envelopes are serialised with ``json.dumps`` defaults, as
kombu does, so message sizes match the real ones byte for byte in shape.

The stream is a fleet of W workers running N tasks over K task names, with a
failure and retry mix and a heartbeat from every worker at a fixed rate. It is
a pure function of its spec, so every consumer of a benchmark sees the same
bytes. Each message is kept as a ready RESP ``PUBLISH`` command, so publishing
costs the benchmark almost nothing.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import time
import uuid
from collections import Counter
from dataclasses import dataclass

TASK_TYPES = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried",
)
BATCH_LIMIT = 24  # celery.events.dispatcher.EventDispatcher buffer_limit
EXCEPTIONS = (
    "ValueError('invalid literal for int() with base 10: \\'x\\'')",
    "KeyError('customer_id')",
    "celery.exceptions.SoftTimeLimitExceeded()",
    "ConnectionError('Error 111 connecting to db:5432. Connection refused.')",
    "TimeLimitExceeded(60.0,)",
)
TRACEBACK = (
    'Traceback (most recent call last):\n  File "/app/.venv/lib/python3.11/site-packages/'
    'celery/app/trace.py", line 453, in trace_task\n    R = retval = fun(*args, **kwargs)\n'
    '  File "/app/proj/tasks.py", line 88, in run\n    raise exc\n'
)


@dataclass(frozen=True)
class StreamSpec:
    tasks: int
    batched: bool  # True: prefork-style task.multi batches; False: one event per message
    task_names: int = 50
    workers: int = 20
    queues: int = 5
    fail_ratio: float = 0.05
    retry_ratio: float = 0.02
    # One heartbeat from the next worker every this many tasks; 0: none in the stream
    # (ingest.py's publisher sends them live instead, every 2 s of wall time as workers do).
    heartbeat_every_tasks: int = 40
    db: int = 0
    seed: int = 1
    # False: each task name always goes to the same queue (the usual routing);
    # True: any task name to any queue, so every (task, queue) pair is seen.
    any_queue: bool = False
    # Worker hostnames churn: every this many tasks, each worker is replaced by a
    # new one (as pods are in a rolling deploy). 0 keeps the same W workers.
    churn_every_tasks: int = 0
    # How messages are kept: "redis" (RESP PUBLISH commands) or "amqp" (Basic.Publish
    # frames to the celeryev exchange, as kombu's AMQP transport sends them).
    wire: str = "redis"


@dataclass
class Message:
    command: bytes  # RESP PUBLISH command, ready to write to the socket
    events: int
    types: tuple[tuple[str, int], ...]  # event type -> count in this message


class Fleet:
    """Generates the stream message by message (see StreamSpec)."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.tags = random.Random(spec.seed + 1)  # apart, so both shapes carry the same tasks
        self.names = [f"proj.tasks.{_word(i)}" for i in range(spec.task_names)]
        self.queues = ["celery"] + [f"q{i}" for i in range(1, spec.queues)]
        self.queue_of = {name: self.queues[i % spec.queues] for i, name in enumerate(self.names)}
        self.clock = 0
        self.now = time.time()  # peers judge liveness by event timestamps: keep them current
        self.generation = 0
        self.buffers: dict[str, list[dict]] = {}

    def hostname(self, index: int) -> str:
        return f"celery@worker-{self.generation}-{index:03d}-7d9f8c"

    def base(self, hostname: str, pid: int) -> dict:
        self.clock += 1
        self.now += 0.000001
        return {"hostname": hostname, "utcoffset": 0.0, "pid": pid, "clock": self.clock}

    def messages(self):
        spec, rng = self.spec, self.rng
        for i in range(spec.tasks):
            if spec.churn_every_tasks and i and i % spec.churn_every_tasks == 0:
                yield from self.flush_all()
                self.generation += 1
            worker = self.hostname(rng.randrange(spec.workers))
            name = self.names[int(rng.paretovariate(1.2)) % spec.task_names]
            task_id = _task_uuid(spec.seed, i)
            retried = rng.random() < spec.retry_ratio
            failed = not retried and rng.random() < spec.fail_ratio
            yield from self.task_run(worker, task_id, name, retries=0, outcome="retried" if retried else
                                     "failed" if failed else "succeeded")
            if retried:
                yield from self.task_run(worker, task_id, name, retries=1, outcome="succeeded")
            every = spec.heartbeat_every_tasks
            if every and i % every == 0:
                hb = self.heartbeat(self.hostname((i // every) % spec.workers), self.now)
                yield self.message("worker.heartbeat", hb["hostname"], hb)
        yield from self.flush_all()

    def task_run(self, worker: str, task_id: str, name: str, retries: int, outcome: str,
                 queue: str | None = None):
        if queue is None:
            queue = self.queue_of[name] if not self.spec.any_queue else self.queues[
                int.from_bytes(task_id.encode()[-4:], "big") % len(self.queues)]
        producer = "gen@web-1" if retries == 0 else worker
        sent = {**self.base(producer, 31), "uuid": task_id, "root_id": task_id, "parent_id": None,
                "name": name, "args": "(1, 2)", "kwargs": "{}", "retries": retries, "eta": None,
                "expires": None, "queue": queue, "exchange": "", "routing_key": queue,
                "timestamp": self.now, "type": "task-sent"}
        yield self.message("task.sent", producer, sent)
        pid = 100 + sum(worker.encode()) % 200
        received = {**self.base(worker, pid), "uuid": task_id, "name": name, "args": "(1, 2)",
                    "kwargs": "{}", "root_id": task_id, "parent_id": None, "retries": retries,
                    "eta": None, "expires": None, "timestamp": self.now, "type": "task-received"}
        started = {**self.base(worker, pid + 1), "uuid": task_id, "timestamp": self.now,
                   "type": "task-started"}
        if outcome == "succeeded":
            end = {**self.base(worker, pid + 1), "uuid": task_id, "result": "3",
                   "runtime": round(self.rng.lognormvariate(-3, 1.5), 6), "timestamp": self.now,
                   "type": "task-succeeded"}
        elif outcome == "failed":
            exc = self.rng.choice(EXCEPTIONS)
            end = {**self.base(worker, pid + 1), "uuid": task_id, "exception": exc,
                   "traceback": TRACEBACK + exc + "\n", "timestamp": self.now, "type": "task-failed"}
        else:
            exc = "Retry('Retry in 1s: ConnectionError()')"
            end = {**self.base(worker, pid + 1), "uuid": task_id, "exception": exc,
                   "traceback": TRACEBACK, "timestamp": self.now, "type": "task-retried"}
        for event in (received, started, end):
            yield from self.worker_event(worker, event)

    def worker_event(self, worker: str, event: dict):
        if not self.spec.batched:
            yield self.message(event["type"].replace("-", "."), worker, event)
            return
        buffer = self.buffers.setdefault(worker, [])
        buffer.append(event)
        if len(buffer) >= BATCH_LIMIT:
            yield self.flush(worker)

    def flush(self, worker: str) -> Message:
        events = self.buffers.pop(worker)
        return self.message("task.multi", worker, events)

    def flush_all(self):
        for worker in list(self.buffers):
            yield self.flush(worker)

    def heartbeat(self, hostname: str, timestamp: float) -> dict:
        return {**self.base(hostname, 7), "freq": 2.0, "active": self.rng.randrange(4),
                "processed": self.clock, "loadavg": [0.61, 0.56, 0.3], "sw_ident": "py-celery",
                "sw_ver": "5.7.0", "sw_sys": "Linux", "timestamp": timestamp,
                "type": "worker-heartbeat"}

    def workers_now(self) -> list[str]:
        return [self.hostname(i) for i in range(self.spec.workers)]

    def tag(self) -> str:
        return str(uuid.UUID(int=self.tags.getrandbits(128), version=4))

    def message(self, routing_key: str, hostname: str, body) -> Message:
        events = body if isinstance(body, list) else [body]
        if self.spec.wire == "amqp":
            command = amqp_publish(routing_key, hostname, json.dumps(body).encode())
        else:
            command = publish_command(self.spec.db, routing_key,
                                      envelope(routing_key, hostname, body, tag=self.tag()))
        return Message(
            command=command,
            events=len(events),
            types=tuple(Counter(e["type"] for e in events).items()),
        )


def envelope(routing_key: str, hostname: str, body, tag: str, body_encoding: str = "base64") -> bytes:
    """The kombu Redis transport's message envelope around a JSON event body."""
    raw = json.dumps(body)
    if body_encoding == "base64":
        raw = base64.b64encode(raw.encode()).decode()
    return json.dumps({
        "body": raw,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": body_encoding,
            "delivery_tag": tag,
        },
    }).encode()


def channel(db: int, routing_key: str) -> bytes:
    return f"/{db}.celeryev/{routing_key}".encode()


def publish_command(db: int, routing_key: str, payload: bytes) -> bytes:
    return resp_command(b"PUBLISH", channel(db, routing_key), payload)


def resp_command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def amqp_publish(routing_key: str, hostname: str, body: bytes, channel: int = 1) -> bytes:
    """Basic.Publish of one event message to ``celeryev``, with the properties kombu's
    AMQP transport gives Celery's events: the JSON body as it is (no envelope), content
    type and encoding, the ``hostname`` header, transient, priority 0."""

    def shortstr(text: str) -> bytes:
        data = text.encode()
        return bytes((len(data),)) + data

    def frame(kind: int, payload: bytes) -> bytes:
        return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"

    method = struct.pack(">HHH", 60, 40, 0) + shortstr("celeryev") + shortstr(routing_key) + b"\x00"
    host = hostname.encode()
    headers = shortstr("hostname") + b"S" + struct.pack(">I", len(host)) + host
    properties = (struct.pack(">H", 0xF800) + shortstr("application/json") + shortstr("utf-8")
                  + struct.pack(">I", len(headers)) + headers + b"\x01\x00")
    header = struct.pack(">HHQ", 60, 0, len(body)) + properties
    return frame(1, method) + frame(2, header) + frame(3, body)


def build(spec: StreamSpec) -> list[Message]:
    return list(Fleet(spec).messages())


def totals(messages: list[Message]) -> Counter:
    counts: Counter = Counter()
    for message in messages:
        for kind, n in message.types:
            counts[kind] += n
    return counts


def _task_uuid(seed: int, i: int) -> str:
    return str(uuid.UUID(int=(seed << 64) | i, version=4))


def _word(i: int) -> str:
    verbs = ("send", "sync", "build", "charge", "index", "resize", "notify", "export", "import",
             "refresh")
    nouns = ("email", "invoice", "report", "image", "order", "user", "cache", "search", "feed",
             "webhook")
    return f"{verbs[i % 10]}_{nouns[(i // 10) % 10]}_{i // 100}"
