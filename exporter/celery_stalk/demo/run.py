"""celery-stalk demo: start a broker, the exporter, two workers and the producer; show a live
summary; stop them all, in order, on Ctrl-C or after --duration seconds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from . import summary
from .broker import Broker, start_broker
from .processes import Child, stop_all

WORKERS = (  # (nodename, queues, concurrency): one slow reports worker, so reports back up
    ("shop", "default", 3),
    ("reports", "reports", 1),
)
REFRESH_TTY = 2.0
REFRESH_LOG = 5.0  # when stdout is not a terminal (CI logs), print less often


class Demo:
    def __init__(self, port: int, directory: Path):
        self.port = port
        self.directory = directory
        self.url = f"http://127.0.0.1:{port}"
        self.stopping = threading.Event()
        self.broker: Broker | None = None
        self.children: list[Child] = []
        self.traffic: threading.Thread | None = None

    # -- start ----------------------------------------------------------------

    def start(self) -> None:
        try:
            self.broker = start_broker(self.directory)
        except RuntimeError as exc:
            raise DemoFailed(str(exc)) from exc
        say(f"broker:   {self.broker.description}")
        env = self._env()
        self.children.append(Child("exporter", [
            sys.executable, "-m", "celery_stalk", "serve",
            "--broker-url", self.broker.url,
            "--listen-address", f"127.0.0.1:{self.port}",
            "--queue", "default,reports",
            *(f"--broker-transport-option={key}={json.dumps(value)}"
              for key, value in self.broker.transport_options.items()),
        ], self.directory, env))
        self._wait("exporter ready", self._ready, 30)
        say(f"exporter: {self.url}/metrics")
        for name, queues, concurrency in WORKERS:
            self.children.append(Child(f"worker-{name}", [
                sys.executable, "-m", "celery", "-A", "celery_stalk.demo.tasks", "worker", "-E",
                "-n", f"{name}@%h", "-Q", queues, "-c", str(concurrency), "-l", "WARNING",
                "--without-mingle", "--without-gossip",
            ], self.directory, env))
        self._wait("workers up", lambda: self._workers_up() == len(WORKERS), 60)
        say(f"workers:  {len(WORKERS)} up; sending tasks")
        # The producer runs in this process, configured like the workers.
        from . import tasks, traffic

        tasks.app.conf.update(broker_url=self.broker.url,
                              broker_transport_options=self.broker.transport_options)
        self.traffic = threading.Thread(target=traffic.run, args=(self.stopping,),
                                        name="demo-traffic", daemon=True)
        self.traffic.start()

    def _broker_env(self) -> dict[str, str]:
        return {
            "CELERY_STALK_DEMO_BROKER_URL": self.broker.url,
            "CELERY_STALK_DEMO_TRANSPORT_OPTIONS": json.dumps(self.broker.transport_options),
        }

    def _env(self) -> dict[str, str]:
        # The user's own CELERY_STALK_* settings are not the demo's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_STALK_")}
        return {**env, **self._broker_env()}

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _workers_up(self) -> int:
        try:
            reading = summary.read(self.url + "/metrics", time.monotonic())
        except (urllib.error.URLError, OSError):
            return 0
        return sum(1 for up, _ in reading.workers.values() if up)

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.stopping.is_set():
                raise Interrupted
            if check():
                return
            dead = [child for child in self.children if not child.alive()]
            if dead or time.monotonic() > deadline:
                problem = f"{dead[0].name} exited" if dead else f"no {what} after {timeout:.0f} s"
                logs = "\n".join(f"--- {c.name} ---\n{c.log_tail()}" for c in dead or self.children)
                raise DemoFailed(f"{problem}\n{logs}")
            time.sleep(0.25)

    # -- run ------------------------------------------------------------------

    def show(self, duration: float | None) -> None:
        tty = sys.stdout.isatty()
        refresh = REFRESH_TTY if tty else REFRESH_LOG
        deadline = None if duration is None else time.monotonic() + duration
        before = None
        while not self.stopping.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            try:
                reading = summary.read(self.url + "/metrics", now)
            except (urllib.error.URLError, OSError) as exc:
                say(f"cannot scrape {self.url}/metrics: {exc}")
            else:
                left = "" if deadline is None else f", {deadline - now:.0f} s left"
                header = [f"celery-stalk demo: metrics at {self.url}/metrics "
                          f"(Ctrl-C to stop{left})", f"broker: {self.broker.description}"]
                text = summary.render(reading, before, header)
                print(("\x1b[H\x1b[2J" + text) if tty else (text + "\n"), flush=True)
                before = reading
            wait = refresh if deadline is None else min(refresh, max(0.0, deadline - now))
            self.stopping.wait(wait)

    # -- stop -----------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()
        if self.traffic is not None:
            self.traffic.join(10)
        # Workers and exporter together, the broker last: workers still talk to it as they stop.
        stop_all(self.children)
        if self.broker is not None:
            self.broker.stop()


class DemoFailed(Exception):
    pass


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while starting: stop what was started, cleanly."""


def say(line: str) -> None:
    print(line, flush=True)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the exporter binds: a port in TIME_WAIT from a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(port: int, duration: float | None) -> int:
    if not port_is_free(port):
        click.echo(f"celery-stalk: error: port {port} is taken: pick another with --port", err=True)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="celery-stalk-demo-"))
    demo = Demo(port, directory)

    def on_signal(signum, frame):
        demo.stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        demo.start()
        demo.show(duration)
        return 0
    except Interrupted:
        return 0
    except DemoFailed as exc:
        click.echo(f"celery-stalk: error: demo could not start: {exc}", err=True)
        return 1
    finally:
        say("stopping: workers, exporter, broker")
        demo.stop()
        shutil.rmtree(directory, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say("stopped")
