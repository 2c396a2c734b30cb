"""What the event source says about itself: connected or not, reconnects, stalls,
and messages it could not decode. Written by the events thread, read by scrapes."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class SourceSnapshot:
    connected: bool
    reconnects: int
    stalls: int
    invalid: dict[str, int]


class SourceState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connected = False
        self._ever_connected = False
        self._reconnects = 0
        self._stalls = 0
        self._invalid: dict[str, int] = {}

    def connected(self) -> None:
        with self._lock:
            if self._ever_connected:  # connected before: this is a reconnect
                self._reconnects += 1
            self._ever_connected = True
            self._connected = True

    def disconnected(self) -> None:
        with self._lock:
            self._connected = False

    def stalled(self) -> None:
        with self._lock:
            self._stalls += 1

    def invalid(self, reason: str) -> None:
        with self._lock:
            self._invalid[reason] = self._invalid.get(reason, 0) + 1

    def snapshot(self) -> SourceSnapshot:
        with self._lock:
            return SourceSnapshot(self._connected, self._reconnects, self._stalls,
                                  dict(self._invalid))
