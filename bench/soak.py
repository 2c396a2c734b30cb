"""Soak: steady Celery event traffic with worker churn; RSS and series must stay flat.

Starts a private redis-server and `celery-stalk serve` (a real process), then
publishes real-shaped Celery events to the broker's celeryev exchange for
--minutes: a steady stream of tasks (sent, received, started, succeeded or
failed, in task.multi batches as prefork workers send them) and a new worker
hostname every --churn seconds, as Kubernetes pods come and go. Each worker
heartbeats every 2 s for --worker-life seconds, then half of them shut down
cleanly (worker-offline) and half vanish (SIGKILL-like silence).

Every --sample seconds it records the exporter's RSS and the number of series
on /metrics. Not a test and not run in CI: run it, read the table, put the
figures in bench/README.md.

With --max-workers below the number of worker series the churn keeps alive
(about 55 with the defaults), the hostnames go past the cap; a steady worker
that heartbeats every 2 s for the whole run must stay visible all along
(checked every --check seconds).

    PYTHONPATH=. .venv/bin/python bench/soak.py --minutes 30
    PYTHONPATH=. .venv/bin/python bench/soak.py --minutes 30 --max-workers 30
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from kombu import Connection, Exchange

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.brokers import RedisServer  # noqa: E402
from tests.harness import ExporterProcess, eventually  # noqa: E402

TASK_NAMES = [f"app.tasks.job_{i}" for i in range(20)]
STEADY = "celery@soak-steady"
QUEUES = ["default", "bulk", "critical"]
EXCEPTIONS = ["ValueError('bad input')", "KeyError('id')", "TimeoutError()"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def series_count(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


class Traffic:
    """Publishes Celery events (the shapes workers and producers send) with kombu."""

    def __init__(self, url: str, args):
        self.connection = Connection(url)
        self.exchange = Exchange("celeryev", type="fanout")
        self.producer = self.connection.Producer()
        self.args = args
        self.rng = random.Random(7)
        self.workers: dict[str, dict] = {}  # hostname -> {"born", "beat", "clean"}
        self.serial = itertools.count()
        self.sent_tasks = 0
        self.worker_count = 0
        self.steady_beat = 0.0

    def publish(self, body, routing_key: str) -> None:
        self.producer.publish(body, exchange=self.exchange, routing_key=routing_key,
                              serializer="json", declare=[self.exchange], retry=True)

    def event(self, kind: str, hostname: str, **fields) -> dict:
        return {"type": kind, "hostname": hostname, "timestamp": time.time(), "utcoffset": 0,
                "pid": 1, "clock": next(self.serial), **fields}

    def heartbeat(self, hostname: str, kind: str = "worker-heartbeat") -> None:
        self.publish(self.event(kind, hostname, freq=2.0, active=1, processed=0,
                                loadavg=[0.1, 0.1, 0.1], sw_ident="py-celery", sw_ver="5.7.0",
                                sw_sys="Linux"), kind.replace("-", "."))

    def churn(self, now: float) -> None:
        """A new worker every --churn seconds; old ones leave cleanly or vanish. The
        steady worker heartbeats every 2 s throughout."""
        if now - self.steady_beat >= 2.0:
            self.heartbeat(STEADY, "worker-online" if not self.steady_beat else "worker-heartbeat")
            self.steady_beat = now
        if not self.workers or now - max(w["born"] for w in self.workers.values()) >= self.args.churn:
            hostname = f"celery@soak-{self.worker_count}-{uuid.uuid4().hex[:6]}"
            self.worker_count += 1
            self.workers[hostname] = {"born": now, "beat": 0.0, "clean": self.worker_count % 2 == 0}
            self.heartbeat(hostname, "worker-online")
        for hostname, w in list(self.workers.items()):
            if now - w["born"] >= self.args.worker_life:
                if w["clean"]:
                    self.heartbeat(hostname, "worker-offline")
                del self.workers[hostname]  # the unclean ones just go silent
            elif now - w["beat"] >= 2.0:
                self.heartbeat(hostname)
                w["beat"] = now

    def tasks(self, count: int) -> None:
        """``count`` tasks, each sent, received, started and finished, batched per worker."""
        hosts = list(self.workers)
        batches: dict[str, list] = {h: [] for h in hosts}
        for _ in range(count):
            task_id, name = str(uuid.uuid4()), self.rng.choice(TASK_NAMES)
            queue = QUEUES[hash(name) % len(QUEUES)]
            self.publish(self.event("task-sent", "producer@web", uuid=task_id, name=name,
                                    queue=queue, routing_key=queue, exchange="", retries=0,
                                    eta=None, expires=None, args="()", kwargs="{}"),
                         "task.sent")
            host = self.rng.choice(hosts)
            batch = batches[host]
            batch.append(self.event("task-received", host, uuid=task_id, name=name, retries=0,
                                    args="()", kwargs="{}", eta=None, expires=None))
            batch.append(self.event("task-started", host, uuid=task_id))
            if self.rng.random() < 0.05:
                batch.append(self.event("task-failed", host, uuid=task_id,
                                        exception=self.rng.choice(EXCEPTIONS), traceback="..."))
            else:
                batch.append(self.event("task-succeeded", host, uuid=task_id, result="None",
                                        runtime=self.rng.expovariate(5.0)))
            self.sent_tasks += 1
        for batch in batches.values():
            if batch:
                self.publish(batch, "task.multi")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0, help="tasks per second")
    parser.add_argument("--churn", type=float, default=3.0, help="seconds between new workers")
    parser.add_argument("--worker-life", type=float, default=45.0)
    parser.add_argument("--worker-ttl", type=float, default=120.0)
    parser.add_argument("--sample", type=float, default=30.0)
    parser.add_argument("--max-workers", type=int, default=0,
                        help="the exporter's --max-workers (0: its default)")
    parser.add_argument("--check", type=float, default=2.0,
                        help="seconds between checks that the steady worker is visible and up")
    parser.add_argument("--csv", default="", help="also write the samples here")
    args = parser.parse_args()

    with RedisServer() as redis_server:
        cap = ["--max-workers", str(args.max_workers)] if args.max_workers else []
        exporter = ExporterProcess(redis_server.url, "--worker-ttl", str(args.worker_ttl),
                                   "--log-level", "warning", *cap)
        exporter.start()
        metrics_url = exporter.url + "/metrics"
        traffic = Traffic(redis_server.url, args)
        traffic.churn(time.time())
        eventually(lambda: metric(metrics_url, "celery_workers") >= 1, 30, message="first worker")

        rows = [("minute", "rss_mib", "series", "workers_tracked", "tasks_sent",
                 "succeeded+failed", "invalid", "lost_total", "forgotten_workers")]
        steady_checks = steady_missing = 0
        next_check = time.monotonic() + 10  # after the steady worker's second heartbeat
        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = start
        tick = 0.1
        owed = 0.0
        try:
            while time.monotonic() < end:
                now = time.monotonic()
                traffic.churn(time.time())
                owed += args.rate * tick
                traffic.tasks(int(owed))
                owed -= int(owed)
                if now >= next_check:
                    steady_checks += 1
                    if metric(metrics_url, f'celery_worker_up{{worker="{STEADY}"}}') != 1:
                        steady_missing += 1
                    next_check += args.check
                if now >= next_sample:
                    with urllib.request.urlopen(metrics_url, timeout=10) as response:
                        text = response.read().decode()
                    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
                    done = sum(float(line.rsplit(" ", 1)[1]) for line in samples
                               if line.startswith(("celery_task_succeeded_total{", "celery_task_failed_total{")))
                    invalid = sum(float(line.rsplit(" ", 1)[1]) for line in samples
                                  if line.startswith("celery_stalk_events_invalid_total"))
                    lost = next((float(line.split()[1]) for line in samples
                                 if line.startswith("celery_worker_lost_total ")), 0.0)
                    workers = sum(1 for line in samples if line.startswith("celery_worker_up{"))
                    forgotten = next((float(line.split()[1]) for line in samples if line.startswith(
                        'celery_stalk_label_forgotten_total{label="worker"}')), 0.0)
                    row = (round((now - start) / 60, 1), round(rss_kib(exporter.proc.pid) / 1024, 1),
                           len(samples), workers, traffic.sent_tasks, int(done), int(invalid), int(lost),
                           int(forgotten))
                    rows.append(row)
                    print(*row, sep="\t", flush=True)
                    next_sample += args.sample
                time.sleep(max(0.0, tick - (time.monotonic() - now)))
        finally:
            exporter.stop()
            traffic.connection.release()
        if exporter.proc.returncode != 0:
            print(f"exporter exited {exporter.proc.returncode}:\n{exporter.output()}", file=sys.stderr)
            return 1

    if args.csv:
        Path(args.csv).write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    body = rows[1:]
    warm = [r for r in body if r[0] >= min(5.0, args.minutes / 2)]
    print(f"\n{len(body)} samples over {args.minutes:g} min, {args.rate:g} tasks/s, "
          f"a new worker every {args.churn:g} s ({traffic.worker_count} worker names in all), "
          f"--worker-ttl {args.worker_ttl:g}")
    for column, name in ((1, "RSS MiB"), (2, "series")):
        values = [r[column] for r in warm]
        print(f"{name} after warm-up: first {values[0]}, last {values[-1]}, min {min(values)}, "
              f"max {max(values)}")
    print(f"steady worker visible and up in {steady_checks - steady_missing} of {steady_checks} "
          f"checks (every {args.check:g} s)")
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
