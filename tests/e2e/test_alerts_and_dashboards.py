"""The rules and dashboards on real parts: a real Prometheus scraping real exporters, with the
generated rules loaded, alerting a real Alertmanager that notifies a webhook this test runs.

Two exporters watch one private Redis with real Celery workers (an HA pair, told apart by
`instance` only); a third watches RabbitMQ (its consumer counts) as another broker, with a
target label of its own. The rules come from mixin's TEST config: the shipped rules with
seconds for minutes, so the fault matrix runs in a few minutes. The minute-scale windows
themselves (a broker outage pages within 2.5 minutes, and so on) are proven by promtool on
the shipped rules in alerts/tests.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import yaml
from celery import chain
from celery_stalk.collectors import CATALOG
from celery_stalk.mixin import RULES, render
from celery_stalk.mixin.config import TEST, seconds

from tests.alerts.promql import exposed_names, series_names
from tests.brokers import RedisServer
from tests.celery_app import make_app
from tests.e2e.stack import Alertmanager, Prometheus, Webhook
from tests.harness import (
    ROOT,
    BeatProcess,
    ExporterProcess,
    WorkerProcess,
    eventually,
    save_redbeat_entry,
    wait_worker_up,
)

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
WORKER_TIMEOUT = 5  # the least the exporter allows with Celery's 2 s heartbeats (x 2.5)
WORKER_TTL = 15
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
# The TEST windows, in seconds.
T = SimpleNamespace(**{name: seconds(getattr(TEST, name)) for name in vars(TEST)
                       if name.endswith(("_for", "_window", "_settle", "_lookback"))})
# Prometheus scrapes and evaluates every second; Alertmanager waits 1 s to group: a page
# reaches the webhook a few seconds after its rule fires.
SLACK = 6
# The broker stays down this long: longer than broker_unreachable_for, as 3 minutes are
# than the shipped 2, with room for the page to arrive while it is down; long enough that
# the exporters' and workers' reconnect backoffs (which are not scaled) grow to seconds.
OUTAGE = 12
# Labels that tell one page from another; severity and job are the same for all.
IDENTITY = ("broker", "instance", "queue", "task", "exception", "worker")


@pytest.fixture(scope="module")
def stack(rabbitmq_server):
    started = []

    def start(process):
        started.append(process)
        return process.start()

    redis = RedisServer()
    try:
        redis.start()
        flags = ("--worker-timeout", str(WORKER_TIMEOUT), "--worker-ttl", str(WORKER_TTL),
                 # the beat schedule from RedBeat's keys; workflows settled in a second
                 "--redbeat-key-prefix", "redbeat:", "--beat-refresh-interval", "1",
                 "--workflow-settle", "1",
                 # worker concurrency for the utilisation panels and rules: a round every 2 s
                 "--inspect-interval", "1", "--inspect-timeout", "1")
        pair = [start(ExporterProcess(redis.url, *flags)) for _ in range(2)]
        # Queues from the management API, with a worker consuming one of them (its consumer
        # utilisation and unacknowledged messages are reported only then).
        start(WorkerProcess(rabbitmq_server.url, f"amqp@{HOST}", concurrency=1))
        amqp_exporter = start(ExporterProcess(
            rabbitmq_server.url, "--queue", "work",
            "--rabbitmq-management-url", rabbitmq_server.management_url,
            "--rabbitmq-management-interval", "1"))
        webhook = start(Webhook())
        alertmanager = start(Alertmanager(webhook.url))
        prometheus = start(Prometheus(
            render(TEST)[RULES],
            static_configs=[
                {"targets": [f"127.0.0.1:{e.port}" for e in pair], "labels": {"broker": "redis"}},
                {"targets": [f"127.0.0.1:{amqp_exporter.port}"], "labels": {"broker": "rabbitmq"}},
            ],
            alertmanager=f"127.0.0.1:{alertmanager.port}",
        ))
        eventually(lambda: len(prometheus.api("query", query="up == 1")["result"]) == 3, 30,
                   message="all three exporters scraped")
        yield SimpleNamespace(redis=redis, broker=redis.url, pair=pair,
                              amqp_exporter=amqp_exporter, webhook=webhook,
                              prometheus=prometheus)
    finally:
        for process in reversed(started):
            process.stop()
        redis.close()


def identity(alert: dict) -> tuple:
    labels = alert["labels"]
    return (labels["alertname"], *((k, labels[k]) for k in IDENTITY if k in labels))


def pages(webhook: Webhook, since: float) -> list[tuple[float, dict]]:
    """(arrival, alert) of every firing notification since ``since``: each one is a page."""
    return [(at, alert) for at, alert in webhook.sent(since) if alert["status"] == "firing"]


def matches(alert: dict, alertname: str, labels: dict) -> bool:
    return alert["labels"]["alertname"] == alertname and all(
        alert["labels"].get(k) == v for k, v in labels.items())


def wait_page(stack, since: float, alertname: str, timeout: float, **labels) -> tuple[float, dict]:
    """Seconds from ``since`` to the first page of that alert, and the alert."""
    def first():
        found = [(at, a) for at, a in pages(stack.webhook, since) if matches(a, alertname, labels)]
        return found[0] if found else None

    at, alert = eventually(first, timeout, message=f"{alertname} {labels} paged")
    return at - since, alert


def wait_resolved(stack, since: float, alertname: str, timeout: float, **labels) -> float:
    """Seconds from ``since`` to the notification that the alert resolved."""
    def resolved():
        return next((at for at, a in stack.webhook.sent(since)
                     if a["status"] == "resolved" and matches(a, alertname, labels)), None)

    return eventually(resolved, timeout, message=f"{alertname} {labels} resolved") - since


def wait_up_everywhere(exporters, nodename: str, timeout: float = 40) -> None:
    for exporter in exporters:
        wait_worker_up(exporter, nodename, timeout)


def test_fault_matrix_pages_once_per_fault_in_time_and_never_from_the_dead(stack, fleet):
    """Two exporters on one broker; faults one after another. Asserts which pages arrive,
    how many, and when (latencies printed), then that nothing else paged."""
    redis_labels = {"broker": "redis"}
    steady = fleet(WorkerProcess(stack.broker, f"steady@{HOST}", concurrency=2))
    doomed = fleet(WorkerProcess(stack.broker, f"doomed@{HOST}", concurrency=1))
    graceful = fleet(WorkerProcess(stack.broker, f"graceful@{HOST}", concurrency=1))
    for worker in (steady, doomed, graceful):
        wait_up_everywhere(stack.pair, worker.nodename)
    producer = make_app(stack.broker)
    began = time.monotonic()
    latencies = {}

    # -- a graceful stop never pages; a SIGKILLed worker pages once, named, and resolves
    graceful.stop()
    eventually(lambda: all(e.scrape().get("celery_worker_offline", worker=graceful.nodename) == 1
                           for e in stack.pair), 20, message="clean shutdown seen by both")
    killed = time.monotonic()
    doomed.kill()
    latency, page = wait_page(stack, killed, "CeleryWorkerLost", 30, worker=doomed.nodename)
    latencies["worker SIGKILL -> CeleryWorkerLost"] = latency
    # the exporter's --worker-timeout from the last heartbeat (up to 2 s before the kill),
    # then a scrape, an evaluation and Alertmanager
    assert WORKER_TIMEOUT - 2 <= latency <= WORKER_TIMEOUT + SLACK
    assert doomed.nodename in page["annotations"]["description"]
    assert page["annotations"]["runbook_url"].endswith("/alerts/runbook.md#celeryworkerlost")
    # resolved when the exporter forgets the worker (--worker-ttl) or worker_lost_window after
    # its last heartbeat, whichever comes first
    resolved = wait_resolved(stack, killed, "CeleryWorkerLost", 60, worker=doomed.nodename)
    latencies["worker SIGKILL -> resolved"] = resolved
    assert resolved <= WORKER_TIMEOUT + min(WORKER_TTL, T.worker_lost_window) + SLACK

    # -- a time-limit kill pages at once; a second one after the page resolved pages again
    for hit in ("first", "second"):
        sent = time.monotonic()
        producer.send_task("tests.sleep_past_soft_limit")
        latency, page = wait_page(stack, sent, "CeleryTaskTimeLimitHit", 20,
                                  task="tests.sleep_past_soft_limit")
        latencies[f"{hit} time limit -> CeleryTaskTimeLimitHit"] = latency
        # a soft time limit: its label does not depend on how Celery reports hard kills
        assert page["labels"]["exception"] == "SoftTimeLimitExceeded"
        assert latency <= 0.5 + SLACK  # the limit, then one scrape and one evaluation
        resolved = wait_resolved(stack, sent, "CeleryTaskTimeLimitHit", 40,
                                 task="tests.sleep_past_soft_limit")
        assert resolved <= T.time_limit_lookback + T.time_limit_window + SLACK

    # -- a burst of failures longer than the fast window's for: pages once
    burst = time.monotonic()
    while time.monotonic() < burst + T.failure_fast_window + T.failure_fast_for + 8:
        producer.send_task("tests.fail_value")
        time.sleep(0.25)
    stopped = time.monotonic()
    latency, page = wait_page(stack, burst, "CeleryTaskFailureRatioHigh", 5, task="tests.fail_value")
    latencies["failure burst -> CeleryTaskFailureRatioHigh"] = latency
    assert T.failure_fast_for <= latency <= T.failure_fast_window + T.failure_fast_for + SLACK
    assert page["labels"]["severity"] == "critical"
    assert wait_resolved(stack, stopped, "CeleryTaskFailureRatioHigh", 30,
                         task="tests.fail_value") <= T.failure_fast_window + SLACK

    # -- an exporter of the pair killed pages for itself, and nothing else
    victim = stack.pair[1]
    instance = f"127.0.0.1:{victim.port}"
    killed = time.monotonic()
    victim.proc.kill()
    victim.proc.wait()
    latency, page = wait_page(stack, killed, "CeleryExporterDown", 30, instance=instance)
    latencies["exporter SIGKILL -> CeleryExporterDown"] = latency
    assert T.exporter_down_for <= latency <= T.exporter_down_for + SLACK
    victim.start()  # same port: the same target
    assert wait_resolved(stack, killed, "CeleryExporterDown", 30, instance=instance) > latency
    wait_up_everywhere(stack.pair, steady.nodename)

    # -- the broker stopped: one page for the pair, no worker-lost flood when it is back
    stopped = time.monotonic()
    stack.redis.stop()
    time.sleep(OUTAGE)
    stack.redis.start()
    back = time.monotonic()
    latency, page = wait_page(stack, stopped, "CeleryBrokerUnreachable", 5, **redis_labels)
    latencies["broker stopped -> CeleryBrokerUnreachable"] = latency
    assert T.broker_unreachable_for <= latency <= OUTAGE
    latencies["broker back -> resolved"] = wait_resolved(
        stack, back, "CeleryBrokerUnreachable", 40, **redis_labels)
    wait_up_everywhere(stack.pair, steady.nodename, timeout=60)
    # long enough for any loss declared on reconnect to have paged
    time.sleep(T.worker_lost_settle + WORKER_TIMEOUT + 3)

    print("\n" + "\n".join(f"  {name}: {seconds_:.1f} s" for name, seconds_ in latencies.items()))
    got = Counter(identity(alert) for _, alert in pages(stack.webhook, began))
    task = {"task": "tests.sleep_past_soft_limit", "queue": "work",
            "exception": "SoftTimeLimitExceeded"}
    expected = Counter({
        identity({"labels": {"alertname": "CeleryWorkerLost", "worker": doomed.nodename,
                             **redis_labels}}): 1,
        identity({"labels": {"alertname": "CeleryTaskTimeLimitHit", **task, **redis_labels}}): 2,
        identity({"labels": {"alertname": "CeleryTaskFailureRatioHigh", "task": "tests.fail_value",
                             **redis_labels}}): 1,
        identity({"labels": {"alertname": "CeleryExporterDown", "instance": instance,
                             **redis_labels}}): 1,
        identity({"labels": {"alertname": "CeleryBrokerUnreachable", **redis_labels}}): 1,
    })
    timeline = [(round(at - began, 1), identity(alert)) for at, alert in pages(stack.webhook, began)]
    assert got == expected, f"pages (seconds into the matrix): {timeline}"


# What one send_traffic() adds up to, once the worker is done with it.
WAVE = {"succeeded": 12, "failed": 7, "retried": 1, "rejected": 1, "revoked": 1}


def send_traffic(broker: str) -> None:
    """Tasks that succeed, fail in several ways, retry, hit a time limit, are rejected and
    revoked: one of each thing a panel shows."""
    producer = make_app(broker)
    # Both pool slots of a 2-process worker busy for 2 s: a task seen running, and tasks
    # waiting in the queue (sent, not received) behind them.
    for _ in range(2):
        producer.send_task("tests.sleep", args=(2,))
    for i in range(6):
        producer.send_task("tests.add", args=(i, i))
    producer.send_task("tests.flaky", args=(1,))  # one retry, then success
    for _ in range(3):
        producer.send_task("tests.fail_value")
    for _ in range(2):
        producer.send_task("tests.fail_key")
    producer.send_task("tests.sleep_past_soft_limit")
    producer.send_task("tests.reject")  # a rejection, not a failure
    # workflows: a chain that succeeds, one whose second step fails
    chain(producer.signature("tests.add", (1, 1)), producer.signature("tests.add", (2,))).delay()
    chain(producer.signature("tests.add", (1, 1)),
          producer.signature("tests.fail_value", immutable=True)).delay()
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
    wait_up_everywhere(stack.pair, worker.nodename)
    prometheus = stack.prometheus
    # A periodic task from RedBeat's keys, as the exporters read them: a dynamic entry.
    save_redbeat_entry(stack.broker, "add-every-second", "tests.add", 1.0, args=[1, 2])
    fleet(BeatProcess(stack.broker, STALK_TEST_SCHEDULER="redbeat", STALK_TEST_BEAT_STATIC="no"))

    def scraped(query: str, at_least: int) -> bool:
        result = prometheus.api("query", query=query)["result"]
        return bool(result) and float(result[0]["value"][1]) >= at_least

    # Two waves: a counter's series appears at its first event, and rate() sees only what
    # it gains afterwards, so the second wave is what moves every rate and quantile.
    def total(metric: str) -> str:  # one exporter's count; the pair counts every task twice
        return f'sum(celery_task_{metric}_total{{instance="127.0.0.1:{stack.pair[0].port}"}})'

    def now(query: str) -> float:
        result = prometheus.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    before = {m: now(total(m)) for m in WAVE}
    before["soft"] = now(total("exceptions").replace("{", '{exception="SoftTimeLimitExceeded", '))
    for wave in (1, 2):
        send_traffic(stack.broker)
        for metric, per_wave in WAVE.items():
            eventually(lambda: scraped(total(metric), before[metric] + per_wave * wave), 60,
                       message=f"wave {wave}: {metric} tasks\n{worker.output()[-2000:]}")
        eventually(lambda: scraped(
            total("exceptions").replace("{", '{exception="SoftTimeLimitExceeded", '),
            before["soft"] + wave), 30,
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


def test_dashboards_count_an_ha_pair_once(stack, fleet):
    """Two exporters report the same workers and tasks: the panels must not double them."""
    worker = fleet(WorkerProcess(stack.broker, f"counted@{HOST}", concurrency=2))
    wait_up_everywhere(stack.pair, worker.nodename)
    producer = make_app(stack.broker)
    for i in range(40):
        producer.send_task("tests.add", args=(i, i))
    time.sleep(3)
    overview = json.loads((ROOT / "dashboards" / "celery-overview.json").read_text())
    queries = {(p["title"], t["refId"]): t["expr"] for p in overview["panels"]
               for t in p.get("targets", [])}
    one = f'instance="127.0.0.1:{stack.pair[0].port}"'

    def value(expr: str) -> float:
        result = stack.prometheus.api("query", query=substitute(expr, 60))["result"]
        return sum(float(s["value"][1]) for s in result)

    workers_up = value(queries[("Workers up", "A")])
    on_rabbitmq = value('sum(celery_worker_up{broker="rabbitmq"})')  # one exporter there
    assert workers_up == value(f"sum(celery_worker_up{{{one}}})") + on_rabbitmq
    assert workers_up - on_rabbitmq >= 1
    # what a plain sum would show
    assert value('sum(celery_worker_up{broker="redis"})') == 2 * (workers_up - on_rabbitmq)
    succeeded = value(queries[("Throughput", "D")])  # succeeded per second
    alone = value(f"sum(rate(celery_task_succeeded_total{{{one}}}[10s]))")
    assert alone > 0 and 0.75 < succeeded / alone < 1.34, (succeeded, alone)


def test_every_metric_in_the_rules_and_dashboards_is_in_the_exporters_output(stack, fleet):
    # Some series appear with the first event of their kind (the last event's time, say):
    # a worker of its own, so this holds whatever ran before on the stack.
    worker = fleet(WorkerProcess(stack.broker, f"probe@{socket.gethostname()}", concurrency=1))
    wait_worker_up(stack.pair[0], worker.nodename, 60)
    rules = yaml.safe_load(render(TEST)[RULES])["groups"]
    exprs = [r["expr"] for g in rules for r in g["rules"]]
    recorded = {r["record"] for g in rules for r in g["rules"] if "record" in r}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(series_names(e) for e in exprs)) - recorded - {"up"}
    assert used, "no metric found in the queries"

    def output() -> set[str]:
        text = stack.pair[0].scrape().text + stack.amqp_exporter.scrape().text
        types = dict(re.findall(r"^# TYPE (\S+) (\w+)$", text, flags=re.M))
        names = set()
        for name, kind in types.items():
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        assert names <= exposed_names(CATALOG)
        return names

    def complete() -> bool:
        missing = used - output()
        assert not missing, f"not in the exporter's output: {missing}"
        return True

    # A queue's oldest message has an age only while one waits: park one where nobody consumes.
    parked = "e2e-parked"
    make_app(stack.broker).send_task("tests.add", args=(0, 0), queue=parked)
    try:
        eventually(complete, 30, message="every queried metric in the output")
    finally:
        stack.redis.client().delete(parked)
