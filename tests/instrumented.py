"""Instrumented workers (celery_stalk.worker) for the tests, and the task mix they run."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from tests.harness import Metrics, WorkerProcess, eventually, free_port, scrape


class InstrumentedWorker(WorkerProcess):
    """A real worker of tests/instrumented_app.py serving its own /metrics (--stalk-port).

    ``events``: start it with -E (task events sent too) or not; ``max_tasks_per_child``
    recycles prefork pool processes."""

    def __init__(self, broker_url: str, nodename: str, pool: str = "prefork", concurrency: int = 2,
                 events: bool = False, max_tasks_per_child: int | None = None,
                 queues: str = "work", extra: tuple[str, ...] = ()):
        super().__init__(broker_url, nodename, queues=queues, pool=pool, concurrency=concurrency)
        self.port = free_port()
        self.args = [
            sys.executable, "-m", "celery", "-A", "tests.instrumented_app", "worker",
            *(["-E"] if events else []),
            "-n", nodename, "-Q", queues, "-P", pool, "-c", str(concurrency),
            "--without-mingle", "--without-gossip", "-l", "WARNING",
            "--stalk-port", str(self.port), "--stalk-host", "127.0.0.1", *extra,
        ]
        self.env["STALK_TEST_EVENTS"] = "on" if events else "off"
        if max_tasks_per_child:
            self.env["STALK_TEST_MAX_TASKS_PER_CHILD"] = str(max_tasks_per_child)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def scrape(self, context=None) -> Metrics:
        scheme = "https" if context else "http"
        return scrape(f"{scheme}://127.0.0.1:{self.port}/metrics", context=context)

    def wait_serving(self, timeout: float = 30) -> None:
        eventually(lambda: self.proc.poll() is None and self.scrape(), timeout,
                   message=f"{self.nodename} serving /metrics\n{self.output()}")


@dataclass(frozen=True)
class Mix:
    """200 tasks: successes, two exception types, retries, rejects and (where the pool
    can kill a task) one hard time limit."""

    hard_limit: bool
    adds: int = 155
    fail_value: int = 20
    fail_key: int = 10
    flaky: int = 10  # each retries once, then succeeds
    rejects: int = 4

    @property
    def kills(self) -> int:
        return 1 if self.hard_limit else 0

    @property
    def sent(self) -> int:
        return self.adds + self.fail_value + self.fail_key + self.flaky + self.rejects + 1

    def send(self, producer, queue: str = "work") -> None:
        for i in range(self.adds + (0 if self.hard_limit else 1)):
            producer.send_task("tests.add", args=(i, i), queue=queue)
        for _ in range(self.fail_value):
            producer.send_task("tests.fail_value", queue=queue)
        for _ in range(self.fail_key):
            producer.send_task("tests.fail_key", queue=queue)
        for _ in range(self.flaky):
            producer.send_task("tests.flaky", args=(1,), queue=queue)
        for _ in range(self.rejects):
            producer.send_task("tests.reject", queue=queue)
        if self.hard_limit:
            producer.send_task("tests.sleep_past_hard_limit", queue=queue)

    def received(self) -> dict[str, int]:
        counts = {"tests.add": self.adds + (0 if self.hard_limit else 1),
                  "tests.fail_value": self.fail_value, "tests.fail_key": self.fail_key,
                  "tests.flaky": 2 * self.flaky, "tests.reject": self.rejects}
        if self.hard_limit:
            counts["tests.sleep_past_hard_limit"] = 1
        return counts

    def succeeded(self) -> dict[str, int]:
        return {"tests.add": self.received()["tests.add"], "tests.flaky": self.flaky}

    def failed(self) -> dict[tuple[str, str], int]:
        """(task, exception) -> failures."""
        # a raised Reject is a rejection, not a failure (README, "Failures, rejections and retries")
        counts = {("tests.fail_value", "ValueError"): self.fail_value,
                  ("tests.fail_key", "KeyError"): self.fail_key}
        if self.hard_limit:
            counts[("tests.sleep_past_hard_limit", "TimeLimitExceeded")] = 1
        return counts

    def finished(self) -> int:
        return sum(self.succeeded().values()) + sum(self.failed().values())


def by_task(m: Metrics, name: str, queue: str = "work") -> dict[str, float]:
    """{task: value} of a (task, queue) series, non-zero ones only."""
    found = {}
    for (metric, labels), value in m.samples.items():
        labels = dict(labels)
        if metric == name and labels.get("queue") == queue and value:
            found[labels["task"]] = value
    return found


def wait_finished(worker: InstrumentedWorker, count: int, stall: float = 30,
                  timeout: float = 600) -> Metrics:
    """Wait until ``count`` tasks have finished, as long as the worker keeps finishing some:
    fails after ``stall`` seconds without one (or ``timeout`` in all). Some pools are slow
    by Celery's own doing (tests/integration/test_worker_metrics.py, POOLS)."""
    start = progress_at = time.monotonic()
    done_before = -1.0
    while True:
        m = worker.scrape()
        done = m.sum("celery_task_succeeded_total") + m.sum("celery_task_failed_total")
        if done >= count:
            return m
        now = time.monotonic()
        if done > done_before:
            done_before, progress_at = done, now
        if now - progress_at > stall or now - start > timeout:
            raise AssertionError(f"{done:g} of {count} tasks finished on {worker.nodename}, "
                                 f"none for {now - progress_at:.0f} s\n{worker.output()[-3000:]}")
        time.sleep(0.5)
