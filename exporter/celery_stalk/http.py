"""The HTTP face: /metrics, /healthz, /readyz and a small landing page; TLS and basic auth.

/healthz and /readyz stay open even with basic auth on: kubelet and load
balancer probes cannot send credentials, and these answer only "ok" or a
fixed sentence about the broker connection, never data.
"""

from __future__ import annotations

import html
import logging
import socket
import ssl
import threading
import time
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry

from .exposition import make_metrics_app

from .webconfig import BasicAuth, ServerTLS

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# A client that sends nothing (or never finishes a TLS handshake) must not
# hold a thread, nor delay shutdown, for long.
REQUEST_TIMEOUT = 10.0


class _Server(ThreadingMixIn, WSGIServer):
    # Request threads are daemons, and shutdown waits for the requests in
    # flight itself (drain), with a deadline: a stuck client must not keep the
    # process alive past its SIGTERM grace.
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    tls: ServerTLS | None = None

    def server_activate(self):
        super().server_activate()
        self._in_flight = 0
        self._idle = threading.Condition()
        if self.tls is not None:
            self.base_environ["HTTPS"] = "on"
            self.base_environ["wsgi.url_scheme"] = "https"

    def process_request_thread(self, request, client_address):
        with self._idle:
            self._in_flight += 1
        try:
            request.settimeout(REQUEST_TIMEOUT)
            if self.tls is not None:
                # Handshake here, on the request's own thread: a slow client
                # must not block the accept loop.
                request = self.tls.context().wrap_socket(request, server_side=True)
            self.finish_request(request, client_address)
        except (ssl.SSLError, OSError) as exc:  # plain HTTP on the TLS port, resets, timeouts
            log.debug("connection from %s failed: %s", client_address[0], exc)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def drain(self, deadline: float) -> bool:
        """Wait until the requests in flight are answered or ``deadline`` (monotonic)."""
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


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
    auth: BasicAuth | None = None,
):
    metrics_app = make_metrics_app(registry)

    def plain(start_response, status: str, body: str, headers=()):
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *headers])
        return [body.encode()]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if auth is not None and path not in OPEN_PATHS:
            if not auth.check(environ.get("HTTP_AUTHORIZATION")):
                return plain(start_response, "401 Unauthorized", "unauthorized\n",
                             [("WWW-Authenticate", 'Basic realm="celery-stalk", charset="UTF-8"')])
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


def serve(app, host: str, port: int, tls: ServerTLS | None = None) -> _Server:
    """Bind now (so a taken port fails at start); the caller runs serve_forever."""
    base = _Server6 if ":" in host else _Server
    server_class = type(base.__name__, (base,), {"tls": tls})
    return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
