"""A real Prometheus and Alertmanager for end-to-end tests, and a webhook receiver for pages.

Each runs on free ports of 127.0.0.1 with its data in a private temp dir, as a child of the
test run, so nothing on the machine is touched or relied upon.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from tests.harness import eventually, free_port


class _Process:
    binary = ""

    def __init__(self, name: str):
        self.dir = Path(tempfile.mkdtemp(prefix=f"stalk-{name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        path = shutil.which(self.binary)
        assert path, f"{self.binary} not found: install its Debian package"
        self.log = open(self.dir / "log", "w")
        self.proc = subprocess.Popen([path, *self.args()], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        eventually(self.ready, 30, message=f"{self.binary} ready\n{self.output()}")
        return self

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"{self.binary} exited\n{self.output()}"
        with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
            return response.status == 200

    def output(self) -> str:
        return (self.dir / "log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Alertmanager(_Process):
    binary = "prometheus-alertmanager"

    def __init__(self, webhook_url: str):
        super().__init__("alertmanager")
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["..."],  # every alert its own notification
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "webhook", "webhook_configs": [
                {"url": webhook_url, "send_resolved": True}]}],
        }
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(config))

    def args(self) -> list[str]:
        return [
            f"--config.file={self.dir / 'alertmanager.yml'}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip port: a single, private instance
        ]


class Prometheus(_Process):
    binary = "prometheus"

    def __init__(self, rules: str, targets: list[str] | None = None, alertmanager: str = "",
                 interval: str = "1s", static_configs: list[dict] | None = None):
        """``targets`` of the job, or its target groups as ``static_configs``
        ({"targets": [...], "labels": {...}}, to give targets labels of their own)."""
        super().__init__("prometheus")
        static_configs = static_configs or [{"targets": targets}]
        (self.dir / "rules.yml").write_text(rules)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(self.dir / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [{"job_name": "celery-stalk", "static_configs": static_configs}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def args(self) -> list[str]:
        return [
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def api(self, path: str, **params) -> dict | list:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def firing(self, alertname: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


class Webhook:
    """Records every Alertmanager notification it is sent, with when it arrived."""

    def __init__(self):
        self.notifications: list[dict] = []
        self.arrivals: list[float] = []  # time.monotonic() of each notification
        lock = threading.Lock()
        received, arrivals = self.notifications, self.arrivals

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    received.append(body)
                    arrivals.append(time.monotonic())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Webhook:
        self.thread.start()
        return self

    def alerts(self, alertname: str) -> list[dict]:
        """Every alert of that name in the notifications so far, as Alertmanager sent it."""
        return [a for n in list(self.notifications) for a in n["alerts"]
                if a["labels"]["alertname"] == alertname]

    def sent(self, since: float = 0.0) -> list[tuple[float, dict]]:
        """(arrival, alert) for every alert in the notifications that arrived after ``since``."""
        pairs = list(zip(list(self.arrivals), list(self.notifications)))
        return [(at, alert) for at, n in pairs if at > since for alert in n["alerts"]]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
