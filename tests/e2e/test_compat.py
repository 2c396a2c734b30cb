"""The compatibility rules on real parts: a real Prometheus scraping a real celery-stalk (Redis,
a real Celery worker, real traffic) with alerts/compat/*.rules.yml loaded. Every series that
celery-exporter's and Flower's dashboards and alerts query (tests/alerts/upstream_metrics.yml)
must resolve to data, with exactly their label names, and add up to celery-stalk's own."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from celery_stalk.mixin.compat import COMPAT, TASK_EVENTS, compat_path

from tests.celery_app import make_app
from tests.e2e.stack import Prometheus
from tests.harness import ROOT, ExporterProcess, WorkerProcess, eventually, wait_worker_up

pytestmark = pytest.mark.integration

FACTS = yaml.safe_load((ROOT / "tests" / "alerts" / "upstream_metrics.yml").read_text())
HOST = socket.gethostname()
# Labels a Kubernetes scrape would add; the old dashboards pick them in variables.
TARGET_LABELS = {"namespace": "shop", "cluster": "eu-1"}
# The exporter's own scrape labels, beside the labels each tool sets itself.
SCRAPE_LABELS = {"__name__", "job", "instance", *TARGET_LABELS}


def compat_rules() -> str:
    groups = []
    for tool in COMPAT:
        groups += yaml.safe_load((ROOT / compat_path(tool)).read_text())["groups"]
    return yaml.safe_dump({"groups": groups}, sort_keys=False)


def send_traffic(broker: str) -> None:
    """Successes, failures of two kinds, a retry, a rejection and a revocation."""
    producer = make_app(broker)
    for i in range(3):
        producer.send_task("tests.add", args=(i, i))
    producer.send_task("tests.flaky", args=(1,))  # one retry, then success
    producer.send_task("tests.fail_value")
    producer.send_task("tests.fail_key")
    producer.send_task("tests.reject")  # a rejection, not a failure
    # already expired when the worker receives it: revoked, never run
    producer.send_task("tests.add", args=(0, 0),
                       expires=datetime.now(timezone.utc) - timedelta(minutes=1))


@pytest.fixture(scope="module")
def stack(redis_server):
    started = []
    try:
        broker = redis_server.fresh_url()
        exporter = ExporterProcess(broker, "--queue", "work")
        started.append(exporter)
        exporter.start()
        # No alerting rules here: the Alertmanager address is never used.
        prometheus = Prometheus(compat_rules(), targets=[f"127.0.0.1:{exporter.port}"],
                                alertmanager="127.0.0.1:9")
        config_file = Path(prometheus.dir) / "prometheus.yml"
        config = yaml.safe_load(config_file.read_text())
        config["scrape_configs"][0]["static_configs"][0]["labels"] = TARGET_LABELS
        config_file.write_text(yaml.safe_dump(config))
        started.append(prometheus)
        prometheus.start()
        worker = WorkerProcess(broker, f"compat@{HOST}", concurrency=2)
        started.append(worker)
        worker.start()
        wait_worker_up(exporter, worker.nodename)

        def query(expr: str) -> list[dict]:
            return prometheus.api("query", query=expr)["result"]

        def total(expr: str) -> float:
            result = query(f"sum({expr})")
            return float(result[0]["value"][1]) if result else 0.0

        # Two waves: the second moves every counter the first created, for increase().
        for wave in (1, 2):
            send_traffic(broker)
            for event, per_wave in (("succeeded", 4), ("failed", 2), ("retried", 1),
                                    ("rejected", 1), ("revoked", 1)):
                eventually(lambda: total(f'celery_task_{event}_total{{job="celery-stalk"}}')
                           >= per_wave * wave, 60,
                           message=f"wave {wave}: {event}\n{worker.output()[-2000:]}")
        yield SimpleNamespace(query=query, total=total, worker=worker)
    finally:
        for process in reversed(started):
            process.stop()


def queried(tool: str) -> list[dict]:
    return [e for e in FACTS[tool]["queried"] if e.get("mapped", True)]


def exposed_labels(tool: str, metric: str) -> set[str]:
    for entry in FACTS[tool]["exposed"]:
        names = {entry["metric"]}
        if entry["type"] == "histogram":
            names = {f"{entry['metric']}_{p}" for p in ("bucket", "sum", "count")}
        if metric in names:
            return set(entry["labels"]) | ({"le"} if metric.endswith("_bucket") else set())
    raise AssertionError(f"{metric} is not among {tool}'s exposed metrics")


@pytest.mark.parametrize("tool", sorted(COMPAT))
def test_every_series_their_dashboards_and_alerts_query_resolves_to_data(stack, tool):
    job = FACTS[tool]["compat_job"]
    target = [label for label in FACTS[tool]["target_labels"] if label != "job"]

    def resolves(entry: dict) -> list[dict]:
        # the series recorded by the latest rule evaluation, after the last scrape
        want = [f'__name__="{entry["metric"]}"', f'job="{job}"']
        want += [f'{label}!=""' for label in (*entry["labels"], *target)]
        return stack.query("{" + ", ".join(want) + "}")

    checked = 0
    for entry in queried(tool):
        series = eventually(lambda: resolves(entry), 15,
                            message=f"{tool}: {entry['metric']} with {entry['labels']}")
        allowed = SCRAPE_LABELS | exposed_labels(tool, entry["metric"])
        for s in series:
            assert set(s["metric"]) <= allowed, f"{tool}: labels not theirs: {s['metric']}"
        checked += 1
    assert checked == len(queried(tool)) >= 6


def same_totals(stack, pairs: list[tuple[str, str]]) -> None:
    """Each pair of expressions sums to the same positive number (once the rules have
    evaluated the last scrape)."""
    def check():
        totals = [(stack.total(ours), stack.total(theirs)) for ours, theirs in pairs]
        assert all(o > 0 and o == t for o, t in totals), list(zip(pairs, totals))
        return True

    eventually(check, 10, message="compat totals equal to celery-stalk's")


def test_celery_exporter_series_add_up_to_celery_stalks_own(stack):
    same_totals(stack, [
        *((f'celery_task_{e}_total{{job="celery-stalk"}}',
           f'celery_task_{e}_total{{job="celery-exporter"}}') for e in TASK_EVENTS),
        ('celery_task_runtime_seconds_count{job="celery-stalk"}',
         'celery_task_runtime_count{job="celery-exporter"}'),
    ])
    # the worker's host, as celery-exporter names it (celery@host -> host)
    up = stack.query('celery_worker_up{job="celery-exporter"}')
    assert [(s["metric"]["hostname"], s["value"][1]) for s in up] == [(HOST, "1")]
    assert stack.total('celery_queue_length{job="celery-exporter", queue_name="work"}') >= 0


def test_flower_series_add_up_to_celery_stalks_own(stack):
    same_totals(stack, [
        *((f'celery_task_{e}_total{{job="celery-stalk"}}',
           f'flower_events_total{{job="flower", type="task-{e}"}}') for e in TASK_EVENTS),
        ('celery_task_runtime_seconds_count{job="celery-stalk"}',
         'flower_task_runtime_seconds_count{job="flower"}'),
    ])
    online = stack.query('flower_worker_online{job="flower"}')
    assert [(s["metric"]["worker"], s["value"][1]) for s in online] == [
        (stack.worker.nodename, "1")]


def test_a_task_that_never_succeeds_has_a_failure_ratio(stack):
    """celery-exporter's CeleryTaskHighFailRate divides failed by failed + succeeded per task:
    it pages only if the never-succeeding task has a succeeded series, at 0."""
    by = "sum by (job, namespace, queue_name, name)"
    window = "[5m]"
    failed = f'{by} (increase(celery_task_failed_total{{job="celery-exporter"}}{window}))'
    succeeded = f'{by} (increase(celery_task_succeeded_total{{job="celery-exporter"}}{window}))'

    def ratios() -> dict[str, float]:
        return {s["metric"]["name"]: float(s["value"][1])
                for s in stack.query(f"{failed} / ({failed} + {succeeded})")}

    # the rules record the second wave's counts at their next evaluation
    got = eventually(lambda: (r := ratios()).keys() >= {"tests.fail_value", "tests.add"} and r,
                     30, message="both tasks have a failure ratio")
    assert got["tests.fail_value"] == 1.0
    assert got["tests.add"] == 0.0
