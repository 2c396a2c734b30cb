"""Wiring and lifecycle: build the parts from a Config, run them, stop them cleanly."""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys
import threading
import time

from prometheus_client import CollectorRegistry

from . import __version__
from .brokers import QueueReader, reader_for
from .brokers.management import ManagementQueueReader
from .capacity import CapacityPoller, broker_stats
from .collectors import CapacityCollector, Exporter, QueueCollector, WebCollector, model_collectors
from .collectors.enable_events import EnableEventsCollector
from .config import Config, redact
from .enable_events import EventEnabler
from .http import build_app, serve
from .model import Model
from .problems import ProblemWatch
from .sources import SourceState, event_source
from .webconfig import BasicAuth, ServerTLS
from .webstats import WebStats

log = logging.getLogger("celery_stalk")

SHUTDOWN_GRACE = 4.0  # seconds; SIGTERM must end the process within 5


class RedactingFormatter(logging.Formatter):
    """Formats as text or JSON, then scrubs every broker secret from the result."""

    def __init__(self, secrets: tuple[str, ...], as_json: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = secrets
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if self.as_json:
            entry = {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
            if record.exc_info:
                entry["exc"] = self.formatException(record.exc_info)
            text = json.dumps(entry)
        else:
            text = super().format(record)
        return redact(text, self.secrets)


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(config.secrets, config.log_format == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    # kombu and amqp log every reconnect attempt at warning; ours say it once, clearly.
    for noisy in ("kombu", "amqp", "celery"):
        logging.getLogger(noisy).setLevel(max(logging.ERROR, root.level))
    # Everything that would reach stderr without the logger (warnings, an
    # uncaught exception in any thread) goes through the redacting formatter.
    logging.captureWarnings(True)

    def log_uncaught(exc_type, exc, tb, thread_name="main"):
        log.critical("uncaught exception in thread %s", thread_name, exc_info=(exc_type, exc, tb))

    sys.excepthook = log_uncaught
    threading.excepthook = lambda args: log_uncaught(
        args.exc_type, args.exc_value, args.exc_traceback, getattr(args.thread, "name", "?")
    )


class QueueDiscovery:
    """Finds queues the broker knows (Redis bindings) off the scrape path."""

    def __init__(self, reader: QueueReader, model: Model, interval: float, stop: threading.Event):
        self.reader, self.model, self.interval, self.stop = reader, model, interval, stop
        self.thread = threading.Thread(target=self.run, name="celery-stalk-discovery", daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.model.learn_queues(self.reader.discover(), time.time())
            except Exception as exc:  # the broker may be down: the scrape reports that
                log.debug("queue discovery failed: %s: %s", type(exc).__name__, exc)
            self.stop.wait(self.interval)


def redbeat_refresher(config: Config, model: Model, timezone: str, stop: threading.Event):
    """Reads RedBeat's schedule every --beat-refresh-interval, if --redbeat-key-prefix is set."""
    if not config.redbeat_key_prefix:
        return None
    from .schedules import RedBeatReader, ScheduleRefresher

    url = config.redbeat_url or config.broker_url  # Config.parse sets it with the prefix
    ssl = None
    if url.startswith("rediss"):  # verified as for the broker, with its options
        files = {f"ssl_{k}": v for k, v in config.broker_ssl.items() if k != "cert_reqs"}
        ssl = {**files, "ssl_cert_reqs": config.broker_ssl.get("cert_reqs", "required")}
    reader = RedBeatReader(url, config.redbeat_key_prefix,
                           timeout=config.queue_read_timeout, ssl=ssl, default_timezone=timezone)
    return ScheduleRefresher(reader, model, config.beat_refresh_interval, stop)


def run(config: Config, beat_entries: list | None = None, beat_timezone: str = "UTC") -> int:
    """Run the exporter until SIGTERM. ``beat_entries``: the app's beat schedule
    (celery -A proj stalk); ``beat_timezone``: the app's, for RedBeat's crontabs."""
    setup_logging(config)
    model = Model(config.model, static_queues=config.queues, routes=config.task_routes,
                  count_task_events=config.task_metrics_source == "events")
    follows_tasks = config.task_metrics_source == "events"
    if (beat_entries or config.redbeat_key_prefix) and not follows_tasks:
        # Beat's runs are task events, which this mode does not apply: every run would
        # look missed.
        log.warning("--task-metrics-source workers: the beat schedule is not followed "
                    "(its runs are seen in task events only)")
    elif beat_entries:
        for name in model.set_beat_schedule(beat_entries, time.time()):
            log.warning("beat entry %r cannot be a label value: not followed", name)
    reader = reader_for(config, model.sent_times)
    source_state = SourceState()
    consumer = event_source(config, model, source_state)
    stopping = threading.Event()
    discovery = QueueDiscovery(reader, model, config.queue_discovery_interval, stopping)
    schedule = redbeat_refresher(config, model, beat_timezone, stopping) if follows_tasks else None
    capacity = None
    if config.inspect_interval > 0:
        capacity = CapacityPoller(broker_stats(config), config.inspect_interval,
                                  config.inspect_timeout, config.model.max_workers)
    watch = ProblemWatch(model, stopping)
    enabler = (EventEnabler(config, config.enable_events, stopping)
               if config.enable_events else None)

    web_stats = WebStats()
    registry = CollectorRegistry(auto_describe=False)
    parts = [*model_collectors(model, source_state), QueueCollector(model, reader)]
    if capacity is not None:
        parts.append(CapacityCollector(capacity))
    if enabler is not None:
        parts.append(EnableEventsCollector(enabler))
    registry.register(Exporter([*parts, WebCollector(web_stats)], __version__))

    def ready() -> tuple[bool, str]:
        if stopping.is_set():
            return False, "not ready: shutting down"
        if consumer.consuming.is_set():
            return True, "ready: consuming events"
        return False, "not ready: not connected to the broker"

    web = config.web
    app = build_app(
        registry,
        healthy=consumer.is_alive,
        ready=ready,
        landing={
            "version": __version__,
            "broker": config.redacted_broker_url,
            "queues from --queue": ", ".join(config.queues) or "(none)",
        },
        auth=BasicAuth(web.users, config.web_limits.auth_max_concurrent,
                       config.web_limits.auth_max_failures, web_stats) if web.users else None,
        problems=lambda: watch.current,
    )
    try:
        tls = ServerTLS(web.tls) if web.tls else None
        server = serve(app, config.listen_host, config.listen_port, config.web_limits, web_stats, tls)
    except OSError as exc:
        log.error(
            "cannot listen on %s:%s (%s): pick a free port with --listen-address host:port",
            config.listen_host, config.listen_port, exc.strerror or exc,
        )
        return 2

    def on_signal(signum, frame):
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # What is built by now (Celery, kombu and the other modules imported, the parts above)
    # lives as long as the process: frozen out of the collector's full passes, which
    # would walk all of it, holding the interpreter, in the middle of a scrape (the tail
    # of a 1,000-queue scrape: bench/README.md, section 4b).
    gc.collect()
    gc.freeze()
    consumer.start()
    discovery.thread.start()
    watch.thread.start()
    if enabler is not None:
        enabler.thread.start()
    if isinstance(reader, ManagementQueueReader):  # polls on its own loop, off the scrape
        reader.start(stopping, model.learn_queues)
    if schedule is not None:
        schedule.thread.start()
    if capacity is not None:
        threading.Thread(target=capacity.run, args=(stopping,), name="celery-stalk-inspect",
                         daemon=True).start()
    http_thread = threading.Thread(target=server.serve_forever, name="celery-stalk-http", daemon=True)
    http_thread.start()
    log.info(
        "celery-stalk %s serving %s://%s:%s/metrics for broker %s%s",
        __version__, "https" if tls else "http", config.listen_host, server.server_port,
        config.redacted_broker_url, " (basic auth on /metrics and /)" if web.users else "",
    )

    while not stopping.wait(0.5):
        pass

    deadline = time.monotonic() + SHUTDOWN_GRACE
    consumer.stop()
    server.shutdown()  # stop accepting new connections
    if not server.drain(deadline):  # let the scrapes in flight finish, within the grace
        log.warning("a request was still in flight after %.0f s; exiting anyway", SHUTDOWN_GRACE)
    server.server_close()
    consumer.thread.join(max(0.0, deadline - time.monotonic()))
    # Closing politely can block on a dead connection: only within the grace.
    closer = threading.Thread(target=reader.close, name="celery-stalk-close", daemon=True)
    closer.start()
    closer.join(max(0.1, deadline - time.monotonic()))
    log.info("stopped")
    return 0
