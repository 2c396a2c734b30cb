"""Counters of what the HTTP server and basic auth turned away.

The server and the password checks run on many threads; they only bump these
counters (under one lock), and collectors/web.py reads them at scrape time.
Every reason starts at 0, so ``rate()`` and alerts work before the first attack.
"""

from __future__ import annotations

import threading
from typing import Callable

# Why a connection or request was turned away before any handler ran.
REJECT_REASONS = (
    "client_connection_limit",  # --web-max-client-connections open from that address
    "evicted_slow",             # closed while still sending its request, to make room
    "read_timeout",             # TLS handshake and request head not done in --web-read-timeout
    "too_large",                # request head over the size limit, or a request body
    "bad_request",              # not HTTP
    "tls_handshake",            # failed handshake: plain HTTP on the TLS port, untrusted client cert
)
# Why a password check was refused without running bcrypt.
THROTTLE_REASONS = (
    "client_failures",  # the address used up its --web-auth-max-failures
    "busy",             # --web-auth-max-concurrent checks already running
)


class WebStats:
    def __init__(self):
        self._lock = threading.Lock()
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.auth_failures = 0
        self.auth_throttled = dict.fromkeys(THROTTLE_REASONS, 0)
        self.open_connections: Callable[[], int] = lambda: 0  # set by the server

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def auth_failed(self) -> None:
        with self._lock:
            self.auth_failures += 1

    def throttled(self, reason: str) -> None:
        with self._lock:
            self.auth_throttled[reason] += 1

    def snapshot(self) -> tuple[dict[str, int], int, dict[str, int]]:
        with self._lock:
            return dict(self.rejected), self.auth_failures, dict(self.auth_throttled)
