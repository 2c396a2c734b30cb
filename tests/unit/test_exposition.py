"""The /metrics exposition: a golden file checked by promtool, and the catalog kept honest."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import threading
import zlib
from pathlib import Path

import pytest
from celery_stalk import __version__, exposition
from celery_stalk.brokers import QueueDepth
from celery_stalk.capacity import CapacityPoller
from celery_stalk.collectors import (
    CATALOG,
    CapacityCollector,
    Exporter,
    QueueCollector,
    WebCollector,
    model_collectors,
)
from celery_stalk.collectors.enable_events import EnableEventsCollector
from celery_stalk.enable_events import EventEnabler
from celery_stalk.exposition import SeriesCounter, SeriesHistogram
from celery_stalk.model import BeatEntry, HistogramView, Model, ModelSettings
from celery_stalk.sources import SourceState
from celery_stalk.webstats import WebStats
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

from tests import events as ev

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "metrics.prom"
README = Path(__file__).resolve().parent.parent.parent / "README.md"


class FixedDepths:
    """Stands in for a broker here: this test is about rendering, and real brokers'
    depths are read in tests/integration. Returns what it is told, for the queues asked."""

    def __init__(self, depths: dict[str, QueueDepth]):
        self.depths = depths
        # As the Redis reader's skipped heads and the management poll's health report them.
        self.invalid = {"not_json": 1, "no_task_id": 0, "body_unreadable": 0}

    def status(self):
        return 3, 1990.0

    def read(self, queues):
        return {q: self.depths.get(q, QueueDepth(0, 0)) for q in queues}

    def discover(self):
        return []

    def close(self):
        pass


class BrokenReader(FixedDepths):
    def read(self, queues):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def enabler_after_two_broadcasts() -> EventEnabler:
    """--enable-events after one broadcast sent and one that found the broker down."""
    outcomes = iter([None, ConnectionError("Connection refused")])

    def send(config, command):
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    enabler = EventEnabler(None, 60.0, threading.Event(), send=send)
    enabler.once()
    enabler.once()
    return enabler


def render(model: Model, reader, now: float = 2000.0) -> str:
    registry = CollectorRegistry(auto_describe=False)
    source = SourceState()
    source.connected()
    # Two workers answered inspect stats at 1990.
    capacity = CapacityPoller(lambda timeout: {
        "w1@host-a": {"pool": {"max-concurrency": 4}, "prefetch_count": 16},
        "w2@host-b": {"pool": {"max-concurrency": 2}, "prefetch_count": 8},
    }, interval=60, timeout=1, max_workers=10, clock=lambda: 1990.0)
    capacity.poll()
    exporter = Exporter([*model_collectors(model, source, clock=lambda: now),
                         QueueCollector(model, reader), CapacityCollector(capacity),
                         WebCollector(WebStats()),
                         EnableEventsCollector(enabler_after_two_broadcasts())],
                        __version__, clock=lambda: 0.0)
    registry.register(exporter)
    return generate_latest(registry).decode()


def busy_model() -> Model:
    model = Model(ModelSettings(worker_timeout=10, worker_ttl=3600), static_queues=("critical",))
    model.link_up(1000.0)
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
        # Running on w1 from 1000; reserved on w2, orphaned when w2 is lost.
        ev.sent("t4", "app.slow", "work"),
        ev.received("t4", "app.slow", hostname="w1@host-a"),
        ev.started("t4", hostname="w1@host-a"),
        ev.sent("t5", "app.charge", "billing"),
        ev.received("t5", "app.charge", hostname="w2@host-b"),
        ev.sent("t6", "app.slow", "work"),
        ev.received("t6", "app.slow", hostname="w1@host-a"),  # prefetched
    ]
    model.apply_many(events, 1000.0)
    model.set_beat_schedule([BeatEntry("nightly-report", "app.report", "()", "{}",
                                       "every 60 s", next_due=lambda t: t + 60)], 1000.0)
    model.beat_schedule_read(True)  # as after a read of RedBeat's keys
    model.apply_many([*ev.chain(["c1", "c2"], ["app.fetch", "app.store"], t0=1000.0),
                      *ev.lifecycle("r1", "app.report", t0=1001.0),
                      ev.sent("o1", "app.open", root_id="o1"),
                      ev.sent("o2", "app.open_step", root_id="o1", parent_id="o1")], 1001.0)
    model.apply(ev.heartbeat("w1@host-a", active=1), 1995.0)
    model.tick(2000.0)  # w2 went silent 1000 s ago: lost
    return model


def test_golden_exposition():
    text = render(busy_model(), FixedDepths({
        "work": QueueDepth(7, 2, oldest_age=42.5, unacked=3, consumer_utilisation=0.75),
        "billing": QueueDepth(0, 0, unacked=0)}))
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
    for part in ("tasks", "workers", "exporter"):  # the other collectors are unaffected
        assert f'celery_stalk_collector_success{{collector="{part}"}} 1.0' in text
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
    from celery_stalk.collectors.catalog import catalog_markdown

    readme = README.read_text()
    begin, end = "<!-- metric-catalog:begin -->", "<!-- metric-catalog:end -->"
    assert begin in readme and end in readme
    table = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == catalog_markdown(), "README catalog drifted: paste `celery-stalk catalog`"


@pytest.mark.parametrize("secret", ["card 4111", "PaymentDeclined('"])
def test_exception_messages_never_reach_the_exposition(secret):
    assert secret not in GOLDEN.read_text()


def test_readme_flag_table_is_generated_from_the_code():
    from celery_stalk.options import flags_markdown

    readme = README.read_text()
    table = readme.split("<!-- flags:begin -->", 1)[1].split("<!-- flags:end -->", 1)[0].strip()
    assert table == flags_markdown(), "README flags drifted: paste `celery-stalk catalog --flags`"


# -- the fast renderer (exposition.py) against prometheus_client's own ---------------------

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
ODD_NAMES = ['quote"d', "back\\slash", "new\nline", "100% done", "ünïcode ✓", "{braces}", "%s%d"]


def encoders():
    return [choose_encoder(None), choose_encoder(PROMETHEUS_ACCEPT)]


def registry_of(*families):
    registry = CollectorRegistry(auto_describe=False)

    class Families:
        def collect(self):
            return list(families)

    registry.register(Families())
    return registry


def fast(registry, encoder, content_type, renderer=None) -> bytes:
    renderer = renderer or exposition.Renderer()
    return b"".join(renderer.render(registry, encoder, content_type))


def odd_model() -> Model:
    """Label values that need escaping, counts and sums on both sides of 1,000,000."""
    model = busy_model()
    for i, name in enumerate(ODD_NAMES):
        model.apply_many(ev.lifecycle(f"odd{i}", name, queue=name, runtime=float(i)), 1000.0)
    return model


@pytest.mark.parametrize("encoder,content_type", encoders())
def test_fast_rendering_is_byte_for_byte_prometheus_clients(encoder, content_type):
    model = odd_model()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Exporter([*model_collectors(model, SourceState(), clock=lambda: 2000.0),
                                QueueCollector(model, FixedDepths({}))], __version__,
                               clock=lambda: 0.0))
    renderer = exposition.Renderer()
    expected = encoder(registry)
    assert fast(registry, encoder, content_type, renderer) == expected
    # again, from the templates kept since the first scrape, after the values changed
    model.apply_many(ev.lifecycle("again", "app.add", "work", runtime=7.0), 1000.0)
    model.apply_many(ev.lifecycle("fresh", "app.new", "new-queue"), 1000.0)
    assert fast(registry, encoder, content_type, renderer) == encoder(registry)
    assert b"app.new" in fast(registry, encoder, content_type, renderer)


@pytest.mark.parametrize("encoder,content_type", encoders())
def test_values_past_a_million_print_as_prometheus_client_prints_them(encoder, content_type):
    renderer = exposition.Renderer()  # its templates are kept from one scrape to the next
    counts = {("t", "q"): 999_999, ("u", "q"): 0, ('o"dd', "q%"): 5}

    def families():
        hist = HistogramView([0] * 16 + [counts[("t", "q")]], counts[("t", "q")] * 0.25)
        nan = HistogramView([1] + [0] * 16, float("nan"))
        return (
            SeriesCounter("celery_task_sent", "Tasks sent.", ("task", "queue"), dict(counts)),
            SeriesHistogram("celery_task_runtime_seconds", "Run time.", ("task", "queue"),
                            {("t", "q"): hist, ("n", "q"): nan}, ModelSettings().runtime_buckets),
        )

    for value in (999_999, 1_000_000, 123_456_789, 12_345_678_901, 10):
        counts[("t", "q")] = value  # crosses the fast slots' limit both ways, between scrapes
        registry = registry_of(*families())
        assert fast(registry, encoder, content_type, renderer) == encoder(registry), value
    counts[("t", "q")] = 123_456_789
    assert b"1.23456789e+08" in fast(registry_of(*families()), encoder, content_type, renderer)


def wsgi_get(app, **headers):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    seen = {}

    def start_response(status, response_headers):
        seen["status"], seen["headers"] = status, dict(response_headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def test_metrics_app_negotiates_format_and_gzip_like_prometheus_client():
    model = odd_model()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Exporter([*model_collectors(model, SourceState(), clock=lambda: 2000.0)], __version__,
                               clock=lambda: 0.0))
    app = exposition.make_metrics_app(registry)

    status, headers, body = wsgi_get(app, accept=PROMETHEUS_ACCEPT, accept_encoding="gzip")
    assert status == "200 OK" and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = gzip.decompress(body)
    assert text == choose_encoder(PROMETHEUS_ACCEPT)[0](registry)
    assert text.endswith(b"# EOF\n")

    status, headers, body = wsgi_get(app)  # curl: no Accept, no gzip
    assert "Content-Encoding" not in headers
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert body == generate_latest(registry)
    assert int(headers["Content-Length"]) == len(body)


def test_metrics_app_leaves_other_methods_to_prometheus_client():
    app = exposition.make_metrics_app(CollectorRegistry(auto_describe=False))
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    statuses = []
    app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["405 Method Not Allowed"]


# -- the compressed body: families kept compressed between scrapes -------------------------


def test_gzip_body_is_one_member_equal_to_the_text_scrape_after_scrape():
    """Families deflated apart and kept when unchanged must still make one valid gzip
    member (CRC and length checked by the decoder), whatever changed in between."""
    model = odd_model()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Exporter([*model_collectors(model, SourceState(), clock=lambda: 2000.0)],
                               __version__, clock=lambda: 0.0))
    encoder, content_type = choose_encoder(PROMETHEUS_ACCEPT)
    renderer = exposition.Renderer()
    for step in range(4):
        if step == 1:  # one series of a large family changes; the others are kept
            model.apply_many(ev.lifecycle("again", "app.add", "work", runtime=7.0), 1000.0)
        if step == 3:  # a new label: templates are rebuilt
            model.apply_many(ev.lifecycle("fresh", "app.new", "new-queue"), 1000.0)
        body = renderer.render_gzip(registry, encoder, content_type)
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = member.decompress(body)
        assert member.eof and member.unused_data == b"", step  # exactly one member
        assert text == encoder(registry), step
        assert gzip.decompress(body) == text


def test_unchanged_families_are_not_rendered_or_compressed_again():
    registry = CollectorRegistry(auto_describe=False)
    model = odd_model()
    registry.register(Exporter([*model_collectors(model, SourceState(), clock=lambda: 2000.0)],
                               __version__, clock=lambda: 0.0))
    encoder, content_type = choose_encoder(PROMETHEUS_ACCEPT)
    renderer = exposition.Renderer()
    first = dict(renderer.texts(registry, encoder, content_type))
    second = dict(renderer.texts(registry, encoder, content_type))
    # the same bytes objects, so their compressed form is reused by identity
    assert second["celery_task_runtime_seconds"] is first["celery_task_runtime_seconds"]
    assert second["celery_task_succeeded"] is first["celery_task_succeeded"]
    model.apply_many(ev.lifecycle("again", "app.add", "work", runtime=7.0), 1000.0)
    third = dict(renderer.texts(registry, encoder, content_type))
    assert third["celery_task_runtime_seconds"] is not second["celery_task_runtime_seconds"]
    assert third["celery_task_runtime_seconds"] != second["celery_task_runtime_seconds"]


@pytest.mark.parametrize("first, second", [(b"", b"x"), (b"x", b""), (b"abc", b"d" * 100_000),
                                           (os.urandom(70_000), os.urandom(3))])
def test_crc32_combine_is_zlibs(first, second):
    assert exposition.crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == \
        zlib.crc32(first + second)


@pytest.mark.parametrize("encoder,content_type", encoders())
def test_queue_gauges_render_as_prometheus_client_does(encoder, content_type):
    """The queue families (SeriesGauge), with escaped queue names, ages on both sides of
    1,000,000 s, and from the templates kept after the values changed."""
    model = odd_model()
    depths = {name: QueueDepth(i, i, oldest_age=i * 1.5 + 0.1, unacked=i,
                               consumer_utilisation=i / 10)
              for i, name in enumerate(ODD_NAMES)}
    depths["work"] = QueueDepth(3, None, oldest_age=1_234_567.125)
    reader = FixedDepths(depths)
    registry = registry_of(*QueueCollector(model, reader).collect())
    renderer = exposition.Renderer()
    assert fast(registry, encoder, content_type, renderer) == encoder(registry)
    depths["work"] = QueueDepth(4, None, oldest_age=12.0)
    depths.pop(ODD_NAMES[0])
    registry = registry_of(*QueueCollector(model, reader).collect())
    text = fast(registry, encoder, content_type, renderer)
    assert text == encoder(registry)
    assert b'celery_queue_oldest_message_age_seconds{queue="work"} 12.0' in text
