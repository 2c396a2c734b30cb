"""Benchmark 3: time to serve /metrics with 500 task names x 10 queues x 100 workers seen.

The exporter runs as users run it, fed through a private redis-server: every
task name is sent to every queue (5,000 (task, queue) pairs, the worst case of
that label space), some tasks fail (5 exception classes) and some retry, and
100 workers heartbeat. Then /metrics is fetched as Prometheus 2.42 fetches it
(its Accept header, so OpenMetrics, and gzip):

* idle: --scrapes scrapes back to back with no events in between;
* busy: one scrape every --interval s while events keep arriving at --rate
  events/s, spread over all pairs, so nearly every series changes between
  two scrapes (the worst case for the exporter's per-series line cache).

Reported: p50/p99/max of the time from sending the request to the last byte.

    bench/.venv/bin/python bench/scrape.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import threading
import time
import urllib.request
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stream  # noqa: E402
from consumers import Stalk, wait_subscribed  # noqa: E402
from ingest import Publisher, machine, settled_counts  # noqa: E402

from tests.brokers import RedisServer, free_port  # noqa: E402

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def every_pair(fleet: stream.Fleet, rounds: int, routed: bool = False) -> list:
    """Tasks of every name on every queue (routed: each name on its own queue only),
    a success, a failure and a retry each round."""
    pairs = ([(name, fleet.queue_of[name]) for name in fleet.names] if routed
             else list(product(fleet.names, fleet.queues)))
    messages, i = [], 0
    for _ in range(rounds):
        for name, queue in pairs:
            for outcome in ("succeeded", "failed", "retried"):
                worker = fleet.hostname(i % fleet.spec.workers)
                task_id = stream._task_uuid(fleet.spec.seed + 100, i)
                messages += fleet.task_run(worker, task_id, name, 0, outcome, queue)
                i += 1
    messages += fleet.flush_all()
    return messages


def scrape_once(url: str, accept_gzip: bool = True) -> tuple[float, bytes]:
    headers = {"Accept": PROMETHEUS_ACCEPT}
    if accept_gzip:
        headers["Accept-Encoding"] = "gzip"
    request = urllib.request.Request(url, headers=headers)
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - start, body


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)

    def pick(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(ordered), "p50_ms": round(pick(0.5) * 1000, 1),
            "p99_ms": round(pick(0.99) * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task-names", type=int, default=500)
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10_000.0, help="events/s while busy")
    parser.add_argument("--busy-seconds", type=float, default=40.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--routed", action="store_true",
                        help="each task name on one queue (the usual routing) instead of "
                        "every name on every queue")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    spec = stream.StreamSpec(tasks=0, batched=True, task_names=args.task_names,
                             queues=args.queues, workers=args.workers, heartbeat_every_tasks=0)
    fleet = stream.Fleet(spec)
    fleet.names = [f"proj.tasks.{stream._word(i)}" for i in range(args.task_names)]
    fleet.queue_of = {name: fleet.queues[i % len(fleet.queues)] for i, name in enumerate(fleet.names)}
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    with RedisServer() as server:
        exporter = Stalk(server.url, free_port())
        exporter.start()
        try:
            wait_subscribed(server.client(), exporter)
            publisher = Publisher(server.port, fleet)
            publisher.publish(every_pair(fleet, 1, args.routed), 100_000)
            settled_counts(exporter)
            url = f"http://127.0.0.1:{exporter.port}/metrics"
            _, body = scrape_once(url)
            text = gzip.decompress(body).decode()
            result["exposition"] = {
                "lines": text.count("\n"), "bytes": len(text), "gzip_bytes": len(body),
                "task_queue_pairs": len({line.split("}")[0] for line in text.splitlines()
                                         if line.startswith("celery_task_sent_total{")}),
                "workers": text.count("celery_worker_up{"),
            }
            print("exposition:", result["exposition"], flush=True)

            idle = [scrape_once(url)[0] for _ in range(args.scrapes)]
            result["idle"] = percentiles(idle)
            plain = [scrape_once(url, accept_gzip=False)[0] for _ in range(args.scrapes // 4)]
            result["idle_no_gzip"] = percentiles(plain)
            print("idle:", result["idle"], "without gzip:", result["idle_no_gzip"], flush=True)

            pairs = len(fleet.names) * (1 if args.routed else len(fleet.queues))
            rounds = max(1, int(args.rate * args.busy_seconds / (pairs * 13)))
            load = every_pair(fleet, rounds, args.routed)
            feeder = threading.Thread(target=publisher.publish, args=(load, args.rate), daemon=True)
            feeder.start()
            busy, rss = [], []
            while feeder.is_alive():
                time.sleep(args.interval)
                busy.append(scrape_once(url)[0])
                rss.append(exporter.rss_mb())
            result["busy"] = percentiles(busy)
            result["busy"]["events_per_s"] = args.rate
            result["rss_mb_max"] = round(max(rss), 1)
            result["loadavg"] = os.getloadavg()
            print("busy:", result["busy"], "rss max:", result["rss_mb_max"], "MB", flush=True)
            publisher.close()
        finally:
            exporter.stop()
    out = args.out or Path(__file__).parent / "results" / f"scrape-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
