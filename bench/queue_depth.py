"""Benchmark 4: time for one read of 1,000 Redis queues with priorities.

A private redis-server holds --queues queues, each with messages in its base
list and its priority sub-lists (QUEUE\\x06\\x16{3,6,9}, kombu's default
priority steps), as Celery producers leave them: real protocol 2 task messages
(kombu's envelope, about 1 KB each), each with a task id of its own. Measured:

* the reader alone (RedisQueueReader.read, one pipelined round trip of 4,000
  LLENs and 4,000 LINDEX -1 for the oldest message's age), --reads times: with
  the same heads every read (stuck queues: each head parsed once), and with every
  head renewed between two reads (busy queues: each head parsed again);
* the exporter as users run it, with the 1,000 queues given by --queue: the
  duration of its "queues" collector as each /metrics scrape reports it, and
  the whole scrape as the client times it.

    bench/.venv/bin/python bench/queue_depth.py
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery_stalk.brokers.heads import HeadAges  # noqa: E402
from celery_stalk.brokers.redis import RedisQueueReader  # noqa: E402
from consumers import Stalk  # noqa: E402
from ingest import machine  # noqa: E402
from scrape import percentiles  # noqa: E402

from tests.brokers import RedisServer, free_port  # noqa: E402

SEP = "\x06\x16"


def message_maker(arg_bytes: int = 200):
    """A function that returns a new Celery task message, as kombu stores it in Redis
    (one string argument of ``arg_bytes``)."""
    import uuid

    from celery import Celery
    from kombu.utils.json import dumps

    app = Celery("bench", broker="memory://")
    with app.connection_for_write() as conn:
        app.send_task("bench.report", args=("x" * arg_bytes,), kwargs={"tenant": 42}, queue="q",
                      connection=conn)
        template = conn.default_channel._get("q")

    def make() -> bytes:
        template["headers"]["id"] = template["headers"]["root_id"] = str(uuid.uuid4())
        return dumps(template).encode()

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--arg-bytes", type=int, default=200,
                        help="size of each task's one argument (200: a message of about 1 KB)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    names = [f"tenant-{i:04d}.default" for i in range(args.queues)]
    result = {"machine": machine(), "queues": args.queues}
    import redis as redis_py

    result["redis_py"] = redis_py.__version__
    make = message_maker(args.arg_bytes)
    with RedisServer() as server:
        client = server.client()
        pipe = client.pipeline(transaction=False)
        expected, filled = 0, []
        for i, name in enumerate(names):
            for step in (0, 3, 6, 9):
                key = name if step == 0 else f"{name}{SEP}{step}"
                n = (i + step) % 4  # some lists empty, as some priorities are unused
                if n:
                    pipe.lpush(key, *[make() for _ in range(n)])
                    expected += n
                    filled.append(key)
        pipe.execute()
        result["message_bytes"] = len(make())

        def renew_heads():
            """Every head taken and a new message pushed: the depth stays, the heads change."""
            pipe = client.pipeline(transaction=False)
            for key in filled:
                pipe.rpop(key)
                pipe.lpush(key, make())
            pipe.execute()

        reader = RedisQueueReader(server.url, {}, timeout=2.0, head_ages=HeadAges())
        depths = reader.read(names)
        assert sum(d.messages for d in depths.values()) == expected, "reader miscounted"
        aged = sum(d.oldest_age is not None for d in depths.values())
        assert aged == args.queues, f"{aged} queues with an age"
        assert not any(reader.invalid.values()), reader.invalid
        # As the exporter does once started (app.py): what is built by now is kept out of
        # the collector's full passes.
        gc.collect()
        gc.freeze()
        for case, between in (("reader_same_heads", None), ("reader_renewed_heads", renew_heads)):
            timings, cpu = [], []
            for _ in range(args.reads):
                if between:
                    between()
                start, start_cpu = time.perf_counter(), time.process_time()
                reader.read(names)
                timings.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            # Wall time waits for redis-server and for the other processes of a shared
            # machine; the reader's own CPU time does not.
            result[case] = percentiles(timings)
            result[case + "_cpu"] = percentiles(cpu)
            print(f"{case}:", result[case], "cpu:", result[case + "_cpu"], flush=True)
        reader.close()
        result["messages"] = expected

        exporter = Stalk(server.url, free_port())
        exporter.command = (lambda command: lambda: command + ["--queue", ",".join(names)])(
            exporter.command())
        exporter.start()
        try:
            collector, scrapes = [], []
            deadline = time.monotonic() + 120
            while len(collector) < args.reads // 2 and time.monotonic() < deadline:
                try:
                    start = time.perf_counter()
                    text = exporter.metrics()
                    took = time.perf_counter() - start
                except OSError:
                    time.sleep(0.2)
                    continue
                for line in text.splitlines():
                    if line.startswith('celery_stalk_collector_duration_seconds{collector="queues"}'):
                        collector.append(float(line.split()[-1]))
                assert text.count("celery_queue_messages{") == args.queues
                assert text.count("celery_queue_oldest_message_age_seconds{") == args.queues
                scrapes.append(took)
                time.sleep(0.1)  # scrapes come apart, as Prometheus sends them
            result["exporter_collector"] = percentiles(collector)
            result["exporter_scrape"] = percentiles(scrapes[1:])  # the first one renders all
            print("exporter collector:", result["exporter_collector"], flush=True)
            print("exporter scrape:", result["exporter_scrape"], flush=True)
        finally:
            exporter.stop()
    out = args.out or Path(__file__).parent / "results" / f"queue-depth-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
