"""Benchmark: what the in-worker instrumentation costs a prefork worker per task.

Three variants of the same real prefork worker (celery -A bench.worker_app worker,
-c 1, no prefetch limit games) on a private redis-server:

* none:         events off, not instrumented (the baseline);
* events:       -E (task events published to the broker for an exporter);
* instrumented: celery_stalk.worker.install(app) with --stalk-port, events off.

For each run: the queue is filled with a start marker, --tasks no-op tasks and an
end marker before the worker starts; the run is timed from the start marker's
execution to the end marker's (wall time), and the worker's CPU (main process and
pool process, user + system, from /proc) and redis-server's are read at the same two
moments. The
producer publishes without task-sent events (for every variant), so only the worker
differs. Per task: wall µs and CPU µs, median of --runs runs, interleaved.

    .venv/bin/python bench/worker_overhead.py --tasks 20000 --runs 3 --out bench/results/worker_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.brokers import RedisServer, free_port  # noqa: E402

VARIANTS = ("none", "events", "instrumented")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live children (the pool process)."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return total


def wait_key(r: redis.Redis, key: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = r.get(key)
        if value is not None:
            return float(value)
        time.sleep(0.002)
    raise TimeoutError(f"{key} not set within {timeout} s")


def run_once(url: str, variant: str, tasks: int, broker_pid: int) -> dict:
    env = {**os.environ, "BENCH_BROKER": url, "PYTHONPATH": str(ROOT),
           "BENCH_INSTRUMENT": "1" if variant == "instrumented" else "0"}
    sys.path.insert(0, str(ROOT / "bench"))
    os.environ["BENCH_BROKER"] = url
    from worker_app import app  # the producer: never instrumented here

    r = redis.Redis.from_url(url)
    r.flushdb()
    with app.producer_or_acquire() as producer:
        app.send_task("bench.mark", args=("start",), producer=producer)
        for _ in range(tasks):
            app.send_task("bench.noop", producer=producer)
        app.send_task("bench.mark", args=("end",), producer=producer)
    args = [sys.executable, "-m", "celery", "-A", "worker_app", "worker", "-P", "prefork", "-c", "1",
            "-Q", "bench", "--without-mingle", "--without-gossip", "-l", "WARNING"]
    if variant == "events":
        args.append("-E")
    if variant == "instrumented":
        args += ["--stalk-port", str(free_port()), "--stalk-host", "127.0.0.1"]
    worker = subprocess.Popen(args, env=env, cwd=ROOT / "bench", stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_key(r, "start", 60)
        cpu_start, wall_start = cpu_seconds(worker.pid), time.monotonic()
        broker_start = cpu_seconds(broker_pid)
        wait_key(r, "end", 600)
        cpu_end, wall_end = cpu_seconds(worker.pid), time.monotonic()
        broker_end = cpu_seconds(broker_pid)
    finally:
        worker.terminate()
        worker.wait(30)
    return {"variant": variant, "tasks": tasks,
            "wall_us_per_task": (wall_end - wall_start) / tasks * 1e6,
            "cpu_us_per_task": (cpu_end - cpu_start) / tasks * 1e6,
            "broker_cpu_us_per_task": (broker_end - broker_start) / tasks * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with RedisServer() as server:
        for run in range(args.runs):
            for variant in VARIANTS:  # interleaved: load on a shared machine hits all alike
                result = run_once(server.url, variant, args.tasks, server._proc.pid)
                result["run"] = run
                results.append(result)
                print(json.dumps(result), flush=True)
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in results if r["variant"] == variant]
        summary[variant] = {key: statistics.median(r[key] for r in mine)
                            for key in ("wall_us_per_task", "cpu_us_per_task",
                                        "broker_cpu_us_per_task")}
    base = summary["none"]
    print(f"{'variant':<14}{'wall µs/task':>14}{'worker CPU µs':>15}{'over none':>11}"
          f"{'broker CPU µs':>15}")
    for variant, s in summary.items():
        print(f"{variant:<14}{s['wall_us_per_task']:>14.1f}{s['cpu_us_per_task']:>15.1f}"
              f"{s['cpu_us_per_task'] - base['cpu_us_per_task']:>+11.1f}"
              f"{s['broker_cpu_us_per_task']:>15.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": results, "median": summary,
                                        "load": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
