"""The HTTP face: /metrics, /healthz, /readyz and a small landing page; TLS and basic auth.

/healthz and /readyz stay open even with basic auth on: kubelet and load
balancer probes cannot send credentials, and these answer only "ok" or a
fixed sentence about the broker connection, never data.
"""

from __future__ import annotations

import html
from typing import Callable

from prometheus_client import CollectorRegistry

from .exposition import make_metrics_app
from .httpserver import BoundedServer, client_key
from .webconfig import BasicAuth, ServerTLS, Throttled, WebLimits
from .webstats import WebStats

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# Every endpoint only reads. HEAD answers as GET without the body (the same
# headers, Content-Length included); anything else, TRACE included, gets 405.
METHODS = ("GET", "HEAD", "OPTIONS")
ALLOW = ("Allow", ", ".join(METHODS))


def build_app(
    registry: CollectorRegistry,
    healthy: Callable[[], bool],
    ready: Callable[[], tuple[bool, str]],
    landing: dict[str, str],
    auth: BasicAuth | None = None,
    problems: Callable[[], list] | None = None,
):
    """``problems``: the configuration problems found now (problems.Problem), listed
    on the landing page with their fixes (none: no such section)."""
    metrics_app = make_metrics_app(registry)

    def plain(start_response, status: str, body: str, headers=()):
        data = body.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(data))), *headers])
        return [data]

    def app(environ, start_response):
        method = environ.get("REQUEST_METHOD")
        if method not in METHODS:
            return plain(start_response, "405 Method Not Allowed",
                         "method not allowed: use GET or HEAD\n", [ALLOW])
        if method == "OPTIONS":
            start_response("200 OK", [ALLOW, ("Content-Length", "0")])
            return []
        if method == "HEAD":
            environ = {**environ, "REQUEST_METHOD": "GET"}
            return _without_body(route(environ, start_response))
        return route(environ, start_response)

    def route(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if auth is not None and path not in OPEN_PATHS:
            try:
                ok = auth.check(environ.get("HTTP_AUTHORIZATION"), client_key(environ.get("REMOTE_ADDR", "")))
            except Throttled as exc:
                return plain(start_response, "429 Too Many Requests", f"{exc}\n",
                             [("Retry-After", str(exc.retry_after))])
            if not ok:
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
            page = _landing_page(landing, problems() if problems else None).encode()
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                      ("Content-Length", str(len(page)))])
            return [page]
        return plain(start_response, "404 Not Found", "not found: try /metrics\n")

    return app


def _landing_page(facts: dict[str, str], problems: list | None = None) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items()
    )
    if problems:
        items = "".join(f"<li><strong>{html.escape(p.what)}</strong>: {html.escape(p.fix)}</li>"
                        for p in problems)
        found = f'<h2>Problems</h2><ul id="problems">{items}</ul>'
    elif problems is not None:
        found = '<h2>Problems</h2><p id="problems">None found.</p>'
    else:
        found = ""
    return (
        "<!doctype html><html><head><title>celery-stalk</title></head><body>"
        "<h1>celery-stalk</h1><p>Prometheus exporter for Celery.</p>"
        '<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>'
        '<li><a href="readyz">/readyz</a></li></ul>'
        f"{found}<table>{rows}</table></body></html>"
    )


def _without_body(body) -> list:
    """The response of a GET, for a HEAD: its headers were sent by start_response."""
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return []


def serve(app, host: str, port: int, limits: WebLimits, stats: WebStats,
          tls: ServerTLS | None = None) -> BoundedServer:
    """Bind now (so a taken port fails at start); the caller runs serve_forever."""
    return BoundedServer((host, port), app, limits, stats, tls)
