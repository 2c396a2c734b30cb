"""CPU per event of the RabbitMQ event path, without a broker: what one core can ingest.

The generated stream (stream.py) as RabbitMQ delivers it to a consumer (Basic.Deliver,
content header, body frames, as the broker writes them) is cut in 1 MB reads, parsed by
the AMQP reader's parser (sources/amqp_wire.py), decoded and applied to a Model by the
event source (sources/supervisor.py, its own batching), in this one process. The time
is this process's CPU time, so it holds on a busy machine; what it leaves out is the
socket (one recv per megabyte) and the HTTP side.

    bench/.venv/bin/python bench/amqp_replay.py
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stream  # noqa: E402
from celery_stalk.model import Model, ModelSettings  # noqa: E402
from celery_stalk.sources.amqp_wire import DeliveryParser  # noqa: E402
from celery_stalk.sources.supervisor import EventSource  # noqa: E402
from ingest import machine  # noqa: E402

READ_SIZE = 1 << 20


def as_delivered(publish: bytes, tag: int) -> bytes:
    """The frames of a Basic.Publish (stream.amqp_publish) as the broker delivers them:
    Basic.Deliver in place of Basic.Publish, the same header and body frames."""
    size = struct.unpack_from(">I", publish, 3)[0]
    at = 7 + 6
    exchange = publish[at:at + 1 + publish[at]]
    at += 1 + publish[at]
    routing_key = publish[at:at + 1 + publish[at]]
    method = (struct.pack(">HH", 60, 60) + b"\x1fceleryev.celery-stalk.0123456789"
              + struct.pack(">Q", tag) + b"\x00" + exchange + routing_key)
    return (struct.pack(">BHI", 1, 1, len(method)) + method + b"\xce") + publish[7 + size + 1:]


def replay(shape: str, tasks: int) -> dict:
    spec = stream.StreamSpec(tasks=tasks, batched=shape == "batched", heartbeat_every_tasks=40,
                             wire="amqp")
    messages = stream.build(spec)
    data = b"".join(as_delivered(m.command, i + 1) for i, m in enumerate(messages))
    events = sum(m.events for m in messages)
    model = Model(ModelSettings())
    source = EventSource(reader=None, model=model, clock=lambda: 1_795_000_000.0)
    parser = DeliveryParser(131072, lambda *args: None)
    started, cpu = time.perf_counter(), time.process_time()
    for at in range(0, len(data), READ_SIZE):
        parser.feed(data[at:at + READ_SIZE])
        batch: list = []
        parser.parse(batch)
        source._apply(batch)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - started
    applied = sum(model.health_snapshot().events.values())
    assert applied == events, (applied, events)
    return {"shape": shape, "messages": len(messages), "events": events,
            "cpu_us_per_event": round(cpu / events * 1e6, 2),
            "events_per_cpu_second": round(events / cpu), "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {"machine": machine(), "runs": []}
    for _ in range(args.runs):
        for shape in ("batched", "single"):
            result = replay(shape, args.tasks)
            results["runs"].append(result)
            print(result, flush=True)
    out = args.out or Path(__file__).parent / "results" / "amqp-replay.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
