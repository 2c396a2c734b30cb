"""Benchmark 4: time for one read of 1,000 Redis queues with priorities.

A private redis-server holds --queues queues, each with messages in its base
list and its priority sub-lists (QUEUE\\x06\\x16{3,6,9}, kombu's default
priority steps), as Celery producers leave them. Measured two ways:

* the reader alone (RedisQueueReader.read, one pipelined round trip of
  4,000 LLENs), --reads times;
* the exporter as users run it, with the 1,000 queues given by --queue: the
  duration of its "queues" collector as each /metrics scrape reports it.

    bench/.venv/bin/python bench/queue_depth.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery_stalk.brokers.redis import RedisQueueReader  # noqa: E402
from consumers import Stalk  # noqa: E402
from ingest import machine  # noqa: E402
from scrape import percentiles  # noqa: E402
from tests.brokers import RedisServer, free_port  # noqa: E402

SEP = "\x06\x16"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    names = [f"tenant-{i:04d}.default" for i in range(args.queues)]
    result = {"machine": machine(), "queues": args.queues}
    with RedisServer() as server:
        client = server.client()
        pipe = client.pipeline(transaction=False)
        expected = 0
        for i, name in enumerate(names):
            for step in (0, 3, 6, 9):
                key = name if step == 0 else f"{name}{SEP}{step}"
                n = (i + step) % 4  # some lists empty, as some priorities are unused
                if n:
                    pipe.lpush(key, *[b'{"body": "..."}'] * n)
                    expected += n
        pipe.execute()

        reader = RedisQueueReader(server.url, {}, timeout=2.0)
        depths = reader.read(names)
        assert sum(d.messages for d in depths.values()) == expected, "reader miscounted"
        timings = []
        for _ in range(args.reads):
            start = time.perf_counter()
            reader.read(names)
            timings.append(time.perf_counter() - start)
        reader.close()
        result["reader"] = percentiles(timings)
        result["messages"] = expected
        print("reader:", result["reader"], flush=True)

        exporter = Stalk(server.url, free_port())
        exporter.command = (lambda command: lambda: command + ["--queue", ",".join(names)])(
            exporter.command())
        exporter.start()
        try:
            collector = []
            deadline = time.monotonic() + 60
            while len(collector) < args.reads // 4 and time.monotonic() < deadline:
                try:
                    text = exporter.metrics()
                except OSError:
                    time.sleep(0.2)
                    continue
                for line in text.splitlines():
                    if line.startswith('celery_stalk_collector_duration_seconds{collector="queues"}'):
                        collector.append(float(line.split()[-1]))
                assert text.count("celery_queue_messages{") == args.queues
            result["exporter_collector"] = percentiles(collector)
            print("exporter collector:", result["exporter_collector"], flush=True)
        finally:
            exporter.stop()
    out = args.out or Path(__file__).parent / "results" / f"queue-depth-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
