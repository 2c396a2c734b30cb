"""The rules and dashboards on real parts: a real Prometheus scraping real exporters (Redis
with real Celery workers, and RabbitMQ for its consumer counts) with the generated rules
loaded, alerting a real Alertmanager that notifies a webhook this test runs.

The rules come from mixin's TEST config: the shipped ones, with seconds for minutes.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import yaml

from celery_stalk.collectors import CATALOG
from mixin import RULES, ROOT, render
from mixin.config import TEST
from tests.alerts.promql import exposed_names, series_names
from tests.celery_app import make_app
from tests.e2e.stack import Alertmanager, Prometheus, Webhook
from tests.harness import ExporterProcess, WorkerProcess, eventually, wait_worker_up

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
WORKER_TIMEOUT = "5"  # the least the exporter allows with Celery's 2 s heartbeats (x 2.5)
WORKER_TTL = "15"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))


@pytest.fixture(scope="module")
def stack(redis_server, rabbitmq_server):
    started = []

    def start(process):
        started.append(process)
        return process.start()

    try:
        broker = redis_server.url.rsplit("/", 1)[0] + "/12"
        exporter = start(ExporterProcess(broker, "--worker-timeout", WORKER_TIMEOUT,
                                         "--worker-ttl", WORKER_TTL))
        amqp_exporter = start(ExporterProcess(rabbitmq_server.url, "--queue", "work"))
        webhook = start(Webhook())
        alertmanager = start(Alertmanager(webhook.url))
        prometheus = start(Prometheus(
            render(TEST)[RULES],
            targets=[f"127.0.0.1:{exporter.port}", f"127.0.0.1:{amqp_exporter.port}"],
            alertmanager=f"127.0.0.1:{alertmanager.port}",
        ))
        eventually(lambda: len(prometheus.api("query", query="up == 1")["result"]) == 2, 30,
                   message="both exporters scraped")
        yield SimpleNamespace(broker=broker, exporter=exporter, amqp_exporter=amqp_exporter,
                              webhook=webhook, prometheus=prometheus)
    finally:
        for process in reversed(started):
            process.stop()


def test_killed_worker_pages_and_graceful_shutdown_does_not(stack, fleet):
    doomed = fleet(WorkerProcess(stack.broker, f"doomed@{HOST}", concurrency=1))
    graceful = fleet(WorkerProcess(stack.broker, f"graceful@{HOST}", concurrency=1))
    wait_worker_up(stack.exporter, doomed.nodename)
    wait_worker_up(stack.exporter, graceful.nodename)

    graceful.stop()  # SIGTERM: a deploy or a scale-down
    eventually(lambda: stack.exporter.scrape().get(
        "celery_worker_offline", worker=graceful.nodename) == 1, 20, message="clean shutdown seen")
    killed_at = time.monotonic()
    doomed.kill()  # SIGKILL, as the OOM killer does

    def paged():
        return [a for a in stack.webhook.alerts("CeleryWorkerLost")
                if a["status"] == "firing" and a["labels"].get("worker") == doomed.nodename]

    page = eventually(paged, 60, message="CeleryWorkerLost page at the webhook")[0]
    latency = time.monotonic() - killed_at
    print(f"\nSIGKILL to CeleryWorkerLost at the webhook: {latency:.1f} s")
    assert page["labels"]["severity"] == "warning"
    assert doomed.nodename in page["annotations"]["description"]
    assert page["annotations"]["runbook_url"].endswith("/alerts/runbook.md#celeryworkerlost")

    # The cleanly stopped worker had been down longer than the killed one, and Prometheus
    # holds its celery_worker_up 0: a rule on that alone would have paged for it too.
    down = stack.prometheus.api(
        "query", query=f'min_over_time(celery_worker_up{{worker="{graceful.nodename}"}}[5m])')
    assert [s["value"][1] for s in down["result"]] == ["0"]
    assert all(a["labels"].get("worker") != graceful.nodename
               for a in stack.webhook.alerts("CeleryWorkerLost"))
    assert [a["labels"].get("worker") for a in stack.prometheus.firing("CeleryWorkerLost")] == [
        doomed.nodename]

    # The exporter forgets the dead worker's series after --worker-ttl: the page stays.
    eventually(lambda: stack.exporter.scrape().get("celery_worker_up", worker=doomed.nodename)
               is None, 30, message="series forgotten")
    eventually(lambda: not stack.prometheus.api(
        "query", query=f'celery_worker_up{{worker="{doomed.nodename}"}}')["result"],
        10, message="Prometheus saw the series end")
    assert [a["labels"].get("worker") for a in stack.prometheus.firing("CeleryWorkerLost")] == [
        doomed.nodename]
    assert all(a["labels"].get("worker") != graceful.nodename
               for a in stack.webhook.alerts("CeleryWorkerLost"))


# What one send_traffic() adds up to, once the worker is done with it.
WAVE = {"succeeded": 7, "failed": 7, "retried": 1, "rejected": 1, "revoked": 1}


def send_traffic(broker: str) -> None:
    """Tasks that succeed, fail in several ways, retry, hit a time limit, are rejected and
    revoked: one of each thing a panel shows."""
    producer = make_app(broker)
    for i in range(6):
        producer.send_task("tests.add", args=(i, i))
    producer.send_task("tests.flaky", args=(1,))  # one retry, then success
    for _ in range(3):
        producer.send_task("tests.fail_value")
    for _ in range(2):
        producer.send_task("tests.fail_key")
    producer.send_task("tests.sleep_past_soft_limit")
    producer.send_task("tests.reject")  # task-failed and task-rejected
    # already expired when a worker receives it: revoked, never run
    producer.send_task("tests.add", args=(0, 0),
                       expires=datetime.now(timezone.utc) - timedelta(minutes=1))


def substitute(expr: str, range_seconds: int) -> str:
    """A panel query as Grafana sends it with every variable on "All"."""
    for var in ("job", "queue", "task", "worker"):
        expr = expr.replace(f"${var}", ".*")
    return (expr.replace("$__rate_interval", "10s")
                .replace("$__range", f"{range_seconds}s")
                .replace("$__interval", "1s"))


def has_a_number(result: list[dict]) -> bool:
    return any(not math.isnan(float(v)) and not math.isinf(float(v))
               for series in result for _, v in series["values"])


def test_every_dashboard_panel_returns_data_after_real_traffic(stack, fleet):
    started = time.time()
    worker = fleet(WorkerProcess(stack.broker, f"busy@{HOST}", concurrency=2))
    wait_worker_up(stack.exporter, worker.nodename)
    prometheus = stack.prometheus

    def scraped(query: str, at_least: int) -> bool:
        result = prometheus.api("query", query=query)["result"]
        return bool(result) and float(result[0]["value"][1]) >= at_least

    # Two waves: a counter's series appears at its first event, and rate() sees only what
    # it gains afterwards, so the second wave is what moves every rate and quantile.
    for wave in (1, 2):
        send_traffic(stack.broker)
        for metric, per_wave in WAVE.items():
            eventually(lambda: scraped(f"sum(celery_task_{metric}_total)", per_wave * wave), 60,
                       message=f"wave {wave}: {metric} tasks\n{worker.output()[-2000:]}")
        eventually(lambda: scraped(
            'sum(celery_task_exceptions_total{exception="SoftTimeLimitExceeded"})', wave), 30,
            message=f"wave {wave}: time limit hit")
    time.sleep(3)  # a few more scrapes, so every rate window holds two samples after the traffic

    end = time.time()
    span = math.ceil(end - started) + 1
    empty = []
    checked = 0
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = substitute(target["expr"], span)
                result = prometheus.api("query_range", query=expr, start=started, end=end,
                                        step="1s")["result"]
                checked += 1
                if not has_a_number(result):
                    empty.append(f"{path.stem} / {panel['title']} / {target['refId']}: {expr}")
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)",
                                         variable["definition"]).groups()
            values = prometheus.api(f"label/{label}/values",
                                    **{"match[]": substitute(metric, span)})
            if not values:
                empty.append(f"{path.stem} / variable {variable['name']}: {variable['definition']}")
    assert checked > 60
    assert not empty, "panels with no data:\n" + "\n".join(empty)


def test_every_metric_in_the_rules_and_dashboards_is_in_the_exporters_output(stack):
    text = stack.exporter.scrape().text + stack.amqp_exporter.scrape().text
    types = dict(re.findall(r"^# TYPE (\S+) (\w+)$", text, flags=re.M))
    output = set()
    for name, kind in types.items():
        if kind == "histogram":
            output |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            output.add(name)
    assert output <= exposed_names(CATALOG)

    rules = yaml.safe_load(render(TEST)[RULES])["groups"]
    exprs = [r["expr"] for g in rules for r in g["rules"]]
    recorded = {r["record"] for g in rules for r in g["rules"] if "record" in r}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(series_names(e) for e in exprs)) - recorded - {"up"}
    assert used, "no metric found in the queries"
    assert not used - output, f"not in the exporter's output: {used - output}"
