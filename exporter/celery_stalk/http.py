"""The HTTP face: /metrics, /healthz, /readyz and a small landing page."""

from __future__ import annotations

import html
import socket
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry

from .exposition import make_metrics_app


class _Server(ThreadingMixIn, WSGIServer):
    # Joined on close, so a scrape in flight at shutdown is finished, not cut.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # access logs would drown the useful ones
        pass


def build_app(
    registry: CollectorRegistry,
    healthy: Callable[[], bool],
    ready: Callable[[], tuple[bool, str]],
    landing: dict[str, str],
):
    metrics_app = make_metrics_app(registry)

    def plain(start_response, status: str, body: str):
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            ok = healthy()
            return plain(start_response, "200 OK" if ok else "503 Service Unavailable",
                         "ok\n" if ok else "event consumer thread is dead\n")
        if path == "/readyz":
            ok, why = ready()
            return plain(start_response, "200 OK" if ok else "503 Service Unavailable", why + "\n")
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [_landing_page(landing).encode()]
        return plain(start_response, "404 Not Found", "not found: try /metrics\n")

    return app


def _landing_page(facts: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items()
    )
    return (
        "<!doctype html><html><head><title>celery-stalk</title></head><body>"
        "<h1>celery-stalk</h1><p>Prometheus exporter for Celery.</p>"
        '<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>'
        '<li><a href="readyz">/readyz</a></li></ul>'
        f"<table>{rows}</table></body></html>"
    )


def serve(app, host: str, port: int) -> WSGIServer:
    """Bind now (so a taken port fails at start); the caller runs serve_forever."""
    server_class = _Server6 if ":" in host else _Server
    return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
