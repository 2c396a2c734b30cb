"""Every failure path on-call pages on, on real workers of the oldest and the newest Celery we
support, counted exactly by the exporter as users run it.

One worker per Celery version and pool runs every scenario its pool supports at once: hard
and soft time limits, a pool process SIGKILLed under a task, Reject with and without requeue,
revoke(terminate=True), self.retry and autoretry_for with a countdown. The test then reads
/metrics and asserts exact counts, exception labels, one queue wait per start and a zero
clock skew counter (producer, workers and exporter share this machine's clock).

The newest Celery is the one installed with the project (.venv). The oldest runs from a venv
this session builds once under .cache/ (gitignored) and reuses afterwards.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import venv

import pytest

from tests.brokers import RedisServer
from tests.celery_app import make_app
from tests.harness import ROOT, ExporterProcess, WorkerProcess, eventually, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
QUEUE = "work"
OLDEST = "5.2.7"
# What the oldest worker venv gets: Celery 5.2 predates kombu 5.4's requirements.
OLDEST_REQUIREMENTS = [f"celery[redis]=={OLDEST}", "packaging", "kombu<5.4"]
OLDEST_VENV = ROOT / ".cache" / "worker-venvs" / f"celery-{OLDEST}"

# What each pool enforces (Celery's documentation; the captured fixtures agree): threads and
# solo enforce no time limit and cannot terminate a running task; gevent enforces only the hard
# limit, and since Celery 5.3 (5.2's gevent pool sends no event at all when it stops a task at
# its hard limit, and ignores terminate); a pool process separate from the worker exists only
# under prefork.
def hard_limit_pools(version):
    return {"prefork"} if version == OLDEST else {"prefork", "gevent"}


def terminate_pools(version):
    return {"prefork"} if version == OLDEST else {"prefork", "gevent"}


SOFT_LIMIT_POOLS = {"prefork"}
KILL_POOLS = {"prefork"}


def has_module(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def build_oldest_venv() -> str:
    """The oldest supported Celery in a venv of its own, built once and reused."""
    python = OLDEST_VENV / "bin" / "python"
    done = OLDEST_VENV / ".complete"
    if done.exists() and python.exists():
        return str(python)
    shutil.rmtree(OLDEST_VENV, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(OLDEST_VENV)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         *OLDEST_REQUIREMENTS], capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        shutil.rmtree(OLDEST_VENV, ignore_errors=True)
        pytest.skip(f"cannot install Celery {OLDEST} (offline, no package index?): "
                    f"{install.stderr.strip().splitlines()[-1:]}")
    # gevent where it installs: the gevent pool is tested only where it does.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "gevent"], capture_output=True, timeout=600)
    done.write_text(" ".join(OLDEST_REQUIREMENTS) + "\n")
    return str(python)


@pytest.fixture(scope="session")
def oldest_python() -> str:
    """The Python of the venv that runs workers of the oldest Celery (built once)."""
    return build_oldest_venv()


@pytest.fixture(scope="module")
def broker():
    with RedisServer() as server:
        yield server


COMBINATIONS = [(version, pool) for version in ("newest", OLDEST)
                for pool in ("prefork", "threads", "solo", "gevent")]


@pytest.mark.parametrize("version, pool", COMBINATIONS,
                         ids=[f"{v}-{p}" for v, p in COMBINATIONS])
def test_every_failure_path_is_counted_exactly(version, pool, broker, fleet, request):
    python = sys.executable if version == "newest" else request.getfixturevalue("oldest_python")
    if pool == "gevent" and not has_module(python, "gevent"):
        pytest.skip(f"gevent does not install for Celery {version} here")
    if version == OLDEST and pool == "threads":
        pytest.skip("Celery 5.2's threads pool loses task events of its pool threads now and "
                    "then (its event buffer is not thread-safe): no exact count is possible")
    url = broker.fresh_url()
    exporter = fleet(ExporterProcess(url))
    worker = fleet(WorkerProcess(url, f"{pool}-{version}@{HOST}", pool=pool, concurrency=8,
                                 python=python))
    wait_worker_up(exporter, worker.nodename, timeout=60)

    producer = make_app(url)
    marker_dir = tempfile.mkdtemp(prefix="stalk-reject-")
    want: dict[str, dict] = {}  # task name -> what its counters must read

    def expect(name, **counts):
        want[name] = counts

    # The slow ones first: a terminated sleep needs to have started before the revoke.
    if pool in terminate_pools(version):
        doomed = producer.send_task("tests.sleep", args=(30,))
        expect("tests.sleep", revoked=1, starts=1)
    if pool in hard_limit_pools(version):
        for _ in range(2):
            producer.send_task("tests.hard_time_limit")
        expect("tests.hard_time_limit", failed=2, starts=2, sent=2,
               exceptions={"TimeLimitExceeded": 2})
    if pool in SOFT_LIMIT_POOLS:
        producer.send_task("tests.sleep_past_soft_limit")
        expect("tests.sleep_past_soft_limit", failed=1, starts=1,
               exceptions={"SoftTimeLimitExceeded": 1})
    if pool in KILL_POOLS:
        producer.send_task("tests.kill_own_process")
        expect("tests.kill_own_process", failed=1, starts=1,
               exceptions={"WorkerLostError": 1})
    producer.send_task("tests.reject")
    expect("tests.reject", rejected=1, starts=1)
    producer.send_task("tests.reject_requeue", args=(marker_dir,))
    expect("tests.reject_requeue", rejected=1, succeeded=1, starts=2)
    producer.send_task("tests.flaky", args=(2,))
    expect("tests.flaky", retried=2, succeeded=1, starts=3, sent=3)
    producer.send_task("tests.autoretry", args=(2,))
    expect("tests.autoretry", retried=2, succeeded=1, starts=3, sent=3)
    producer.send_task("tests.retry_until_exhausted")
    expect("tests.retry_until_exhausted", retried=2, failed=1, starts=3, sent=3,
           exceptions={"ConnectionError": 1})
    producer.send_task("tests.add", args=(1, 2), countdown=1)  # an ETA: waits from it
    expect("tests.add", succeeded=1, starts=1)

    if pool in terminate_pools(version):
        eventually(lambda: exporter.scrape().get("celery_task_started_total", task="tests.sleep",
                                                 queue=QUEUE) == 1, 30, message="sleep started")
        producer.control.revoke(doomed.id, terminate=True)

    ends = ("succeeded", "failed", "rejected", "revoked")

    def all_ended():  # whatever the labels: the exact check comes after
        m = exporter.scrape()
        for kind in ends:
            if m.sum(f"celery_task_{kind}_total") < sum(c.get(kind, 0) for c in want.values()):
                return None
        return m

    eventually(all_ended, 60, interval=0.5, message=f"every task ended\n{worker.output()[-3000:]}")
    time.sleep(3)  # a duplicate end (Celery 5.7 sends two task-failed per hard kill) lands now
    m = exporter.scrape()
    shutil.rmtree(marker_dir, ignore_errors=True)

    def reading(name: str) -> dict:
        def read(metric):
            return m.get(metric, 0, task=name, queue=QUEUE)

        exceptions = {dict(labels)["exception"]: value for (metric, labels), value in m.samples.items()
                      if metric == "celery_task_exceptions_total" and dict(labels)["task"] == name}
        return {
            **{kind: read(f"celery_task_{kind}_total") for kind in ends + ("retried",)},
            "starts": read("celery_task_started_total"),
            "sent": read("celery_task_sent_total"),
            "exceptions": exceptions,
            # every start, first run, retry or redelivery, observed once in queue wait
            "waits": read("celery_task_queue_wait_seconds_count"),
        }

    def wanted(counts: dict) -> dict:
        return {**{kind: counts.get(kind, 0) for kind in ends + ("retried",)},
                "starts": counts["starts"], "sent": counts.get("sent", 1),
                "exceptions": counts.get("exceptions", {}), "waits": counts["starts"]}

    wrong = {}
    for name, counts in want.items():
        got, expected = reading(name), wanted(counts)
        if got != expected:
            wrong[name] = {key: (got[key], value) for key, value in expected.items()
                           if got[key] != value}
    assert not wrong, f"(read, expected) per task: {wrong}\n{m.text}"
    # nothing under a made-up name or queue, no skew on one host, no wait near the countdowns
    assert m.label_values("celery_task_started_total", "task") == set(want)
    assert m.label_values("celery_task_started_total", "queue") == {QUEUE}
    assert not [k for k in m.samples if k[0] == "celery_stalk_task_name_unknown_total"]
    assert m.get("celery_stalk_queue_wait_clock_skew_total") == 0
    assert m.get("celery_task_queue_wait_seconds_bucket", task="tests.add", queue=QUEUE,
                 le="0.5") == 1  # measured from the ETA, not from the send 1 s earlier
    assert m.get("celery_stalk_tracked_tasks") == 0
