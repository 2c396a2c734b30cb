"""The event consumers the benchmarks compare, each run as its own process as users run it.

Each knows how to start itself against a broker URL on a port, and how to read
from its /metrics how many events of each type it has counted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / ".venv-peers" / "bin"
SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})?\s+(\S+)')
TYPE_LABEL = re.compile(r'type="([^"]+)"')


class Consumer:
    name = ""
    # Task event types this consumer counts somewhere in /metrics.
    counts = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
              "task-retried")

    def __init__(self, broker_url: str, port: int, cpu: int | None = None):
        self.broker_url, self.port = broker_url, port
        self.cpu = cpu  # pinned to this CPU (taskset), or free
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{self.name}-", suffix=".log")
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(BENCH)}
        # pinned to self.cpu (ingest.py --pin), or BENCH_CONSUMER_CPUS=1: the consumer alone
        # on that core (its ceiling on one core)
        cpus = str(self.cpu) if self.cpu is not None else os.environ.get("BENCH_CONSUMER_CPUS")
        command = (["taskset", "-c", cpus] if cpus else []) + self.command()
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, cwd=BENCH, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self, timeout: float = 30.0) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()

    def counted(self) -> Counter:
        """Events counted so far, by type."""
        return self.parse(self.metrics())

    def parse(self, text: str) -> Counter:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _sum_by_type(text: str, metric: str) -> Counter:
    counts: Counter = Counter()
    prefix = metric + "{"
    for line in text.splitlines():
        if line.startswith(prefix):
            match = SAMPLE.match(line)
            kind = TYPE_LABEL.search(match.group(2))
            if kind:
                counts[kind.group(1)] += int(float(match.group(3)))
    return counts


class Stalk(Consumer):
    """celery-stalk as users run it (its dedicated event reader on Redis and RabbitMQ)."""

    name = "celery-stalk"
    counts = Consumer.counts + ("worker-heartbeat",)

    def command(self):
        return [sys.executable, "-m", "celery_stalk", "serve", "--broker-url", self.broker_url,
                "--listen-address", f"127.0.0.1:{self.port}", "--log-level", "warning"]

    def parse(self, text):
        return _sum_by_type(text, "celery_stalk_events_total")


class StalkKombu(Stalk):
    """celery-stalk with the kombu consumer it used before its dedicated readers: the
    before/after baseline."""

    name = "celery-stalk-kombu"

    def command(self):
        return [sys.executable, str(BENCH / "kombu_exporter.py"), "serve", "--broker-url",
                self.broker_url, "--listen-address", f"127.0.0.1:{self.port}",
                "--log-level", "warning"]


class Flower(Consumer):
    """Flower (PyPI flower) and its /metrics: flower_events_total{type=...}."""

    name = "flower"

    def command(self):
        return [str(PEERS / "celery"), "--broker", self.broker_url, "flower",
                f"--port={self.port}", "--address=127.0.0.1", "--logging=warning"]

    def parse(self, text):
        return _sum_by_type(text, "flower_events_total")


class CeleryExporter(Consumer):
    """danihodovic/celery-exporter (PyPI prometheus-exporter-celery): celery_task_<x>_total."""

    name = "celery-exporter"

    def command(self):
        return [str(PEERS / "python"), "-c", "from src.cli import cli; cli()", "--broker-url",
                self.broker_url, "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "WARNING"]

    def parse(self, text):
        counts: Counter = Counter()
        for line in text.splitlines():
            if line.startswith("celery_task_") and "_total{" in line:
                match = SAMPLE.match(line)
                verb = match.group(1)[len("celery_task_"):-len("_total")]
                counts[f"task-{verb}"] += int(float(match.group(3)))
        return counts


CONSUMERS = {c.name: c for c in (Stalk, StalkKombu, Flower, CeleryExporter)}


def wait_subscribed(redis_client, consumer: Consumer, timeout: float = 60.0) -> None:
    """Until the consumer is subscribed to the event channels and serves /metrics."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not consumer.alive():
            raise RuntimeError(f"{consumer.name} exited:\n{consumer.output()}")
        try:
            if redis_client.pubsub_numpat() >= 1:
                consumer.counted()
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{consumer.name} not subscribed within {timeout} s:\n{consumer.output()}")
