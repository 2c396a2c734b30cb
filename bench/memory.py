"""Benchmark 2: memory over 10 million tasks at a steady rate, with worker hostnames churning.

The broker path is not what holds memory, and pushing 40 million events
through Redis would take this machine hours, so this drives the exporter's
model in-process exactly as the Redis event source does (decoded event dicts,
applied in batches with apply_many, tick every second), and renders /metrics
every 15 s as Prometheus would scrape it. Time is simulated: --rate tasks per
simulated second. (ingest.py --sustain gives the end-to-end figure: the real
exporter process fed through redis-server.)

The fleet: --workers workers at a time, each replaced by a new hostname every
--churn-every tasks (a rolling deploy: the old one goes silent, is reported
lost after the worker timeout and forgotten after --worker-ttl); 5% of tasks
fail, 2% retry once and --lost never finish (their worker died): those stay
in the tracker of tasks in flight until it evicts them at its bound
(--max-tracked-tasks, 100,000), so with --lost 0.05 the tracker is full early
and the run shows memory at that bound.

RSS is sampled every 100,000 tasks; reported: the peak, and the slope of a
least-squares line through the samples between 1M and 10M tasks.

    bench/.venv/bin/python bench/memory.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from celery_stalk import __version__, exposition  # noqa: E402
from celery_stalk.collectors import Exporter, model_collectors  # noqa: E402
from celery_stalk.model import Model, ModelSettings  # noqa: E402
from celery_stalk.sources import SourceState  # noqa: E402
from ingest import machine  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.exposition import choose_encoder  # noqa: E402
from stream import EXCEPTIONS, _word  # noqa: E402

ACCEPT = "application/openmetrics-text;version=1.0.0"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope, MB per million tasks."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000_000)
    parser.add_argument("--rate", type=float, default=10_000.0, help="tasks per simulated second")
    parser.add_argument("--task-names", type=int, default=200)
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--churn-every", type=int, default=100_000,
                        help="tasks between two generations of worker hostnames")
    parser.add_argument("--worker-ttl", type=float, default=60.0,
                        help="short, so forgotten workers come and go within the run")
    parser.add_argument("--lost", type=float, default=0.001,
                        help="share of tasks that never finish (their worker died)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rng = random.Random(1)
    model = Model(ModelSettings(worker_ttl=args.worker_ttl))
    registry = CollectorRegistry(auto_describe=False)
    clock = [1_795_000_000.0]
    registry.register(Exporter(model_collectors(model, SourceState(), clock=lambda: clock[0]),
                               __version__))
    encoder, content_type = choose_encoder(ACCEPT)
    renderer = exposition.Renderer()
    names = [f"proj.tasks.{_word(i)}" for i in range(args.task_names)]
    queue_of = {name: f"q{i % args.queues}" for i, name in enumerate(names)}
    model.link_up(clock[0])

    generation = 0
    batch: list[dict] = []
    samples: list[tuple[int, float]] = []
    started = time.perf_counter()
    next_tick = next_scrape = clock[0]
    peak = 0.0
    exposition_bytes = 0
    print(f"start rss {rss_mb():.1f} MB", flush=True)
    for i in range(args.tasks):
        now = clock[0] = 1_795_000_000.0 + i / args.rate
        if i % args.churn_every == 0:
            generation += 1
        worker = f"celery@worker-{generation}-{rng.randrange(args.workers):03d}-7d9f8c"
        name = names[int(rng.paretovariate(1.2)) % args.task_names]
        task_id = f"{i:08x}-7d9f-4c1b-8a2e-{generation:012x}"
        queue = queue_of[name]
        batch.append({"hostname": "gen@web-1", "uuid": task_id, "name": name, "queue": queue,
                      "routing_key": queue, "retries": 0, "eta": None, "timestamp": now,
                      "type": "task-sent"})
        batch.append({"hostname": worker, "uuid": task_id, "name": name, "timestamp": now,
                      "type": "task-received"})
        batch.append({"hostname": worker, "uuid": task_id, "timestamp": now + 0.01,
                      "type": "task-started"})
        roll = rng.random()
        if roll < 0.05:
            batch.append({"hostname": worker, "uuid": task_id, "exception": rng.choice(EXCEPTIONS),
                          "timestamp": now + 0.02, "type": "task-failed"})
        elif roll < 0.07:
            batch.append({"hostname": worker, "uuid": task_id, "type": "task-retried",
                          "exception": "Retry()", "timestamp": now + 0.02})
            batch.append({"hostname": worker, "uuid": task_id, "name": name, "queue": queue,
                          "retries": 1, "timestamp": now + 0.03, "type": "task-sent"})
            batch.append({"hostname": worker, "uuid": task_id, "timestamp": now + 0.04,
                          "type": "task-started"})
            batch.append({"hostname": worker, "uuid": task_id, "runtime": 0.5,
                          "timestamp": now + 0.05, "type": "task-succeeded"})
        elif roll < 0.07 + args.lost:
            pass  # never finishes: its worker died
        else:
            batch.append({"hostname": worker, "uuid": task_id, "runtime": rng.lognormvariate(-3, 1.5),
                          "timestamp": now + 0.02, "type": "task-succeeded"})
        if len(batch) >= 2000:
            model.apply_many(batch, now)
            batch = []
        if now >= next_tick:  # each live worker heartbeats every 2 s; tick every second
            if int(now) % 2 == 0:
                model.apply_many([
                    {"hostname": f"celery@worker-{generation}-{w:03d}-7d9f8c", "freq": 2.0,
                     "active": 1, "processed": i, "timestamp": now, "type": "worker-heartbeat"}
                    for w in range(args.workers)], now)
            model.tick(now)
            next_tick = now + 1.0
        if now >= next_scrape:
            exposition_bytes = sum(len(p) for p in renderer.render(registry, encoder, content_type))
            next_scrape = now + 15.0
        if i % 100_000 == 0 and i:
            gc.collect()
            rss = rss_mb()
            peak = max(peak, rss)
            samples.append((i, rss))
            if i % 1_000_000 == 0:
                snap = model.snapshot(now)
                print(f"{i / 1e6:4.1f}M tasks  rss {rss:6.1f} MB  workers {len(snap.workers):4}  "
                      f"tracked {snap.tracked_tasks:6}  evicted {snap.evicted_tasks:7}  "
                      f"exposition {exposition_bytes / 1e3:.0f} kB  "
                      f"{i / (time.perf_counter() - started):,.0f} tasks/s  "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
    steady = [(x, y) for x, y in samples if x >= 1_000_000]
    result = {
        "machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
        "peak_rss_mb": round(peak, 1),
        "rss_at_1m_mb": next((y for x, y in samples if x >= 1_000_000), None),
        "tracked_tasks_at_end": model.snapshot(clock[0]).tracked_tasks,
        "workers_at_end": len(model.snapshot(clock[0]).workers),
        "rss_at_end_mb": samples[-1][1],
        "slope_mb_per_million_tasks_1m_to_end": round(slope(steady), 3) if len(steady) > 2 else None,
        "seconds": round(time.perf_counter() - started),
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    out = args.out or Path(__file__).parent / "results" / f"memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
