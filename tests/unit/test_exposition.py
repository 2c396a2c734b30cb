"""The /metrics exposition: a golden file checked by promtool, and the catalog kept honest."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from celery_stalk import __version__
from celery_stalk.brokers import QueueDepth
from celery_stalk.collectors import CATALOG, Exporter, ModelCollector, QueueCollector
from celery_stalk.model import Model, ModelSettings
from tests import events as ev

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "metrics.prom"
README = Path(__file__).resolve().parent.parent.parent / "README.md"


class FixedDepths:
    """Stands in for a broker here: this test is about rendering, and real brokers'
    depths are read in tests/integration. Returns what it is told, for the queues asked."""

    def __init__(self, depths: dict[str, QueueDepth]):
        self.depths = depths

    def read(self, queues):
        return {q: self.depths.get(q, QueueDepth(0, 0)) for q in queues}

    def discover(self):
        return []

    def close(self):
        pass


class BrokenReader(FixedDepths):
    def read(self, queues):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def render(model: Model, reader, now: float = 2000.0) -> str:
    registry = CollectorRegistry(auto_describe=False)
    exporter = Exporter([ModelCollector(model, clock=lambda: now), QueueCollector(model, reader)],
                        __version__, clock=lambda: 0.0)
    registry.register(exporter)
    return generate_latest(registry).decode()


def busy_model() -> Model:
    model = Model(ModelSettings(worker_timeout=10), static_queues=("critical",))
    model.consumer_connected(1000.0)
    events = [
        ev.online("w1@host-a"),
        ev.heartbeat("w2@host-b", active=2),
        ev.offline("w3@host-c"),
        *ev.lifecycle("t1", "app.add", "work", wait=0.2, runtime=0.03),
        *ev.lifecycle("t2", "app.add", "work", wait=4.0, runtime=12.0),
        ev.sent("t3", "app.charge", "billing"),
        ev.received("t3", "app.charge"),
        ev.started("t3"),
        ev.failed("t3", exception="PaymentDeclined('card 4111 declined')"),
        ev.succeeded("ghost"),
        {"type": "task-started"},
    ]
    model.apply_many(events, 1000.0)
    model.apply(ev.heartbeat("w1@host-a", active=1), 1995.0)
    model.tick(2000.0)  # w2 went silent 1000 s ago: lost
    return model


def test_golden_exposition():
    text = render(busy_model(), FixedDepths({"work": QueueDepth(7, 2), "billing": QueueDepth(0, 0)}))
    if os.environ.get("STALK_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "exposition changed: rerun with STALK_UPDATE_GOLDEN=1 and review"


def test_golden_exposition_passes_promtool_check_metrics():
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package prometheus"
    result = subprocess.run([promtool, "check", "metrics"], input=GOLDEN.read_bytes(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_broker_failure_is_a_metric_not_an_error():
    text = render(busy_model(), BrokenReader({}))
    assert "celery_stalk_broker_up 0.0" in text
    assert 'celery_stalk_collector_success{collector="queues"} 0.0' in text
    assert 'celery_stalk_collector_success{collector="events"} 1.0' in text
    assert "celery_queue_messages" not in text
    assert "Connection refused" not in text  # errors go to the log, never into a label


def exposed_names(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))


def test_every_exposed_metric_is_in_the_catalog_and_vice_versa():
    exposed = exposed_names(GOLDEN.read_text())
    assert exposed == set(CATALOG), (exposed ^ set(CATALOG))
    for metric in CATALOG.values():
        assert metric.help.strip(), metric.name
        assert not metric.name.endswith("_created")


def test_readme_metric_catalog_is_generated_from_the_code():
    from celery_stalk.collectors import catalog_markdown

    readme = README.read_text()
    begin, end = "<!-- metric-catalog:begin -->", "<!-- metric-catalog:end -->"
    assert begin in readme and end in readme
    table = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == catalog_markdown(), "README catalog drifted: paste `celery-stalk catalog`"


@pytest.mark.parametrize("secret", ["card 4111", "PaymentDeclined('"])
def test_exception_messages_never_reach_the_exposition(secret):
    assert secret not in GOLDEN.read_text()


def test_readme_flag_table_is_generated_from_the_code():
    from celery_stalk.cli import flags_markdown

    readme = README.read_text()
    table = readme.split("<!-- flags:begin -->", 1)[1].split("<!-- flags:end -->", 1)[0].strip()
    assert table == flags_markdown(), "README flags drifted: paste `celery-stalk catalog --flags`"
