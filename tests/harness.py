"""Real processes for integration tests: the exporter, Celery workers, and scrapes over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventually(check, timeout: float = 30.0, interval: float = 0.25, message: str = ""):
    """Poll ``check`` until it returns a truthy value; fail with its last result."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout} s: {message} (last: {last!r})")


class Metrics:
    """One parsed /metrics scrape."""

    def __init__(self, text: str):
        self.text = text
        self.samples: dict[tuple[str, tuple], float] = {}
        self.families = {}
        for fam in text_string_to_metric_families(text):
            self.families[fam.name] = fam
            for s in fam.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(self, name: str, default=None, **labels):
        return self.samples.get((name, tuple(sorted(labels.items()))), default)

    def sum(self, name: str, **labels) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for (n, ls) in self.samples if n == name and label in dict(ls)}


def scrape(url: str, timeout: float = 10.0, context=None) -> Metrics:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        return Metrics(response.read().decode())


class ExporterProcess:
    """``celery-stalk serve`` as users run it, in its own process."""

    def __init__(self, broker_url: str, *args: str, env: dict | None = None, tls_context=None):
        """``tls_context``: the client side for an exporter serving TLS (--web-config-file)."""
        self.tls_context = tls_context
        self.port = free_port()
        self.args = [sys.executable, "-m", "celery_stalk", "serve", "--broker-url", broker_url,
                     "--listen-address", f"127.0.0.1:{self.port}", *args]
        self.env = {**os.environ, **(env or {})}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="celery-stalk-", suffix=".log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_context else 'http'}://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> ExporterProcess:
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        check = self.ready if wait_ready else self.serving
        eventually(lambda: self.proc.poll() is None and check(), 30, message=f"exporter up\n{self.output()}")
        return self

    def serving(self) -> bool:
        with urllib.request.urlopen(self.url + "/healthz", timeout=2, context=self.tls_context) as response:
            return response.status == 200

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2, context=self.tls_context) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False

    def scrape(self) -> Metrics:
        return scrape(self.url + "/metrics", context=self.tls_context)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.log.close()


class WorkerProcess:
    """A real Celery worker of tests/celery_app.py, started with events on (-E)."""

    def __init__(self, broker_url: str, nodename: str, queues: str = "work",
                 pool: str = "prefork", concurrency: int = 2, transport_options: dict | None = None,
                 python: str = sys.executable, app: str = "tests.celery_app",
                 env: dict | None = None, task_events: bool = True):
        """``python``: the interpreter of the venv whose Celery the worker runs; ``app``:
        the tests' Celery app module it runs; ``task_events``: False to start it as a
        worker that sends no task events (no -E, worker_send_task_events off)."""
        self.nodename = nodename
        self.args = [
            python, "-m", "celery", "-A", app, "worker", *(["-E"] if task_events else []),
            "-n", nodename, "-Q", queues, "-P", pool, "-c", str(concurrency),
            "--without-mingle", "--without-gossip", "-l", "WARNING",
        ]
        if not task_events:
            env = {**(env or {}), "STALK_TEST_TASK_EVENTS": "0"}
        self.env = {
            **os.environ,
            "STALK_TEST_BROKER": broker_url,
            "STALK_TEST_TRANSPORT_OPTIONS": json.dumps(transport_options or {}),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self.log = tempfile.NamedTemporaryFile("w+", prefix="celery-worker-", suffix=".log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        # Own process group: a SIGKILL then takes the pool children down too,
        # as when a container or node dies.
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown, as in a deploy: the worker sends worker-offline."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()


def app_env(broker_url: str, **extra: str) -> dict:
    """The environment of a process of one of the tests' Celery apps."""
    return {"STALK_TEST_BROKER": broker_url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **extra}


class BeatProcess:
    """`celery -A tests.beat_app beat` with its own schedule file."""

    def __init__(self, broker_url: str, **env: str):
        self.dir = tempfile.TemporaryDirectory(prefix="celery-beat-")
        self.args = [sys.executable, "-m", "celery", "-A", "tests.beat_app", "beat",
                     "-s", str(Path(self.dir.name) / "schedule"), "--pidfile=", "-l", "INFO"]
        self.env = {**os.environ, **app_env(broker_url, **env)}
        self.log = Path(self.dir.name) / "beat.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> BeatProcess:
        with self.log.open("w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.dir.name,
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def save_redbeat_entry(redis_url: str, name: str, task: str, every: float, args=()) -> None:
    """An entry added to RedBeat's schedule at run time, as applications do (in Redis only)."""
    from celery import Celery
    from celery.schedules import schedule
    from redbeat import RedBeatSchedulerEntry

    app = Celery("redbeat-entries", set_as_current=False)  # its own, so its own connection
    app.conf.redbeat_redis_url = redis_url
    RedBeatSchedulerEntry(name, task, schedule(every), args=list(args), app=app).save()


def wait_worker_up(exporter: ExporterProcess, nodename: str, timeout: float = 30) -> None:
    eventually(lambda: exporter.scrape().get("celery_worker_up", worker=nodename) == 1,
               timeout, message=f"{nodename} up")


def wait_finished(exporter: ExporterProcess, count: int, timeout: float = 60) -> Metrics:
    """Wait until ``count`` tasks have succeeded or failed; returns that scrape."""
    def finished():
        m = exporter.scrape()
        done = m.sum("celery_task_succeeded_total") + m.sum("celery_task_failed_total")
        return m if done >= count else None

    return eventually(finished, timeout, message=f"{count} tasks finished")


def check_every_shape_counted(exporter: ExporterProcess, expected: dict[str, int],
                              invalid: dict[str, int]) -> Metrics:
    """The end of each transport's every-shape test (10 tasks of app.batched and 5 of
    app.single on queue work, garbage beside them): each event type counted exactly as
    ``expected``, still so a second later (nothing counted twice or late), each kind of
    garbage by its reason as ``invalid``, and the connection never lost. Returns that scrape."""
    def all_counted():
        m = exporter.scrape()
        return all(m.get("celery_stalk_events_total", type=k) == v for k, v in expected.items())

    eventually(all_counted, 30, message=f"events counted\n{exporter.output()}")
    time.sleep(1)  # anything counted twice or late would show now
    m = exporter.scrape()
    for kind, n in expected.items():
        assert m.get("celery_stalk_events_total", type=kind) == n, kind
    assert m.get("celery_stalk_events_total", type="worker-heartbeat") >= 1
    assert m.get("celery_task_succeeded_total", task="app.batched", queue="work") == 10
    assert m.get("celery_task_succeeded_total", task="app.single", queue="work") == 5
    for reason, n in invalid.items():
        assert m.get("celery_stalk_events_invalid_total", reason=reason) == n, reason
    assert m.get("celery_stalk_broker_reconnects_total") == 0
    assert m.get("celery_stalk_events_connected") == 1
    return m
