"""The worker bootstep: the --stalk-* options, the observed requests, /metrics.

The HTTP side is the exporter's (http.py build_app and serve, webconfig.py), so
--stalk-web-config-file takes the same file as the exporter's --web-config-file:
TLS, mTLS and basic auth, with /healthz and /readyz left open for probes, and the
exporter's limits on what a client may cost, at their defaults.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import NoReturn

import click
from celery import bootsteps
from prometheus_client import CollectorRegistry

from .. import __version__, webconfig
from ..collectors import Exporter, TaskCollector, WebCollector
from ..http import build_app, serve
from ..options import default
from ..webstats import WebStats
from .collector import WorkerLocalCollector
from .observe import wrap_requests

log = logging.getLogger("celery_stalk.worker")

DEFAULT_PORT = 9809
# The exporter's limits on what an HTTP client may cost, at their defaults (options.py).
WEB_LIMITS = ("web_max_connections", "web_max_client_connections", "web_read_timeout",
              "web_auth_max_concurrent", "web_auth_max_failures")

CLI_OPTIONS = (
    click.Option(["--stalk-port"], type=click.IntRange(0, 65535), envvar="CELERY_STALK_WORKER_PORT",
                 help=f"celery-stalk: serve this worker's metrics on this port (e.g. {DEFAULT_PORT}; "
                      "0 picks a free one). Without it the worker counts but serves nothing."),
    click.Option(["--stalk-host"], default="0.0.0.0", envvar="CELERY_STALK_WORKER_HOST",
                 show_default=True, help="celery-stalk: address to serve the worker's metrics on."),
    click.Option(["--stalk-web-config-file"], envvar="CELERY_STALK_WORKER_WEB_CONFIG_FILE",
                 help="celery-stalk: TLS and basic auth for the worker's metrics, in the format "
                      "of the exporter's --web-config-file."),
)


def instrumentation():
    from . import _instrumentation, unregister_producer  # made by install()

    unregister_producer()  # a worker serves its sent counts on its own /metrics, not twice
    return _instrumentation()


class MetricsStep(bootsteps.StartStopStep):
    """Observes the worker's requests from the start and serves /metrics while it runs."""

    label = "celery-stalk"
    # After the pool exists (read at scrape time); before the consumer, which is
    # always started last and builds the task strategies from task.Request.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker, stalk_port=None, stalk_host="0.0.0.0", stalk_web_config_file=None,
                 **kwargs):
        super().__init__(worker, **kwargs)
        host = (stalk_host or "0.0.0.0").strip("[]")
        web = _web_config(stalk_web_config_file)
        instr = self.instr = instrumentation()
        instr.worker = worker
        if _is_prefork(worker):  # before the pool forks: its processes inherit the channel
            instr.open_channel()
        wrapped = wrap_requests(worker.app, instr.observer)
        log.debug("celery-stalk: observing %d task types", wrapped)
        self.scheme = "https" if web.tls else "http"
        self.server = None if stalk_port is None else _bind(worker, instr, host, stalk_port, web)
        instr.listening = self.server.socket if self.server is not None else None

    def start(self, worker) -> None:
        if self.server is None:
            log.warning("celery-stalk: no --stalk-port (or CELERY_STALK_WORKER_PORT): this worker's "
                        "metrics are counted but not served; start it with --stalk-port %d",
                        DEFAULT_PORT)
            return
        threading.Thread(target=self.server.serve_forever, name="celery-stalk-http",
                         daemon=True).start()
        host, port = self.server.server_address[:2]
        log.info("celery-stalk: serving %s://%s:%s/metrics for %s", self.scheme, host, port,
                 worker.hostname)

    def stop(self, worker) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _fail(problems: list[str]) -> NoReturn:
    """Bad options stop the worker at start, one line per problem that names the fix."""
    for problem in problems:
        print(f"celery-stalk: error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def _bind(worker, instr, host: str, port: int, web: webconfig.WebConfig):
    """The /metrics server, bound now so that a taken port fails at start."""
    limits = webconfig.WebLimits(*(default(dest) for dest in WEB_LIMITS))
    stats = WebStats()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Exporter([
        TaskCollector(instr.counts, worker.hostname),
        WorkerLocalCollector(instr.counts, worker, instr.processes),
        WebCollector(stats),
    ], __version__))
    app = build_app(
        registry,
        healthy=lambda: True,
        ready=lambda: (True, "ready: serving the worker's metrics"),
        landing={"version": __version__, "worker": worker.hostname},
        auth=webconfig.BasicAuth(web.users, limits.auth_max_concurrent, limits.auth_max_failures,
                                 stats) if web.users else None,
    )
    tls = webconfig.ServerTLS(web.tls) if web.tls else None
    try:
        return serve(app, host, port, limits, stats, tls)
    except OSError as exc:
        _fail([f"--stalk-port: cannot listen on {host}:{port} ({exc.strerror or exc}): "
               "pick a free port with --stalk-port"])


def _web_config(path: str | None) -> webconfig.WebConfig:
    if not path:
        return webconfig.WebConfig()
    try:
        return webconfig.load(path)
    except webconfig.WebConfigError as exc:
        _fail([p.replace(webconfig.FLAG, "--stalk-web-config-file") for p in exc.problems])


def _is_prefork(worker) -> bool:
    from celery.concurrency.prefork import TaskPool

    pool_cls = getattr(worker, "pool_cls", None)
    return isinstance(pool_cls, type) and issubclass(pool_cls, TaskPool)


class SilentDispatcher:
    """The worker's event dispatcher when Celery would have none: on, publishing nothing.

    Celery tells a request that its task succeeded through the dispatcher only
    while one is on, which it is unless the worker runs without -E,
    --without-heartbeat and --without-gossip at once. Then this one stands in,
    so every transition is seen and nothing goes to the broker."""

    enabled = True
    connection = None  # no broker connection: the event loop has nothing to keep alive

    def __init__(self) -> None:
        self.groups = {"worker"}

    def send(self, *args, **kwargs) -> None:
        return None

    def flush(self, *args, **kwargs) -> None:
        return None

    def close(self) -> None:
        return None


class DispatcherStep(bootsteps.StartStopStep):
    """A consumer step: after the task strategies are built, and before the first
    message is consumed, give the consumer an event dispatcher if it has none."""

    label = "celery-stalk events"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer) -> None:
        dispatcher = consumer.event_dispatcher
        if dispatcher is None or not dispatcher.enabled:
            consumer.event_dispatcher = SilentDispatcher()
            consumer.update_strategies()  # the strategies read the dispatcher when built
